"""Draw the example stories' character images: simple shape characters on plain backgrounds.

Run from anywhere: ``python assets/stories/make_characters.py``; it rewrites ``assets/stories/characters/*.png``
(deterministic: the same bytes every run).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 512
HERE = Path(__file__).resolve().parent


def _eyes(draw: ImageDraw.ImageDraw, cx: float, cy: float, gap: float, r: float, look: float = 0.0) -> None:
    for side in (-1, 1):
        x = cx + side * gap
        draw.ellipse((x - r, cy - r, x + r, cy + r), fill="white", outline="black", width=4)
        pr = r * 0.45
        px = x + look * r * 0.4
        draw.ellipse((px - pr, cy - pr, px + pr, cy + pr), fill="black")


def red() -> Image.Image:
    """Red: a round red creature with big eyes, a smile and little feet."""
    img = Image.new("RGB", (SIZE, SIZE), (250, 240, 222))
    d = ImageDraw.Draw(img)
    d.ellipse((150, 400, 220, 440), fill=(150, 30, 30))
    d.ellipse((292, 400, 362, 440), fill=(150, 30, 30))
    d.ellipse((96, 110, 416, 430), fill=(214, 44, 44), outline=(120, 20, 20), width=6)
    _eyes(d, 256, 230, 58, 40, look=0.5)
    d.arc((196, 260, 316, 360), start=20, end=160, fill="black", width=8)
    d.polygon([(236, 110), (256, 60), (276, 110)], fill=(214, 44, 44), outline=(120, 20, 20))
    return img


def blue() -> Image.Image:
    """Blue: a tall blue block with an antenna, one raised arm and a flat mouth."""
    img = Image.new("RGB", (SIZE, SIZE), (226, 236, 248))
    d = ImageDraw.Draw(img)
    d.line((256, 110, 256, 50), fill=(20, 40, 110), width=8)
    d.ellipse((238, 30, 274, 66), fill=(250, 200, 40), outline=(20, 40, 110), width=4)
    d.line((150, 260, 80, 170), fill=(20, 40, 110), width=14)
    d.line((362, 260, 420, 330), fill=(20, 40, 110), width=14)
    d.rounded_rectangle((150, 110, 362, 440), radius=36, fill=(48, 92, 206), outline=(20, 40, 110), width=6)
    _eyes(d, 256, 200, 48, 32, look=-0.5)
    d.line((216, 300, 296, 300), fill="black", width=8)
    d.rectangle((180, 440, 220, 480), fill=(20, 40, 110))
    d.rectangle((292, 440, 332, 480), fill=(20, 40, 110))
    return img


def sunny() -> Image.Image:
    """Sunny: a yellow triangle with a green hat."""
    img = Image.new("RGB", (SIZE, SIZE), (236, 246, 232))
    d = ImageDraw.Draw(img)
    d.polygon([(256, 120), (430, 450), (82, 450)], fill=(246, 196, 32), outline=(140, 100, 0))
    d.rectangle((186, 96, 326, 128), fill=(40, 140, 70))
    d.rectangle((216, 40, 296, 100), fill=(40, 140, 70))
    _eyes(d, 256, 300, 44, 28)
    d.arc((216, 330, 296, 400), start=20, end=160, fill="black", width=6)
    return img


CHARACTERS = {"red.png": red, "blue.png": blue, "sunny.png": sunny}


def main() -> None:
    out = HERE / "characters"
    out.mkdir(exist_ok=True)
    for name, draw in CHARACTERS.items():
        draw().save(out / name, format="PNG", optimize=True)
        print(out / name)


if __name__ == "__main__":
    main()

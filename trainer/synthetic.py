"""Synthetic character data: flat coloured shapes on plain backgrounds (for tests, benchmarks and trying the
trainer without a dataset)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30)]
SHAPES = ["circle", "square", "triangle", "diamond"]
BACKGROUND = (245, 245, 240)


def draw_character(shape: str, colour, size: int = 48, offset=(0, 0), canvas: Image.Image | None = None):
    """One flat-coloured shape in a ``size`` square; drawn on ``canvas`` at ``offset`` or on a new plain image."""
    image = canvas or Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(image)
    s = size / 48

    def pts(*xy):
        return [(x * s + offset[0], y * s + offset[1]) for x, y in zip(xy[::2], xy[1::2])]

    if shape == "circle":
        (x0, y0), (x1, y1) = pts(10, 8, 38, 40)
        d.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "square":
        (x0, y0), (x1, y1) = pts(12, 10, 36, 38)
        d.rectangle((x0, y0, x1, y1), fill=colour)
    elif shape == "triangle":
        d.polygon(pts(24, 6, 40, 40, 8, 40), fill=colour)
    else:
        d.polygon(pts(24, 6, 40, 24, 24, 42, 8, 24), fill=colour)
    return image


def make_unpaired(folder: Path, count: int = 4, size: int = 48) -> Path:
    """``count`` shape characters with sidecar captions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape, colour = SHAPES[i % 4], COLOURS[(i * 3 + i // 4) % 4]
        draw_character(shape, colour, size).save(folder / f"char{i}.png")
        (folder / f"char{i}.txt").write_text(f"a {shape} character")
    return folder


def make_paired(folder: Path) -> Path:
    """Two single-reference rows and one two-character row with boxes; returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(2):
        shape, colour = SHAPES[i], COLOURS[i]
        draw_character(shape, colour).save(folder / f"ref{i}.png")
        target = Image.new("RGB", (64, 48), (200, 220, 250))
        draw_character(shape, colour, canvas=target, offset=(12, 0))
        target.save(folder / f"target{i}.png")
        rows.append({"reference": f"ref{i}.png", "target": f"target{i}.png", "caption": f"a {shape} at the beach"})
    both = Image.new("RGB", (96, 48), BACKGROUND)
    draw_character("circle", COLOURS[0], canvas=both)
    draw_character("square", COLOURS[1], canvas=both, offset=(48, 0))
    both.save(folder / "both.png")
    rows.append({"references": [{"name": "Ann", "image": "ref0.png", "box": [0, 0, 0.5, 1]},
                                {"name": "Bob", "image": "ref1.png", "box": [0.5, 0, 1, 1]}],
                 "target": "both.png", "caption": "[Ann] next to [Bob]"})
    path = folder / "paired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_named_paired(folder: Path, names=("Ann", "Bob", "Cid", "Dee")) -> Path:
    """One row per name: a named reference and a target whose caption names it with a ``[Name]`` tag (the rows a
    text adapter learns from), plus one two-character row with boxes. Returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        shape, colour = SHAPES[i % 4], COLOURS[i % 4]
        draw_character(shape, colour).save(folder / f"ref{i}.png")
        target = Image.new("RGB", (64, 48), (200, 220, 250))
        draw_character(shape, colour, canvas=target, offset=(8 + 8 * (i % 2), 0))
        target.save(folder / f"target{i}.png")
        rows.append({"references": [{"name": name, "image": f"ref{i}.png"}], "target": f"target{i}.png",
                     "caption": f"[{name}] at the beach"})
    both = Image.new("RGB", (96, 48), BACKGROUND)
    draw_character(SHAPES[0], COLOURS[0], canvas=both)
    draw_character(SHAPES[1], COLOURS[1], canvas=both, offset=(48, 0))
    both.save(folder / "both.png")
    rows.append({"references": [{"name": names[0], "image": "ref0.png", "box": [0, 0, 0.5, 1]},
                                {"name": names[1], "image": "ref1.png", "box": [0.5, 0, 1, 1]}],
                 "target": "both.png", "caption": f"[{names[0]}] next to [{names[1]}]"})
    path = folder / "paired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

"""Write the example benchmark: three simple characters (shapes with faces on plain backgrounds) and 11 cases.

Run from the repository root: ``python assets/benchmarks/make_example.py``. The output is deterministic, so the
committed files only change when this script does.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
FOLDER = Path(__file__).resolve().parent / "example"

CHARACTERS = {
    "Ruby": {"description": "a round red creature with big eyes", "colour": (214, 48, 49), "shape": "circle",
             "background": (245, 242, 235)},
    "Sky": {"description": "a small blue box robot", "colour": (41, 98, 255), "shape": "square",
            "background": (236, 240, 244)},
    "Leaf": {"description": "a green triangle sprite", "colour": (46, 160, 67), "shape": "triangle",
             "background": (250, 247, 228)},
}

PROMPTS = [
    "[{name}] standing on a sandy beach at sunset",
    "[{name}] reading a book in a cozy library",
    "a watercolor painting of [{name}] in a snowy forest",
]

DUOS = [
    {"characters": ["Ruby", "Sky"], "prompt": "[Ruby] and [Sky] having a picnic in a park", "masks": ["left", "right"],
     "seed": 11},
    {"characters": ["Leaf", "Ruby"], "prompt": "[Leaf] waving at [Ruby] on a city street", "masks": ["left", "right"],
     "seed": 12},
]


def draw_character(colour, shape, background) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    body = (56, 56, 200, 200)
    if shape == "circle":
        draw.ellipse(body, fill=colour)
    elif shape == "square":
        draw.rounded_rectangle(body, radius=18, fill=colour)
        draw.line((128, 56, 128, 30), fill=colour, width=6)  # antenna
        draw.ellipse((120, 22, 136, 38), fill=colour)
    else:
        draw.polygon([(128, 40), (212, 200), (44, 200)], fill=colour)
    for eye_x in (104, 152):  # eyes: white with a dark pupil
        draw.ellipse((eye_x - 14, 110, eye_x + 14, 138), fill=(255, 255, 255))
        draw.ellipse((eye_x - 6, 118, eye_x + 6, 130), fill=(30, 30, 30))
    draw.arc((100, 140, 156, 176), start=20, end=160, fill=(30, 30, 30), width=4)  # smile
    return image


def main() -> None:
    (FOLDER / "characters").mkdir(parents=True, exist_ok=True)
    index = {}
    for name, spec in CHARACTERS.items():
        file = f"{name.lower()}.png"
        draw_character(spec["colour"], spec["shape"], spec["background"]).save(FOLDER / "characters" / file)
        index[name] = {"image": file, "description": spec["description"]}
    (FOLDER / "characters.json").write_text(json.dumps(index, indent=2) + "\n")
    rows = []
    for number, name in enumerate(CHARACTERS):
        for prompt_number, prompt in enumerate(PROMPTS):
            rows.append({"id": f"{name.lower()}-{prompt_number + 1}", "characters": [name],
                         "prompt": prompt.format(name=name), "seed": number * 10 + prompt_number})
    rows += [{"id": f"duo-{number + 1}", **duo} for number, duo in enumerate(DUOS)]
    lines = ["# Example benchmark: 3 characters x 3 prompts, and 2 two-character cases (see core/evaluation/format.py)"]
    lines += [json.dumps(row) for row in rows]
    (FOLDER / "cases.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Synthetic data (coloured-shape characters on plain backgrounds) and tiny configs for the trainer tests.

The tiny models and the frozen-encoder cache live in one session folder, so each image is encoded once per
session however many runs use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30)]
SHAPES = ["circle", "square", "triangle", "diamond"]
BACKGROUND = (245, 245, 240)


def draw_character(shape: str, colour, size: int = 48, offset=(0, 0), canvas: Image.Image | None = None):
    """One flat-coloured shape; drawn on ``canvas`` (at ``offset``) or on a new plain ``size`` square."""
    image = canvas or Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(image)
    ox, oy = offset
    s = size / 48
    box = lambda *xy: [v * s + (ox if i % 2 == 0 else oy) for i, v in enumerate(xy)]  # noqa: E731
    if shape == "circle":
        d.ellipse(box(10, 8, 38, 40), fill=colour)
    elif shape == "square":
        d.rectangle(box(12, 10, 36, 38), fill=colour)
    elif shape == "triangle":
        d.polygon(list(zip(*[iter(box(24, 6, 40, 40, 8, 40))] * 2)), fill=colour)
    else:
        d.polygon(list(zip(*[iter(box(24, 6, 40, 24, 24, 42, 8, 24))] * 2)), fill=colour)
    return image


def make_unpaired(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape, colour = SHAPES[i % 4], COLOURS[(i * 3) % 4]
        draw_character(shape, colour).save(folder / f"char{i}.png")
        (folder / f"char{i}.txt").write_text(f"a {shape} character")
    return folder


def make_paired(folder: Path) -> Path:
    """Two single-reference rows and one two-character row with boxes."""
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


def tiny_config_text(output_dir: Path, unpaired: Path, cache: Path, *, steps=8, batch=2, lr=1e-3,
                     checkpoint_every=0, extra_stage="", accumulation=1, sample_every=0, paired: Path | None = None,
                     stage_data="unpaired", keep=3) -> str:
    paired_line = f'paired = "{paired}"' if paired else ""
    return f"""
output_dir = "{output_dir}"
seed = 0

[models]
source = "tiny"
init = "checkpoint"

[data]
unpaired = "{unpaired}"
{paired_line}
max_sequence_length = 16
cache_dir = "{cache}"
cache_latents = true
cache_text_embeddings = true
cache_character_features = true

[run]
mixed_precision = "no"
gradient_accumulation_steps = {accumulation}
checkpoint_every = {checkpoint_every}
keep_checkpoints = {keep}

[objective]
timestep_sampling = "logit_normal"

[optimizer]
weight_decay = 0.0

[sampling]
every = {sample_every}
prompts = ["a circle character"]
seeds = [1]
resolution = 32
steps = 2

[[stages]]
name = "unpaired-32"
data = "{stage_data}"
resolution = 32
batch_size = {batch}
steps = {steps}
learning_rate = {lr}
warmup_steps = 2
{extra_stage}
"""


@pytest.fixture(scope="session")
def trainer_home(user_home):
    """The session's INSTANTCHARACTER_HOME (from tests/conftest.py) with the tiny bundle built; subprocesses
    inherit it through the environment."""
    from core.tiny import ensure_tiny_bundle

    ensure_tiny_bundle()
    return user_home


@pytest.fixture(scope="session")
def unpaired_data(tmp_path_factory):
    return make_unpaired(tmp_path_factory.mktemp("unpaired"))


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder-cache")

"""Synthetic data (coloured-shape characters on plain backgrounds) and tiny configs for the trainer tests.

The tiny models and the frozen-encoder cache live in one session folder, so each image is encoded once per
session however many runs use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.core.metric_models import build_tiny_clip, build_tiny_dino
from trainer.synthetic import (  # noqa: F401
    BACKGROUND,
    COLOURS,
    SHAPES,
    draw_character,
    make_named_paired,
    make_paired,
    make_unpaired,
)


def tiny_config_text(output_dir: Path, unpaired: Path, cache: Path, *, steps=8, batch=2, lr=1e-3,
                     checkpoint_every=0, extra_stage="", accumulation=1, sample_every=0, paired: Path | None = None,
                     stage_data="unpaired", keep=3, trainable=None, tables="") -> str:
    """A config on the tiny models; ``trainable`` (list) and ``tables`` (extra TOML tables at the end) optional."""
    paired_line = f'paired = "{paired}"' if paired else ""
    trainable_line = f"trainable = {trainable!r}".replace("'", '"') if trainable else ""
    return f"""
output_dir = "{output_dir}"
seed = 0
{trainable_line}

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
resolution = 64
steps = 2

[[stages]]
name = "unpaired-64"
data = "{stage_data}"
resolution = 64
batch_size = {batch}
steps = {steps}
learning_rate = {lr}
warmup_steps = 2
{extra_stage}
{tables}
"""


@pytest.fixture(scope="session")
def trainer_home(user_home):
    """The session's INSTANTCHARACTER_HOME (from tests/conftest.py) with the tiny bundle built; subprocesses
    inherit it through the environment."""
    from core.loading.tiny import ensure_tiny_bundle

    ensure_tiny_bundle()
    return user_home


@pytest.fixture(scope="session")
def unpaired_data(tmp_path_factory):
    return make_unpaired(tmp_path_factory.mktemp("unpaired"))


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="session")
def named_paired_data(tmp_path_factory):
    """Paired rows whose captions name their characters with tags (two characters, three rows), and a one-row
    held-out set of the first character in a new caption (``heldout.jsonl`` beside it)."""
    path = make_named_paired(tmp_path_factory.mktemp("named-paired"), names=("Ann", "Bob"))
    (path.parent / "heldout.jsonl").write_text(
        '{"references": [{"name": "Ann", "image": "ref0.png"}], "target": "target0.png", '
        '"caption": "[Ann] on a hill"}\n')
    return path


@pytest.fixture(scope="session")
def tagged_reconstruction_data(unpaired_data, tmp_path_factory):
    """The unpaired images as their own named references with ``[Name]`` captions (stage-1 reconstruction that a
    text adapter learns from; the images' encodings are shared with the unpaired tests through the cache)."""
    folder = tmp_path_factory.mktemp("tagged")
    images = sorted(Path(unpaired_data).glob("*.png"))
    names = ["Ann", "Bob"]  # images the unpaired tests encoded earlier in the session (shared cache)
    rows = [{"references": [{"name": name, "image": str(image)}], "target": str(image),
             "caption": f"[{name}] standing"} for name, image in zip(names, images)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "heldout.jsonl").write_text(json.dumps(
        {"references": [{"name": "Ann", "image": str(images[0])}], "target": str(images[0]),
         "caption": "[Ann] on a hill"}) + "\n")
    return folder / "rows.jsonl"


@pytest.fixture(scope="session")
def tiny_metric_models(tmp_path_factory):
    """Folders of a tiny random CLIP and DINO (see tests/core/metric_models.py)."""
    root = tmp_path_factory.mktemp("metric-models")
    return {"clip": build_tiny_clip(root / "clip"), "dino": build_tiny_dino(root / "dino")}

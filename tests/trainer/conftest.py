"""Synthetic data (coloured-shape characters on plain backgrounds) and tiny configs for the trainer tests.

The tiny models and the frozen-encoder cache live in one session folder, so each image is encoded once per
session however many runs use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.synthetic import BACKGROUND, COLOURS, SHAPES, draw_character, make_paired, make_unpaired  # noqa: F401


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

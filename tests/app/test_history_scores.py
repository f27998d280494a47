"""Scores on demand in the History tab: CLIP-I / DINO-I against the characters, CLIP-T against the prompt."""

from __future__ import annotations

import re

import gradio as gr
import pytest
import torch
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs.history import HistoryEvents
from core.conditioning.character import Character
from core.io.metadata import GenerationRecord, save_png


def test_score_a_generated_image(tiny_pipe, tmp_path, character_files):
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path))
    ann = Character(Image.open(character_files[0]), name="Ann", mask="left")
    image = tiny_pipe("[Ann] on a bike", characters=[ann], num_inference_steps=1, height=32, width=32,
                      generator=torch.Generator().manual_seed(0)).images[0]
    path = save_png(image, tmp_path / "a.png", GenerationRecord(prompt="[Ann] on a bike", seed=0, width=32, height=32,
                                                             characters=[ann.record()]))
    table = HistoryEvents(ctx).score(str(path))
    values = {name: float(value) for name, value in re.findall(r"\| (CLIP-I|DINO-I|CLIP-T) \| (-?[0-9.]+) \|", table)}
    assert set(values) == {"CLIP-I", "DINO-I", "CLIP-T"}
    assert all(-1.0 <= v <= 1.0 for v in values.values())
    # the scorer is made once and reused
    assert ctx.scorer() is ctx.scorer()


def test_score_needs_a_picked_image(tmp_path):
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path))
    with pytest.raises(gr.Error, match="pick an image"):
        HistoryEvents(ctx).score(None)

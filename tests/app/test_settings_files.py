"""Settings: FLUX's VAE, CLIP-L and T5-XXL as single files, each file's header checked when applied."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from app.context import StudioContext, StudioSettings


def test_settings_take_part_files_and_name_a_wrong_one(tmp_path):
    from app.tabs.settings import SettingsEvents

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    events = SettingsEvents(ctx)
    vae = tmp_path / "ae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3)}, str(vae))
    with pytest.raises(gr.Error) as info:
        events.apply("tiny", "", "", "", "", "full", str(tmp_path / "out"), "off", "", "", str(vae))
    assert info.value.message == f"{vae} given as --t5 is a FLUX VAE (float32), not a T5-XXL text encoder"
    assert ctx.settings.t5 is None  # nothing stored
    events.apply("tiny", "", "", "", "", "full", str(tmp_path / "out"), "off", str(vae), "", "")
    assert ctx.settings.vae == str(vae) and ctx.settings.sources().vae == str(vae)
    assert ctx.settings.key()[5] == str(vae)  # a changed file unloads the models

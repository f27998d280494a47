"""The Train tab's handlers are plain functions of values; the tab builds inside a Blocks page."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from app.tabs import train as tab
from trainer.config import load_config


def test_build_save_and_reject_config(tmp_path):
    text = tab.build_config_text("48gb", "tiny", str(tmp_path / "run"), str(tmp_path / "u"), "", 0.001, 0)
    path = tmp_path / "c.toml"
    status = tab.save_config_text(text, str(path))
    assert "1 stage(s)" in status  # no paired data: only the unpaired stage is kept
    assert load_config(path).models.source == "tiny"
    with pytest.raises(gr.Error):
        tab.save_config_text(text.replace("resolution = 512", "resolution = 500"), str(path))
    assert load_config(path).stages[0].resolution == 512  # the bad edit did not replace the good file


def test_progress_from_events(tmp_path):
    sample = tmp_path / "s.png"
    tab.loss_plot([1.0, 0.5]).save(sample)
    events = [{"event": "start", "global_step": 0},
              {"event": "step", "step": 1, "total_steps": 4, "stage": 0, "loss": 1.0, "lr": 1e-5, "it_s": 2.0,
               "eta_s": 65.0},
              {"event": "sample", "step": 1, "images": [str(sample)]},
              {"event": "step", "step": 2, "total_steps": 4, "stage": 0, "loss": 0.8, "lr": 1e-5, "it_s": 2.0,
               "eta_s": 1.0},
              {"event": "validation", "step": 2, "clip_i": 0.8123, "dino_i": 0.6, "clip_t": None, "cases": 1}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "st')
    status, plot, gallery = tab.progress(tmp_path)
    assert "step 2/4" in status and "ETA 0h00m01s" in status and gallery == [str(sample)]
    assert "validation at step 2: CLIP-I 0.812, DINO-I 0.600" in status and "CLIP-T" not in status
    assert plot.size == (480, 200)
    status, _, _ = tab.progress(tmp_path, returncode=1)
    assert "crashed" in status


def test_validate_text_and_tab_builds(tmp_path):
    from .conftest import make_unpaired

    assert tab.validate_text(str(make_unpaired(tmp_path / "u", 2)), "unpaired").startswith("OK")
    with gr.Blocks():
        ui = tab.build(SimpleNamespace(settings=SimpleNamespace(models="tiny")))
    assert ui.events.models() == "tiny"

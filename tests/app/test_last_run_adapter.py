"""Settings' "Use the last run's adapter": the newest adapter a training run exported, into the Adapter field."""

from __future__ import annotations

import os

import gradio as gr
import pytest

from app.context import StudioContext, StudioSettings


def test_the_newest_exported_adapter_fills_the_field(tmp_path, monkeypatch):
    from app.tabs.settings import SettingsEvents

    monkeypatch.setenv("INSTANTCHARACTER_HOME", str(tmp_path / "home"))
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    events = SettingsEvents(ctx)
    with pytest.raises(gr.Error) as info:
        events.last_run_adapter()
    assert info.value.message.startswith("no training run has exported an adapter yet")
    old, new = (ctx.runs_dir / name / "adapter.safetensors" for name in ("old-run", "new-run"))
    for path, when in ((old, 1_000), (new, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (when, when))
    (ctx.runs_dir / "new-run" / "checkpoints").mkdir()  # a run without an export is not taken
    assert events.last_run_adapter() == str(new)

"""Issue 22, item 7: the rough edges a newcomer met, each with the message it gives now."""

from __future__ import annotations

import pytest

from app.wording import counted


def test_an_unknown_training_preset_is_named_once():
    from trainer.config import ConfigError, preset_config

    with pytest.raises(ConfigError) as caught:
        preset_config("12gb")
    assert str(caught.value) == "preset: unknown '12gb' (known: 24gb, 48gb, 80gb, multi-gpu)"


def test_train_plan_with_an_unknown_preset_says_it_in_one_line(capsys):
    from app.cli import main

    assert main(["train", "plan", "--preset", "12gb"]) == 2
    assert capsys.readouterr().err.strip() == "error: preset: unknown '12gb' (known: 24gb, 48gb, 80gb, multi-gpu)"


def test_counts_agree_with_their_nouns():
    assert [counted(n, "character") for n in (0, 1, 2)] == ["0 characters", "1 character", "2 characters"]
    assert counted(1, "panel") == "1 panel" and counted(3, "body", "bodies") == "3 bodies"


def test_a_one_character_story_summary_says_1_character(tmp_path):
    from app.context import StudioContext, StudioSettings
    from app.tabs import story_events as ev
    from PIL import Image

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    folder = ctx.settings.output_dir / "story"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(folder / "ann.png")
    text = "title: One\ncharacter Ann: ann.png\n---\npanel: [Ann] on a hill\n"
    summary = ev.StoryEvents(ctx).parse(text, str(folder))[0]
    assert "**One**: 1 panel, 1 character," in summary


def test_the_canvas_events_run_one_at_a_time_without_an_overlay(tmp_path):
    """Item 6: Apply layout, the whole image, Clear and the size changes that redraw the canvas share one queue
    slot, drop a click while one is pending and show no progress overlay over the canvas."""
    from app.context import StudioContext, StudioSettings
    from app.studio import build_studio

    demo = build_studio(StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out")))
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    canvas = [f for f in fns if getattr(f, "concurrency_id", None) == "canvas"]
    names = {f.fn.__name__ for f in canvas}
    assert {"apply_layout_with_specs", "clear_canvas", "follow_size"} <= names, names
    assert len(canvas) == 8  # layout, whole image, clear, size preset, width and height (blur, submit)
    assert {(f.trigger_mode, f.show_progress, f.concurrency_limit) for f in canvas} == {("once", "hidden", 1)}


def test_apply_layout_with_no_character_uploaded_says_so(monkeypatch, tmp_path):
    import gradio as gr

    from app.tabs import generate_events as ev

    shown = []
    monkeypatch.setattr(gr, "Info", shown.append)
    ev.apply_layout_with_specs("Left / right", 1, 512, 512, None, None)
    assert shown == ["No character uploaded yet: the layout is drawn for Character 1, which gets the whole image; "
                     "upload the characters first and apply the layout again to split the image between them"]
    ev.apply_layout_with_specs("Left / right", 2, 512, 512, None, None)
    assert "drawn for 2 characters, a region each; upload" in shown[-1]
    shown.clear()
    ev.apply_layout_with_specs("Left / right", 1, 512, 512, str(tmp_path / "a.png"), None)
    assert shown == []  # a character is there: nothing to say


def test_recall_replaces_the_last_runs_note():
    """After a cancelled run, Recall of another image left 'cancelled: 0 of 1 images finished' (issue 22)."""
    from app.tabs.generate import recalled_note

    assert recalled_note("/tmp/gradio/abc/20261206-1-aaaaaa.png") == (
        "Settings recalled from 20261206-1-aaaaaa.png: press Generate to make it again.")
    assert recalled_note(None) == ""

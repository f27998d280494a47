"""The Story tab's "Edit this panel" through its handlers on the tiny models: the edit is recorded in the manifest,
Render keeps it, "Render every panel again" makes it again byte for byte, Undo drops it; bad input is one line."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs import story_events as ev
from app.tabs.story_edit import StoryEditEvents
from core.story.manifest import load_manifest, panel_filename

STORY = """title: Edit Tab
size: 32x32
steps: 2
seed: 3
layout: grid 2x2
page: 100x150mm
dpi: 72
character Ann: ann.png
---
[Ann] on the pier
the sea [NC]
"""


class Progress:
    def __call__(self, fraction, desc=None):
        pass


@pytest.fixture
def setup(tiny_models, tmp_path):
    folder = tmp_path / "outputs" / "edit-story"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 48), (200, 50, 50)).save(folder / "ann.png")
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "outputs"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ctx, folder
    torch.set_num_threads(previous)


def _error(fn, *args) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    assert "\n" not in info.value.message
    return info.value.message


def test_edit_a_panel_in_the_story_tab(setup):
    ctx, folder = setup
    story_events = ev.StoryEvents(ctx)
    edits = StoryEditEvents(story_events)
    args = (STORY, str(folder))
    assert "panel 1 is not rendered" in _error(edits.edit_panel, *args, 1, 0.7, "left", None, Progress())
    story_events.render(*args, False, None, Progress())
    out = ev.render_dir_for(ctx, ev.parse_text(STORY, str(folder), ctx.paths), None)
    before = (out / panel_filename(0)).read_bytes()

    notes, rows, *_ = edits.edit_panel(*args, 1, 0.7, "left", None, Progress())
    assert "Rendered 1 panel(s)" in notes
    edited = (out / panel_filename(0)).read_bytes()
    assert edited != before and load_manifest(out).edits[0]["region"] == "left"

    story_events.render(*args, False, None, Progress())  # Render: nothing to do, the edit is kept
    assert (out / panel_filename(0)).read_bytes() == edited
    story_events.render(*args, True, None, Progress())  # every panel again: the edit made again
    assert (out / panel_filename(0)).read_bytes() == edited

    edits.undo_edit(*args, 1, None, Progress())
    assert (out / panel_filename(0)).read_bytes() == before and not load_manifest(out).edits
    assert _error(edits.undo_edit, *args, 1, None, Progress()) == "panel 1 has no edit to undo"
    assert _error(edits.edit_panel, *args, 3, 0.5, None, None, Progress()) == "panel number must be 1 to 2, got 3"
    assert "strength=1.5: must be from 0" in _error(edits.edit_panel, *args, 1, 1.5, None, None, Progress())
    assert _error(edits.edit_panel, *args, 1, 0.5, "nowhere", None, Progress()) == (
        "the region to redo 'nowhere' must be one of whole, left, right, top, bottom, left-third, center-third, "
        "right-third, grid:RxC:N or box:x0,y0,x1,y1 (fractions 0-1)")

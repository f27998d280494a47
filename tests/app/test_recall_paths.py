"""Every studio handler that opens a PNG a client names (Recall on the Generate tab and in History, the edit
section's Recall and "Edit this", the control section's Recall, History's Score) resolves it through
``client_input.studio_file``, the studio's path policy: outside the studio's folders it is refused with the policy's
one-line message before anything is read; inside them it recalls as before. (The same Recall over the raw queue
protocol is in ``test_security.py``.)"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs import generate_events as ev
from app.tabs.control_events import ControlEvents
from app.tabs.edit_events import EditEvents
from app.generation_history import HistoryEntry
from app.tabs.history import HistoryEvents
from core.io.metadata import GenerationRecord, save_png

TOKEN = "SECRET-recall-7f3a"

HANDLERS = {  # the handlers the pages call with a file a client names (History's Recall and Edit call the same)
    "Recall settings": lambda ctx: ev.GenerateEvents(ctx).recall,
    "Recall (the page's, with masks)": lambda ctx: ev.GenerateEvents(ctx).recall_with_masks,
    "edit section's Recall": lambda ctx: EditEvents(ctx).recall_edit,
    "Edit this": lambda ctx: EditEvents(ctx).edit_this,
    "control section's Recall": lambda ctx: ControlEvents(ctx).recall,
    "History's Score": lambda ctx: HistoryEvents(ctx).score,
}


@pytest.fixture
def ctx(tmp_path):
    context = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    context.settings.output_dir.mkdir(parents=True)
    return context


@pytest.fixture
def outside_png(tmp_path):
    """A PNG made by the studio (its prompt holds a token), in a folder outside every root of the studio."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return save_png(Image.new("RGB", (32, 32), "teal"), folder / "made.png",
                    GenerationRecord(prompt=f"a cat {TOKEN}", seed=3, width=32, height=32))


def _outside_values(ctx, outside_png) -> dict:
    link = ctx.settings.output_dir / "link.png"
    link.symlink_to(outside_png)
    return {
        "/etc/passwd": "/etc/passwd",
        "a PNG in a folder outside": str(outside_png),
        "a file component's value": SimpleNamespace(name=str(outside_png)),
        "../ out of the output folder": str(ctx.settings.output_dir / ".." / "elsewhere" / "made.png"),
        "a link in the output folder to outside": str(link),
    }


def _message(fn, value) -> str:
    with pytest.raises(gr.Error) as info:
        fn(value)
    return info.value.message


@pytest.mark.parametrize("handler", list(HANDLERS))
def test_outside_files_are_refused_with_the_policys_message(ctx, outside_png, handler):
    fn = HANDLERS[handler](ctx)
    for case, value in _outside_values(ctx, outside_png).items():
        message = _message(fn, value)
        named = getattr(value, "name", value)
        assert message.endswith(f" {named} is outside the folders this studio may use ({ctx.paths.describe()})"), \
            (case, message)
        assert "\n" not in message and TOKEN not in message and "root:" not in message, (case, message)


def test_the_same_png_inside_the_output_folder_recalls(ctx, outside_png):
    inside = ctx.settings.output_dir / "made.png"
    shutil.copy(outside_png, inside)
    recalled = dict(zip(ev.RECALL_FIELDS, ev.GenerateEvents(ctx).recall(str(inside)), strict=True))
    assert (recalled["prompt"], recalled["seed"]) == (f"a cat {TOKEN}", 3)
    assert EditEvents(ctx).recall_edit(SimpleNamespace(name=str(inside))) == (gr.update(), gr.update())  # no edit
    canvas, width, height, _ = EditEvents(ctx).edit_this(str(inside))
    assert canvas["background"].size == (32, 32) and (width, height) == (32, 32)



def test_an_image_the_history_lists_recalls_from_an_earlier_output_folder(ctx, outside_png):
    """History keeps images made in an earlier output folder (the owner moved it in Settings): History's Recall and
    Edit take them (the same handlers), while another file of that folder stays refused."""
    ctx.history.add(HistoryEntry(path=str(outside_png), prompt="a cat", seed=3, width=32, height=32))
    recalled = dict(zip(ev.RECALL_FIELDS, ev.GenerateEvents(ctx).recall(str(outside_png)), strict=True))
    assert (recalled["prompt"], recalled["seed"]) == (f"a cat {TOKEN}", 3)
    canvas, width, height, _ = EditEvents(ctx).edit_this(str(outside_png))
    assert canvas["background"].size == (32, 32) and (width, height) == (32, 32)
    other = shutil.copy(outside_png, outside_png.with_name("other.png"))
    assert "is outside the folders this studio may use" in _message(ev.GenerateEvents(ctx).recall, str(other))
    assert "is outside the folders" in _message(ev.GenerateEvents(ctx).recall,
                                                 str(outside_png.parent / ".." / "elsewhere" / "made.png"))

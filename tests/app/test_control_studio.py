"""The Generate tab's control panel through its handlers (no browser): generate with a control image, Recall it,
make one from a photo, and the bad inputs, each a one-line message."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs import generate_events as ev
from app.tabs.control_events import CONTROL_KEYS, ControlEvents, control_values, parse_controls
from core.io.metadata import read_record


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture
def ctx(tmp_path):
    return StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))


@pytest.fixture
def picture(ctx):
    ctx.settings.output_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.settings.output_dir / "pose-upload.png"
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8)).save(path)
    return path


def _generate(ctx, controls, **fields):
    fields.setdefault("prompt", "a dancer")
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("steps", 2)
    fields.setdefault("randomize_seed", False)
    return ev.GenerateEvents(ctx).generate(None, NoProgress(), *ev.form_values(**fields), [], None, controls)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


def test_generate_with_a_control_image_then_recall_it(ctx, picture):
    gallery, _, notes, _ = _generate(ctx, control_values(control1_image=str(picture), control1_kind="depth",
                                                         control1_scale=0.5, control1_end=0.5))
    record = read_record(gallery[0])
    assert record.control[0]["kind"] == "depth" and record.control[0]["end"] == 0.5
    assert (ctx.settings.output_dir / record.control[0]["file"]).is_file()
    rows = ControlEvents(ctx).recall(gallery[0])
    assert rows[1:5] == ["depth", 0.5, 0.0, 0.5] and rows[0].size == (64, 64)
    assert rows[5] is None  # the second row is off


def test_no_control_row_is_the_generation_of_before(ctx):
    gallery, _, _, _ = _generate(ctx, control_values())
    assert read_record(gallery[0]).control is None


def test_make_from_photo(ctx, picture):
    made = ControlEvents(ctx).make(str(picture), "canny")
    assert made.size == (64, 64)
    assert error_of(ControlEvents(ctx).make, str(picture), "pose").startswith(
        "no person found in the photo for a pose")
    assert error_of(ControlEvents(ctx).make, None, "depth") == ("upload a photo or drawing first, then press "
                                                                "'Make from photo'")


def test_bad_control_values(ctx, picture, tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    cases = [
        (dict(control1_image=str(picture), control1_kind="scribble"),
         "control 1's kind 'scribble' unknown: use one of pose, depth, canny, soft-edge, gray"),
        (dict(control1_image=str(picture), control1_scale=5),
         "control 1's scale 5 is out of range: use 0 to 2 (0.3-0.8 usually)"),
        (dict(control1_image=str(picture), control1_start=0.6, control1_end=0.2),
         "control 1's steps 0.6-0.2: the range must be within 0-1 and start before it ends"),
    ]
    for given, message in cases:
        assert error_of(_generate, ctx, control_values(**given)) == message
    assert "is outside the folders this studio may use" in error_of(
        _generate, ctx, control_values(control2_image=str(outside)))
    assert parse_controls(None) == [] and len(CONTROL_KEYS) == 10


def test_the_panel_state_follows_each_component():
    from app.tabs.control_events import set_value

    state = control_values()
    state = set_value(0)(state, "/uploads/a.png")
    state = set_value(7)(state, 0.4)  # control 2's scale
    assert state == control_values(control1_image="/uploads/a.png", control2_scale=0.4)
    assert set_value(1)(None, "depth") == control_values(control1_kind="depth")  # a state sent wrong: rebuilt


def test_edit_with_a_control_image(ctx, picture):
    from app.mask_canvas import edit_canvas
    from app.tabs.edit_events import EditEvents

    fields = ev.form_values(prompt="a portrait", width=64, height=64, steps=2, randomize_seed=False)
    gallery, _, _, _ = EditEvents(ctx).edit(None, NoProgress(), *fields, [], None, edit_canvas(str(picture)), 0.8,
                                            control_values(control1_image=str(picture), control1_kind="pose"))
    record = read_record(gallery[0])
    assert record.edit["strength"] == 0.8 and record.control[0]["kind"] == "pose"

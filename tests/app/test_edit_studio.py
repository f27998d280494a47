"""The studio's edit mode through its handlers (no browser): edit a generated image in a painted region, Recall the
edit, "Edit this", and the bad inputs, each a one-line message."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.mask_canvas import edit_canvas, edit_from_canvas
from app.tabs import generate_events as ev
from app.tabs.edit_events import EditEvents
from core.conditioning.edit import outside
from core.io.metadata import read_record


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture
def ctx(tmp_path):
    return StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8)).save(path)
    return path


def _painted(canvas, box):
    layer = Image.new("RGBA", canvas["background"].size, (255, 255, 255, 0))
    layer.paste((255, 255, 255, 255), box)
    return dict(canvas, layers=[layer])


def _edit(ctx, canvas, strength=0.8, **fields):
    fields.setdefault("prompt", "a portrait")
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("steps", 2)
    fields.setdefault("randomize_seed", False)
    return EditEvents(ctx).edit(None, NoProgress(), *ev.form_values(**fields), [], None, canvas, strength)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


def test_edit_a_region_then_recall_it(ctx, picture):
    canvas = _painted(edit_canvas(str(picture)), (16, 16, 48, 40))
    paths, _, notes, seed = _edit(ctx, canvas, seed=5)
    out = paths[0]
    assert "edited image(s)" in notes
    record = read_record(out)
    assert record.edit["strength"] == 0.8 and record.edit["region"].startswith("png:")
    _, region, _ = edit_from_canvas(canvas)
    keep = outside(region, 64, 64)
    assert np.array_equal(np.asarray(Image.open(out))[keep], np.asarray(Image.open(picture))[keep])

    recalled_canvas, strength = EditEvents(ctx).recall_edit(out)
    assert strength == 0.8
    assert np.array_equal(np.asarray(recalled_canvas["background"].convert("RGB")), np.asarray(Image.open(picture)))
    painted = np.asarray(recalled_canvas["layers"][0].getchannel("A")) > 0
    assert np.array_equal(painted, region.image > 0)
    # editing the recalled canvas again makes the same image
    again, _, _, _ = _edit(ctx, recalled_canvas, strength, seed=seed)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(out)))


def test_recall_of_a_plain_png_leaves_the_edit_canvas(ctx):
    paths, *_ = ev.GenerateEvents(ctx).generate(None, NoProgress(), *ev.form_values(
        prompt="a cat", width=64, height=64, steps=2), [])
    assert EditEvents(ctx).recall_edit(paths[0]) == (gr.update(), gr.update())


def test_edit_this_puts_the_image_on_the_canvas_at_its_size(ctx):
    ctx.settings.output_dir.mkdir(parents=True)  # "Edit this" reads only the studio's folders
    path = ctx.settings.output_dir / "wide.png"
    Image.new("RGB", (100, 60), "navy").save(path)
    canvas, width, height, preset = EditEvents(ctx).edit_this(str(path))
    assert canvas["background"].size == (100, 60) and (width, height) == (96, 48) and preset == "Custom"


def test_edit_bad_inputs(ctx, picture):
    assert error_of(EditEvents(ctx).edit_this, None).startswith("pick an image in the gallery")
    assert error_of(_edit, ctx, None).startswith("pick an image to edit first")
    canvas = edit_canvas(str(picture))
    assert error_of(_edit, ctx, canvas, 1.5) == "strength=1.5: must be from 0 (keep the source) to 1 (ignore it)"
    assert error_of(_edit, ctx, canvas, "x") == "strength='x': must be from 0 (keep the source) to 1 (ignore it)"
    assert "is 64x64: resized to 96x64 (the output size)" in _edit(ctx, canvas, 0.3, width=96)[2]


def test_the_routing_canvas_shows_the_image_being_edited(ctx, tmp_path):
    from app.mask_canvas import layer_masks, layout_canvas

    path = tmp_path / "wide.png"
    Image.new("RGB", (100, 60), (0, 0, 128)).save(path)
    events = EditEvents(ctx)
    edit = edit_canvas(str(path))
    assert events.uploaded(edit) == (96, 48, "Custom")
    routing = layout_canvas("Left / right", 2, 64, 64)
    shown = events.routing_on_image(routing, edit, 96, 48)
    assert shown["background"].size == (512, 256)
    assert np.asarray(shown["background"].convert("RGB"))[128, 256].tolist() == [0, 0, 128]
    masks = layer_masks(shown)  # the painted layers are kept, at the new size
    assert masks[0][:, :200].all() and not masks[0][:, 312:].any() and masks[1][:, 312:].all()
    assert events.routing_on_image(routing, None, 96, 48) == gr.update()

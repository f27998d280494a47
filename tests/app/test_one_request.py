"""One request end to end: a PNG made by the command line recalls in the studio as the same request."""

from __future__ import annotations

import pytest

from app.cli import main
from app.context import StudioContext, StudioSettings
from app.generation import build_request
from app.tabs import generate_events as ev
from core.request import request_from_png


def _studio_request(ctx, path):
    """What the studio would generate after Recall of ``path``, with no edits on the page."""
    values, specs = ev.GenerateEvents(ctx)._recall_values(str(path))
    recalled = dict(zip(ev.RECALL_FIELDS, values, strict=True))
    form = {k: v for k, v in recalled.items() if k in ev.GENERATE_FIELDS}
    slots, canvas, fields = ev.parse_form(ev.form_values(**form), ctx)
    request, _ = build_request(slots, canvas, fields, specs)
    return request


@pytest.mark.parametrize("mask", ["left", "box:0.1,0.2,0.6,0.9", "grid:2x2:3"])
def test_cli_png_at_scale_1_8_with_a_named_mask_recalls_as_the_same_request(tiny_models, tmp_path, character_files,
                                                                            mask):
    out = tmp_path / "o" / "cli.png"  # in the studio's output folder: Recall reads only the studio's folders
    assert main(["generate", "--prompt", "[Ann] on a hill", "--character", f"Ann={character_files[0]}:1.8",
                 "--mask", f"Ann={mask}", "--steps", "2", "--width", "64", "--height", "48", "--seed", "9",
                 "--models", "tiny", "--out", str(out)]) == 0
    cli = request_from_png(out)
    assert cli.characters[0].scale == 1.8 and cli.characters[0].mask.to_json() == mask
    studio = _studio_request(StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "o")), out)
    assert studio.summary() == cli.summary()


def test_a_soft_painted_mask_keeps_its_values_through_recall(tiny_models, tmp_path, character_files):
    import numpy as np
    from PIL import Image

    soft = tmp_path / "soft.png"
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    Image.fromarray(ramp, "L").save(soft)
    out = tmp_path / "o" / "cli.png"  # in the studio's output folder: Recall reads only the studio's folders
    assert main(["generate", "--prompt", "[Ann] walks", "--character", f"Ann={character_files[0]}",
                 "--mask", f"Ann={soft}", "--steps", "1", "--width", "64", "--height", "48", "--seed", "1",
                 "--models", "tiny", "--out", str(out)]) == 0
    cli = request_from_png(out)
    studio = _studio_request(StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "o")), out)
    assert studio.summary() == cli.summary()
    assert 0.2 < float(np.asarray(studio.characters[0].mask.image).mean()) < 0.8  # soft, not made hard


def test_a_layer_painted_over_is_what_is_painted(tmp_path):
    from app.mask_canvas import layout_canvas, layout_specs, slot_masks

    canvas = layout_canvas("Left / right", 2, 64, 64)
    specs = layout_specs("Left / right", 2)
    masks, _ = slot_masks(canvas, [0, 1], {0: "A", 1: "B"}, specs)
    assert masks[0].to_json() == "left" and masks[1].to_json() == "right"
    layer = canvas["layers"][0]
    layer.paste((220, 50, 47, 255), (300, 0, 400, 512))  # paint over into the right half (512 px preview)
    masks, _ = slot_masks(canvas, [0, 1], {0: "A", 1: "B"}, specs)
    assert masks[0].box is None and masks[1].to_json() == "right"

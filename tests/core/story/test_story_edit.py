"""``story edit`` on the tiny models: the edit of a panel is recorded in the manifest, ``--resume`` keeps it, a full
re-render makes it again byte for byte, ``--undo`` drops it; pixels outside an inpainted region stay the panel's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.story_commands import main
from core.conditioning.edit import outside
from core.conditioning.masks import RoutingMask
from core.io.metadata import read_record
from core.request import request_from_png
from core.story.manifest import load_manifest, panel_filename

STORY = """title: Edit test
size: 48x32
steps: 2
seed: 4
dpi: 72
layout: grid 2x2
page: 100x150mm
character Ann: chars/ann.png
---
[Ann] at the harbour
[Ann] on a boat
a quiet sea [NC]
"""
DRAFT = ["--models", "tiny", "--no-export"]
REGION = "box:0.25,0.25,0.75,1"


@pytest.fixture
def story(tmp_path, tiny_models):
    (tmp_path / "chars").mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "chars" / "ann.png")
    path = tmp_path / "edit.story"
    path.write_text(STORY)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield path
    torch.set_num_threads(previous)


def _panels(out):
    return [(out / panel_filename(i)).read_bytes() for i in range(3)]


def test_edit_survives_resume_and_rerender(story, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["render", str(story), "--out", str(out), *DRAFT]) == 0
    before = _panels(out)
    assert main(["edit", str(story), "--out", str(out), "--panel", "2", "--strength", "0.9", "--region", REGION,
                 "--seed", "11", *DRAFT]) == 0
    assert "panel 2 edited at strength 0.9 (inpainted)" in capsys.readouterr().out
    edited = _panels(out)
    assert edited[0] == before[0] and edited[2] == before[2] and edited[1] != before[1]

    edit = load_manifest(out).edits[1]
    assert (edit["strength"], edit["region"], edit["seed"]) == (0.9, REGION, 11)
    assert (out / edit["source_file"]).is_file()
    # outside the region (beyond the feathered edge) the pixels are the panel's before the edit
    old, new = (np.asarray(Image.open(__import__("io").BytesIO(b))) for b in (before[1], edited[1]))
    keep = outside(RoutingMask.from_spec(REGION), new.shape[1], new.shape[0])
    assert keep.any() and np.array_equal(old[keep], new[keep])
    # the panel PNG records the edit, and Recall restores it (its source lies beside it)
    record = read_record(out / panel_filename(1))
    assert record.edit["strength"] == 0.9 and record.edit["region"] == REGION and record.seed == 11
    recalled = request_from_png(out / panel_filename(1))
    assert recalled.inpaint_region.label == REGION.lower() and recalled.strength == 0.9

    assert main(["render", str(story), "--out", str(out), "--resume", *DRAFT]) == 0
    assert "kept 3 already done" in capsys.readouterr().out
    assert _panels(out) == edited

    assert main(["render", str(story), "--out", str(out), *DRAFT]) == 0  # every panel again, the edit too
    assert _panels(out) == edited
    assert 1 in load_manifest(out).edits

    assert main(["edit", str(story), "--out", str(out), "--panel", "2", "--undo", *DRAFT]) == 0
    assert _panels(out) == before and not load_manifest(out).edits


def test_image_to_image_edit_of_a_panel(story, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["render", str(story), "--out", str(out), "--panels", "1", *DRAFT]) == 0
    before = (out / panel_filename(0)).read_bytes()
    assert main(["edit", str(story), "--out", str(out), "--panel", "1", "--strength", "0.5", *DRAFT]) == 0
    assert (out / panel_filename(0)).read_bytes() != before
    assert read_record(out / panel_filename(0)).edit["region"] is None


def test_bad_story_edits(story, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["edit", str(story), "--out", str(out), "--panel", "2", *DRAFT]) == 2
    assert "panel 2 is not rendered in" in capsys.readouterr().err
    assert main(["edit", str(story), "--out", str(out), "--panel", "7", *DRAFT]) == 2
    assert "--panel 7: the story has 3 panels" in capsys.readouterr().err
    assert main(["edit", str(story), "--out", str(out), "--panel", "1", "--strength", "2", *DRAFT]) == 2
    assert "--strength=2.0: must be from 0 (keep the source) to 1" in capsys.readouterr().err
    assert main(["edit", str(story), "--out", str(out), "--panel", "1", "--undo", *DRAFT]) == 2
    assert "panel 1 has no edit to undo" in capsys.readouterr().err


def test_edit_loads_the_models_render_took(story, tmp_path, monkeypatch):
    """``story edit`` takes ``--base`` and ``--adapter`` as ``story render`` does (one set of model options), and
    loads the engine with them."""
    import app.story_commands as commands

    out = tmp_path / "out"
    assert main(["render", str(story), "--out", str(out), "--panels", "1", *DRAFT]) == 0

    from core.errors import UserError

    asked = {}

    def load_engine(args, *rest, **kwargs):
        asked.update(base=args.base, adapter=args.adapter)
        raise UserError("stopped before loading")

    monkeypatch.setattr(commands, "load_engine", load_engine)
    assert main(["edit", str(story), "--out", str(out), "--panel", "1", "--strength", "0.5", *DRAFT,
                 "--base", "some/flux", "--adapter", "my-adapter.safetensors"]) != 0
    assert (asked["base"], asked["adapter"]) == ("some/flux", "my-adapter.safetensors")

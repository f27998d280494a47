"""``generate --image PATH --strength S --inpaint-mask PATH``: an edit from the command line, recorded and recalled."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from core.conditioning.edit import outside
from core.io.images import rgb_digest
from core.conditioning.masks import RoutingMask
from core.io.metadata import read_record
from core.request import request_from_png


@pytest.fixture
def files(tmp_path):
    source = tmp_path / "scene.png"
    Image.fromarray((np.random.RandomState(5).rand(64, 96, 3) * 255).astype(np.uint8)).save(source)
    mask = tmp_path / "mask.png"
    painted = Image.new("L", (96, 64), 0)
    painted.paste(255, (30, 10, 70, 50))
    painted.save(mask)
    hero = tmp_path / "hero.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(hero)
    return source, mask, hero


def _edit(tiny_models, out, source, *extra):
    prompt = "[Hero] in the doorway" if "--character" in extra else "a doorway"
    return main(["generate", "--prompt", prompt, "--steps", "4", "--seed", "3", "--image",
                 str(source), "--models", str(tiny_models), "--out", str(out), *extra])


def test_inpaint_from_the_command_line(tiny_models, files, tmp_path, capsys):
    source, mask, hero = files
    out = tmp_path / "out" / "edit.png"
    assert _edit(tiny_models, out, source, "--character", f"Hero={hero}", "--strength", "0.8", "--inpaint-mask",
                 str(mask)) == 0
    printed = capsys.readouterr().out
    assert "saved" in printed and "note: the character acts in the inpainting region" in printed
    record = read_record(out)
    assert (record.width, record.height) == (96, 64)  # the source's size
    assert record.edit["strength"] == 0.8 and record.edit["region"].startswith("png:")
    beside = out.parent / record.edit["source_file"]
    assert rgb_digest(Image.open(beside)) == rgb_digest(Image.open(source).convert("RGB"))
    region = RoutingMask.from_json(record.edit["region"])
    keep = outside(region, 96, 64)
    assert np.array_equal(np.asarray(Image.open(out))[keep], np.asarray(Image.open(source))[keep])
    # the character's mask is not recorded: it defaults to the region again when recalled
    assert record.characters[0].mask is None

    again = tmp_path / "again.png"
    assert main(["generate", "--recall", str(out), "--models", str(tiny_models), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    recalled = request_from_png(again)
    assert recalled.strength == 0.8 and recalled.inpaint_region is not None


def test_image_to_image_at_a_given_size(tiny_models, files, tmp_path, capsys):
    source, _, _ = files
    out = tmp_path / "i2i.png"
    assert _edit(tiny_models, out, source, "--strength", "0.5", "--width", "64", "--height", "64") == 0
    assert "note: the source image is 96x64: resized to 64x64 (the output size)" in capsys.readouterr().out
    record = read_record(out)
    assert record.edit["region"] is None and record.edit["strength"] == 0.5


@pytest.mark.parametrize("extra, message", [
    (["--strength", "1.5"], "error: --strength=1.5: must be from 0 (keep the source) to 1 (ignore it)"),
    (["--strength", "-1"], "error: --strength=-1.0: must be from 0"),
])
def test_bad_strength(tiny_models, files, tmp_path, capsys, extra, message):
    source, _, _ = files
    assert _edit(tiny_models, tmp_path / "x.png", source, *extra) == 2
    assert message in capsys.readouterr().err


def test_a_source_that_is_not_an_image(tiny_models, tmp_path, capsys):
    bad = tmp_path / "scene.png"
    bad.write_text("hello")
    assert _edit(tiny_models, tmp_path / "x.png", bad) == 2
    assert f"error: --image {bad} is not an image file Pillow can read" in capsys.readouterr().err


def test_an_empty_mask(tiny_models, files, tmp_path, capsys):
    source, _, _ = files
    empty = tmp_path / "empty.png"
    Image.new("L", (96, 64), 0).save(empty)
    assert _edit(tiny_models, tmp_path / "x.png", source, "--inpaint-mask", str(empty)) == 2
    assert "error: the inpaint mask is empty: paint the area to redo" in capsys.readouterr().err


def test_mask_of_another_size_is_resized_with_a_note(tiny_models, files, tmp_path, capsys):
    source, _, _ = files
    small = tmp_path / "small.png"
    mask = Image.new("L", (24, 16), 0)
    mask.paste(255, (6, 4, 18, 12))
    mask.save(small)
    assert _edit(tiny_models, tmp_path / "x.png", source, "--inpaint-mask", str(small)) == 0
    assert (f"note: --inpaint-mask {small} is 24x16, the source 96x64: the mask was resized to the source"
            in capsys.readouterr().out)


def test_strength_without_an_image(tiny_models, tmp_path, capsys):
    code = main(["generate", "--prompt", "a cat", "--strength", "0.5", "--models", str(tiny_models), "--out",
                 str(tmp_path / "x.png")])
    assert code == 2 and "error: --strength needs --image PATH" in capsys.readouterr().err

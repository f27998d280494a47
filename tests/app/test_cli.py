"""The command line: generate writes a reproducible PNG; bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from core.conditioning.character import Character
from core.limits import MAX_SEED
from core.io.metadata import read_record


def _character(tmp_path, name, colour):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (48, 64), colour).save(path)
    return path


def test_generate_writes_png_with_settings(tiny_models, tmp_path, capsys):
    out = tmp_path / "out.png"
    ann = _character(tmp_path, "ann", (220, 40, 40))
    code = main(["generate", "--prompt", "a photo of a girl", "--character", f"{ann}:0.8", "--steps", "2",
                 "--width", "48", "--height", "32", "--seed", "7", "--models", str(tiny_models), "--out", str(out)])
    assert code == 0
    assert "saved" in capsys.readouterr().out
    record = read_record(out)
    assert (record.prompt, record.seed, record.width, record.height, record.num_inference_steps) == (
        "a photo of a girl", 7, 48, 32, 2)
    assert record.characters[0].scale == 0.8
    assert "Seed: 7" in Image.open(out).text["parameters"]
    # same settings, same image
    again = tmp_path / "again.png"
    main(["generate", "--prompt", "a photo of a girl", "--character", f"{ann}:0.8", "--steps", "2", "--width", "48",
          "--height", "32", "--seed", "7", "--models", str(tiny_models), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_two_characters_with_masks(tiny_models, tmp_path):
    out = tmp_path / "two.png"
    ann = _character(tmp_path, "ann", (220, 40, 40))
    bob = _character(tmp_path, "bob", (40, 40, 220))
    mask = tmp_path / "bob-mask.png"
    painted = Image.new("L", (300, 200), 0)
    painted.paste(255, (150, 0, 300, 200))
    painted.save(mask)
    code = main(["generate", "--prompt", "[Ann] talks to [Bob]", "--character", f"Ann={ann}",
                 "--character", f"Bob={bob}:0.6", "--mask", "Ann=left", "--mask", f"Bob={mask}", "--steps", "2",
                 "--width", "64", "--height", "32", "--seed", "1", "--models", str(tiny_models), "--out", str(out)])
    assert code == 0
    record = read_record(out)
    names = [(c.name, c.scale) for c in record.characters]
    assert names == [("Ann", 0.9), ("Bob", 0.6)]
    assert record.characters[0].mask == "left"
    assert record.characters[1].mask.startswith("png:")
    rebuilt = [Character.from_record(c) for c in record.characters]
    assert rebuilt[1].mask.weights(2, 4).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_bad_inputs_exit_2_with_one_line(tiny_models, tmp_path, capsys):
    ann = _character(tmp_path, "ann", (220, 40, 40))
    cases = [
        (["--character", str(tmp_path / "missing.png")], "file not found"),
        (["--character", str(ann), "--width", "50"], "width 50 is not a multiple of 16: use 48 or 64"),
        (["--character", str(ann), "--steps", "0"], "steps must be from 1 to 100, got 0"),
        (["--character", f"Ann={ann}", "--mask", "Ann=box:0.5,0.2,0.4,0.9"], "is empty"),
        (["--character", f"Ann={ann}", "--mask", "Ann=box:0,0,1.5,1"], "outside [0, 1]"),
        (["--character", f"Ann={ann}", "--mask", "Ann=left", "--mask", "Ann=right"], "2 masks given for 1"),
        (["--prompt", "[Zed] waves", "--character", f"Ann={ann}"], "no character has that name"),
        (["--character", f"Ann={ann}", "--mask", f"Ann={tmp_path / 'no-mask.png'}"], "no-mask.png: file not found"),
        (["--character", f"Ann={ann}", "--mask", "Bob=left"], "no character is named 'Bob'"),
    ]
    for extra, needle in cases:
        args = ["generate", "--prompt", "a girl", "--models", str(tiny_models), "--steps", "1", "--width", "32",
                "--height", "32", "--out", str(tmp_path / "x.png")] + extra
        assert main(args) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and needle in err, (extra, err)


def test_cli_process_prints_no_traceback(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--prompt", "x", "--character", str(junk),
                           "--models", "tiny", "--out", str(tmp_path / "o.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "is not an image file" in proc.stderr


@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if the command loads models: bad input must be refused first."""
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded for a bad input")
    monkeypatch.setattr("core.loading.loader.load_pipeline", refuse)


def _fails(tiny_models, tmp_path, capsys, extra, out=None) -> str:
    args = ["generate", "--prompt", "a girl", "--models", str(tiny_models), "--steps", "1", "--width", "32",
            "--height", "32", "--out", str(out or tmp_path / "x.png")] + extra
    assert main(args) == 2, extra
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0].removeprefix("error: ")


def test_limits_are_checked_before_any_model_loads(tiny_models, tmp_path, capsys, no_models):
    from tests.core.crafted_png import bilevel_png

    ann = _character(tmp_path, "ann", (220, 40, 40))
    notes = tmp_path / "notes.png"
    notes.write_text("a text file, not a mask")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bilevel_png(30000, 30000, pixels=False))
    cases = [
        (["--seed", str(10**30)], "--seed must be from 0 to 4294967295, got 1000000000000000000000000000000"),
        (["--seed", "-1"], "--seed must be from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], "--seed must be from 0 to 4294967295, got 4294967296"),
        (["--steps", "101"], "steps must be from 1 to 100, got 101"),
        (["--guidance", "31"], "guidance must be from 0 to 30, got 31.0"),
        (["--true-cfg", "25"], "true CFG scale (1 turns it off) must be from 1 to 20, got 25.0"),
        (["--width", "8192"], "width must be from 16 to 4096, got 8192"),
        (["--prompt", "x" * 4001], "--prompt is 4,001 characters long: the limit is 4,000"),
        (["--negative-prompt", "x" * 4001], "--negative-prompt is 4,001 characters long: the limit is 4,000"),
        (["--character", f"Ann={ann}:2.5"], "character 'Ann': scale must be from 0 to 2, got 2.5"),
        (["--character", f"{'N' * 65}={ann}"], "must be 1-64 characters without brackets or line breaks"),
        (["--character", str(bomb)], f"{bomb} is far over the 40 megapixel limit: refused before decoding"),
        (["--character", f"Ann={ann}", "--mask", f"Ann={notes}"],
         f"mask file {notes} is not an image file Pillow can read"),
        (["--character", f"Ann={ann}", "--mask", f"Ann={bomb}"],
         f"mask file {bomb} is far over the 40 megapixel limit: refused before decoding"),
    ]
    for extra, message in cases:
        assert _fails(tiny_models, tmp_path, capsys, extra).endswith(message), extra


def test_out_that_is_not_a_file_is_refused_first(tiny_models, tmp_path, capsys, no_models):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert _fails(tiny_models, tmp_path, capsys, [], out=folder) == (
        f"{folder} is a folder: give a file name inside it, such as {folder / 'image.png'}")
    assert _fails(tiny_models, tmp_path, capsys, [], out=f"{tmp_path}/new/") == (
        f"{tmp_path}/new/ names a folder: give a file name")
    device = os.stat("/dev/null")
    assert _fails(tiny_models, tmp_path, capsys, [], out="/dev/null") == (
        "/dev/null is not a regular file (a device, pipe or socket): give a file name")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_ino == device.st_ino
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert "is not a regular file (a device, pipe or socket)" in _fails(tiny_models, tmp_path, capsys, [], out=fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    link = tmp_path / "to-folder.png"
    link.symlink_to(folder)
    assert "is a folder" in _fails(tiny_models, tmp_path, capsys, [], out=link)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _fails(tiny_models, tmp_path, capsys, [], out=blocker / "out.png") == (
        f"{blocker / 'out.png'} cannot be written: Not a directory")


def test_out_through_a_symlink_and_a_random_seed_of_the_full_range(tiny_models, tmp_path, capsys, monkeypatch):
    """--out as a link to a file: the link stays, its target gets the PNG. Random seeds use 0..MAX_SEED."""
    import random

    target = tmp_path / "real.png"
    target.write_bytes(b"old content")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    monkeypatch.setattr(random, "randint", lambda low, high: high if (low, high) == (0, MAX_SEED) else 0)
    code = main(["generate", "--prompt", "a cat", "--steps", "1", "--width", "32", "--height", "32",
                 "--models", str(tiny_models), "--out", str(link)])
    assert code == 0, capsys.readouterr().err
    assert link.is_symlink() and os.path.samefile(link, target)
    assert read_record(target).seed == MAX_SEED
    assert f"(seed {MAX_SEED})" in capsys.readouterr().out

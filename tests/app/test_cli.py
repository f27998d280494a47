"""The command line: generate writes a reproducible PNG; bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from app.cli import main
from core.metadata import read_record


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
    rebuilt = record.generation_kwargs()["characters"]
    assert rebuilt[1].mask.weights(2, 4).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_bad_inputs_exit_2_with_one_line(tiny_models, tmp_path, capsys):
    ann = _character(tmp_path, "ann", (220, 40, 40))
    cases = [
        (["--character", str(tmp_path / "missing.png")], "file not found"),
        (["--character", str(ann), "--width", "50"], "width=50"),
        (["--character", str(ann), "--steps", "0"], "num_inference_steps=0"),
        (["--character", f"Ann={ann}", "--mask", "Ann=box:0.5,0.2,0.4,0.9"], "is empty"),
        (["--character", f"Ann={ann}", "--mask", "Ann=box:0,0,1.5,1"], "outside [0, 1]"),
        (["--character", f"Ann={ann}", "--mask", "Ann=left", "--mask", "Ann=right"], "2 masks given for 1"),
        (["--prompt", "[Zed] waves", "--character", f"Ann={ann}"], "no character has that name"),
        (["--character", f"Ann={ann}", "--mask", f"Ann={tmp_path / 'no-mask.png'}"], "no-mask.png cannot be read"),
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

"""generate --regional-text / --description: recorded in the PNG, recalled, bad values in one line before loading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from core.io.metadata import read_record


@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if the command loads models: bad input must be refused first."""
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded for a bad input")
    monkeypatch.setattr("core.loading.loader.load_pipeline", refuse)


def _character(tmp_path, name, colour):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (48, 64), colour).save(path)
    return path


def _args(tmp_path, tiny_models, out, *extra):
    red, blue = _character(tmp_path, "red", (220, 40, 40)), _character(tmp_path, "blue", (40, 40, 220))
    return ["generate", "--prompt", "[Red] and [Blue] walk down a pier", "--character", f"Red={red}",
            "--character", f"Blue={blue}", "--mask", "Red=left", "--mask", "Blue=right", "--steps", "2",
            "--width", "48", "--height", "32", "--seed", "3", "--models", str(tiny_models), "--out", str(out),
            *extra]


def test_descriptions_and_the_setting_are_recorded_and_recalled(tiny_models, tmp_path, capsys):
    out = tmp_path / "on.png"
    assert main(_args(tmp_path, tiny_models, out, "--description", "Red=a red fox in a scarf",
                      "--description", "blue=a tin robot", "--regional-steps", "0.5")) == 0
    printed = capsys.readouterr().out
    assert "regional text" in printed
    record = read_record(out)
    assert [c.description for c in record.characters] == ["a red fox in a scarf", "a tin robot"]
    assert record.regional_text == {"mode": "auto", "steps": 0.5, "blocks": "all", "base_ratio": 0.0}
    again = tmp_path / "again.png"
    assert main(["generate", "--recall", str(out), "--models", str(tiny_models), "--out", str(again)]) == 0
    assert read_record(again).regional_text == record.regional_text
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    off = tmp_path / "off.png"
    assert main(["generate", "--recall", str(out), "--regional-text", "off", "--models", str(tiny_models),
                 "--out", str(off)]) == 0
    assert read_record(off).regional_text["mode"] == "off"
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(off)))


@pytest.mark.parametrize("extra, message", [
    (["--description", "Zed=a cat"], "--description 'Zed=a cat': no character is named 'Zed'"),
    (["--description", "Red"], "--description 'Red': use NAME=TEXT"),
    (["--regional-steps", "2"], "regional text steps 2.0: must be a number from 0 to 1"),
    (["--regional-base-ratio", "-1"], "regional text base ratio -1.0: must be a number from 0 to 1"),
])
def test_bad_values_are_one_line_before_loading(tiny_models, tmp_path, capsys, no_models, extra, message):
    assert main(_args(tmp_path, tiny_models, tmp_path / "x.png", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]

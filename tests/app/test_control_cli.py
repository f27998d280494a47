"""``generate --control KIND:FILE[:SCALE]`` and ``--control-from-photo``: control from the command line, recorded,
saved beside the output and recalled; each bad input with its one-line message; ``plan --controlnet``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from core.io.images import rgb_digest
from core.io.metadata import read_record


@pytest.fixture
def pose_file(tmp_path):
    path = tmp_path / "pose.png"
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8)).save(path)
    return path


def _generate(tiny_models, out, *extra):
    return main(["generate", "--prompt", "a dancer", "--steps", "2", "--seed", "3", "--width", "64", "--height",
                 "64", "--models", str(tiny_models), "--out", str(out), *extra])


def test_control_from_the_command_line_is_recorded_and_recalled(tiny_models, pose_file, tmp_path, capsys):
    out = tmp_path / "out" / "pose.png"
    assert _generate(tiny_models, out, "--control", f"pose:{pose_file}:0.5", "--control-from-photo",
                     f"canny:{pose_file}") == 0
    printed = capsys.readouterr().out
    assert "note: made a canny control image from the photo (64x64)" in printed
    record = read_record(out)
    assert [(c["kind"], c["scale"]) for c in record.control] == [("pose", 0.5), ("canny", 0.7)]
    beside = out.parent / record.control[0]["file"]
    assert rgb_digest(Image.open(beside)) == rgb_digest(Image.open(pose_file).convert("RGB"))
    again = tmp_path / "again.png"
    assert main(["generate", "--recall", str(out), "--models", str(tiny_models), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_a_control_image_of_another_size_is_resized_with_a_note(tiny_models, pose_file, tmp_path, capsys):
    assert _generate(tiny_models, tmp_path / "o.png", "--width", "96", "--control", f"depth:{pose_file}") == 0
    assert "note: the depth control image is 64x64: resized to 96x64 (the output size)" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("scribble:{f}", "error: --control kind 'scribble' unknown: use one of pose, depth, canny, soft-edge, gray"),
    ("pose:{f}:2.5", "error: --control scale '2.5' is out of range: use 0 to 2 (0.3-0.8 usually)"),
    ("pose.png", "error: --control 'pose.png': write KIND:FILE[:SCALE], e.g. pose:pose.png:0.7"),
])
def test_bad_control_specs(tiny_models, pose_file, tmp_path, capsys, spec, message):
    assert _generate(tiny_models, tmp_path / "o.png", "--control", spec.format(f=pose_file)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_no_person_in_the_photo(tiny_models, pose_file, tmp_path, capsys):
    assert _generate(tiny_models, tmp_path / "o.png", "--control-from-photo", f"pose:{pose_file}") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: no person found in the photo for a pose: use a photo with a person clearly visible")


def test_plan_counts_the_controlnet(capsys):
    assert main(["plan", "--vram", "24", "--ram", "64", "--controlnet"]) == 0
    assert "FLUX.1-dev + InstantCharacter + ControlNet (Union-Pro-2.0)" in capsys.readouterr().out

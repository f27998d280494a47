"""``--adapter FILE``: a trained image adapter in ``generate`` (changes the image, recorded by name and SHA-256,
no path), declared once for ``generate``, ``story render``, ``eval`` and ``bench``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import build_parser, main
from core.io.metadata import read_record
from core.io.paths import sha256_file


@pytest.fixture(scope="module")
def exported_adapter(tiny_models, tmp_path_factory):
    """The tiny adapter after a (pretend) training step, written by the trainer's own export."""
    from core.loading.sources import ModelSources
    from core.models.pipeline import InstantCharacterPipeline
    from trainer.checkpoints import export_adapter
    from trainer.config import ObjectiveConfig
    from trainer.objective import build_training_model

    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse(str(tiny_models)), dtype=torch.float32,
                                                    progress=False)
    model = build_training_model(pipe, ["image_adapter"], ObjectiveConfig(), fresh=False, seed=0)
    with torch.no_grad():
        for p in model.parts["image_adapter"].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    folder = tmp_path_factory.mktemp("run")
    return export_adapter(folder / "adapter", model, {"source": "test"})[0]


def test_generate_with_an_exported_adapter_changes_the_image_and_records_it(tiny_models, exported_adapter,
                                                                             tmp_path, capsys):
    character = tmp_path / "ann.png"
    Image.new("RGB", (48, 64), (220, 40, 40)).save(character)
    common = ["generate", "--prompt", "a photo of [ann]", "--character", f"ann={character}", "--steps", "2",
              "--width", "32", "--height", "32", "--seed", "3", "--models", str(tiny_models)]
    assert main(common + ["--out", str(tmp_path / "own.png")]) == 0
    assert main(common + ["--adapter", str(exported_adapter), "--out", str(tmp_path / "trained.png")]) == 0
    own, trained = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("own", "trained"))
    assert np.abs(own - trained).max() > 0
    record = read_record(tmp_path / "trained.png")
    assert record.models["adapter"] == "adapter.safetensors"
    assert record.models["adapter_sha256"] == sha256_file(exported_adapter)
    assert str(exported_adapter.parent) not in json.dumps(record.models)  # a name, not a path of this machine
    # the record makes the same image again (the adapter given again, as its file is not in the PNG)
    capsys.readouterr()
    assert main(["generate", "--recall", str(tmp_path / "trained.png"), "--models", str(tiny_models),
                 "--adapter", str(exported_adapter), "--out", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")).astype(int), trained)


def test_a_missing_adapter_file_is_one_line(tiny_models, tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--models", str(tiny_models), "--adapter", str(tmp_path / "no.safetensors"),
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: adapter file not found: {tmp_path / 'no.safetensors'}"
    (tmp_path / "notes.txt").write_text("x")
    assert main(["generate", "--prompt", "x", "--models", str(tiny_models), "--adapter", str(tmp_path / "notes.txt"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "use a .safetensors or .bin adapter" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate"], ["story", "render", "s.story"], ["eval", "bench"], ["bench"]])
def test_every_command_that_renders_takes_adapter(command):
    parser = build_parser()
    extra = {"generate": ["--out", "x.png"], "story": ["--out", "o"]}.get(command[0], [])
    args = parser.parse_args(command + extra + ["--adapter", "runs/a/adapter.safetensors"])
    assert args.adapter == "runs/a/adapter.safetensors"

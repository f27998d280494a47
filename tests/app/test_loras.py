"""Style LoRAs on the tiny pipeline: they change the image, are recorded, and unloading restores the base exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.loading.loras import LoadedLoras, LoraError, StyleLora, parse_rows, with_triggers

peft = pytest.importorskip("peft", reason="style LoRAs need peft")


def _image(pipe) -> np.ndarray:
    return pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator("cpu").manual_seed(3)).images


def test_unloading_restores_base_weights_exactly(tiny_pipe, tiny_lora):
    base_weights = {k: v.clone() for k, v in tiny_pipe.transformer.state_dict().items()}
    base = _image(tiny_pipe)
    loras = LoadedLoras()
    loras.apply(tiny_pipe, [StyleLora(str(tiny_lora), 0.8)])
    styled = _image(tiny_pipe)
    assert np.abs(styled - base).max() > 1e-4
    loras.apply(tiny_pipe, [StyleLora(str(tiny_lora), 0.0)])  # weight 0 switches it off without unloading
    np.testing.assert_allclose(_image(tiny_pipe), base, atol=1e-6)
    loras.apply(tiny_pipe, [])
    after = tiny_pipe.transformer.state_dict()
    assert after.keys() == base_weights.keys()
    assert all(torch.equal(after[k], base_weights[k]) for k in base_weights)
    assert np.array_equal(_image(tiny_pipe), base)


def test_lora_rows_and_triggers(tiny_lora):
    loras = parse_rows([[str(tiny_lora), 0.7, "ghibli style"], ["", 1.0, ""], [None, None, None]])
    assert loras == [StyleLora(str(tiny_lora), 0.7, "ghibli style")]
    assert with_triggers("[Mia] in a forest", loras) == "ghibli style, [Mia] in a forest"
    assert with_triggers("Ghibli style, [Mia]", loras) == "Ghibli style, [Mia]"
    with pytest.raises(LoraError, match="weight 3 is outside -2 to 2"):
        parse_rows([[str(tiny_lora), 3, ""]])
    with pytest.raises(LoraError, match="only .safetensors files"):
        parse_rows([[__file__, 1, ""]])
    with pytest.raises(LoraError, match="listed twice"):
        parse_rows([[str(tiny_lora), 1, ""], [str(tiny_lora), 0.5, ""]])


def test_lora_is_recorded_and_recalled(tiny_models, tiny_lora, tmp_path, character_files):
    from app.context import StudioContext, StudioSettings
    from app.generation import CharacterSlot, build_request, generate
    from app.tabs.generate_events import RECALL_FIELDS, GenerateEvents
    from core.io.metadata import read_record

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path))
    fields = dict(prompt="[Mia] waves", steps=1, width=32, height=32, seed=5,
                  loras=[StyleLora(str(tiny_lora), 0.6, "ghibli")])
    result = generate(ctx, *build_request([CharacterSlot(str(character_files[0]), "Mia")], None, fields))
    record = read_record(result.paths[0])
    assert record.loras == [{"source": str(tiny_lora), "weight": 0.6, "trigger": "ghibli"}]
    recalled = dict(zip(RECALL_FIELDS, GenerateEvents(ctx).recall(result.paths[0])))
    assert (recalled["lora1_source"], recalled["lora1_weight"], recalled["lora1_trigger"]) == (str(tiny_lora), 0.6,
                                                                                               "ghibli")


def test_studio_lora_files_only_from_its_folders(tiny_lora, tmp_path):
    from app.context import StudioContext, StudioSettings
    from core.io.path_policy import PathNotAllowedError

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    for source in (str(tiny_lora), "/etc/passwd", "../../../etc/x.safetensors"):
        with pytest.raises(PathNotAllowedError, match="LoRA file .* is outside the folders"):
            parse_rows([[source, 1.0, ""]], ctx.paths)
    from core.io.paths import data_dir

    inside = data_dir("loras") / "style.safetensors"
    inside.write_bytes(tiny_lora.read_bytes())
    assert parse_rows([["style.safetensors", 0.5, ""]], ctx.paths)[0].weight == 0.5


def test_a_studio_png_with_a_lora_regenerates_from_the_cli(tiny_models, tiny_lora, tmp_path, character_files,
                                                           capsys):
    """The studio's PNG records the LoRA; `generate --recall PNG` says it will load it, needs --trust-recall for a
    LoRA outside the PNG's folder (issue 21, row 8), and makes the same image with the LoRA applied."""
    from PIL import Image

    from app.cli import main
    from app.context import StudioContext, StudioSettings
    from app.generation import CharacterSlot, build_request, generate
    from core.io.metadata import read_record

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    fields = dict(prompt="[Mia] waves", steps=2, width=32, height=32, seed=11,
                  loras=[StyleLora(str(tiny_lora), 0.8, "ghibli")])
    studio_png = generate(ctx, *build_request([CharacterSlot(str(character_files[0]), "Mia")], None,
                                              fields)).paths[0]
    again, plain = tmp_path / "again.png", tmp_path / "plain.png"
    capsys.readouterr()
    assert main(["generate", "--recall", studio_png, "--models", "tiny", "--out", str(again)]) != 0
    out, err = capsys.readouterr()
    assert f"recall: loads the LoRA {tiny_lora} (outside the PNG's folder)" in out
    assert (f"--recall {studio_png} names the LoRA {tiny_lora}, outside the PNG's folder: check it, then add "
            "--trust-recall to load it") in err
    assert not again.exists()
    assert main(["generate", "--recall", studio_png, "--trust-recall", "--models", "tiny", "--out", str(again)]) == 0
    assert read_record(again).loras == [{"source": str(tiny_lora), "weight": 0.8, "trigger": "ghibli"}]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(studio_png)))
    # without the LoRA the same settings give another image: the CLI really applied it
    record = read_record(studio_png)
    assert main(["generate", "--recall", studio_png, "--trust-recall", "--models", "tiny", "--lora", f"{tiny_lora}:0",
                 "--out", str(plain)]) == 0
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(studio_png)))
    assert record.seed == read_record(plain).seed == 11

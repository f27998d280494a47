"""Style LoRAs on the tiny pipeline: they change the image, are recorded, and unloading restores the base exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.loading.loras import LoadedLoras, LoraError, StyleLora, parse_rows, with_triggers

peft = pytest.importorskip("peft", reason="style LoRAs need peft")


@pytest.fixture(scope="module")
def tiny_lora(tiny_models, tmp_path_factory):
    """A random LoRA for the tiny transformer, made with peft and saved with diffusers' LoRA saver."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(tiny_models / "flux" / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name="style.safetensors")
    return folder / "style.safetensors"


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
    from app.generation import CharacterSlot, GenerationSettings, generate
    from app.tabs.generate_events import RECALL_FIELDS, GenerateEvents
    from core.io.metadata import read_record

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path))
    settings = GenerationSettings("[Mia] waves", steps=1, width=32, height=32, seed=5, randomize_seed=False,
                                  loras=[StyleLora(str(tiny_lora), 0.6, "ghibli")])
    result = generate(ctx, [CharacterSlot(str(character_files[0]), "Mia")], None, settings)
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


def test_a_studio_png_with_a_lora_regenerates_from_the_cli(tiny_models, tiny_lora, tmp_path, character_files):
    """The studio's PNG records the LoRA; `generate --recall PNG` makes the same image with the LoRA applied."""
    from PIL import Image

    from app.cli import main
    from app.context import StudioContext, StudioSettings
    from app.generation import CharacterSlot, GenerationSettings, generate
    from core.io.metadata import read_record

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    settings = GenerationSettings("[Mia] waves", steps=2, width=32, height=32, seed=11, randomize_seed=False,
                                  loras=[StyleLora(str(tiny_lora), 0.8, "ghibli")])
    studio_png = generate(ctx, [CharacterSlot(str(character_files[0]), "Mia")], None, settings).paths[0]
    again, plain = tmp_path / "again.png", tmp_path / "plain.png"
    assert main(["generate", "--recall", studio_png, "--models", "tiny", "--out", str(again)]) == 0
    assert read_record(again).loras == [{"source": str(tiny_lora), "weight": 0.8, "trigger": "ghibli"}]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(studio_png)))
    # without the LoRA the same settings give another image: the CLI really applied it
    record = read_record(studio_png)
    assert main(["generate", "--recall", studio_png, "--models", "tiny", "--lora", f"{tiny_lora}:0",
                 "--out", str(plain)]) == 0
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(studio_png)))
    assert record.seed == read_record(plain).seed == 11

"""Single-file FLUX transformers (BFL-format safetensors in float32 / fp8, GGUF Q8_0) on the tiny models.

The files are written by the test in the layout people's files have (BFL keys, ``double_blocks.0.img_attn.qkv``;
city96-style GGUF with quantized 2-D weights), put into a models directory's ``flux/`` or given as ``--base``, and
must make the image the diffusers folder makes: the float32 file with the folder's exact weights and within float32
rounding, fp8 and Q8_0 within quantization tolerance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine import Engine
from core.loading.single_file import (SingleFileError, find_transformer_file, inspect_transformer_file,
                                      load_transformer_file, write_transformer_file)
from core.loading.sources import ModelSourceError, ModelSources
from core.request import GenerationRequest


@pytest.fixture(scope="module")
def tiny_transformer(tiny_models):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(Path(tiny_models) / "flux", subfolder="transformer")


@pytest.fixture(scope="module")
def files(tiny_transformer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("transformer-files")
    return {
        "f32": write_transformer_file(tiny_transformer, folder / "flux1-tiny.safetensors"),
        "fp8": write_transformer_file(tiny_transformer, folder / "flux1-tiny-fp8.safetensors",
                                      dtype=torch.float8_e4m3fn),
        "q8": write_transformer_file(tiny_transformer, folder / "flux1-tiny-Q8_0.gguf", gguf_type="Q8_0"),
    }


def _models_dir_with(tiny_models, file: Path, tmp_path: Path) -> Path:
    """A copy of the tiny models directory whose flux/ holds ``file`` and no transformer weights (config only)."""
    target = tmp_path / "models"
    shutil.copytree(tiny_models, target, ignore=shutil.ignore_patterns("metrics"))
    for weights in (target / "flux" / "transformer").glob("*.safetensors"):
        weights.unlink()
    shutil.copy(file, target / "flux" / file.name)
    return target


def _image(engine: Engine) -> np.ndarray:
    request = GenerationRequest("a fox on a hill", steps=2, width=64, height=64, seed=7)
    result = engine.generate(request, pipeline_options={"output_type": "np"})
    return np.asarray(result.images[0], dtype=np.float64)


@pytest.fixture(scope="module")
def folder_image(tiny_models):
    return _image(Engine(str(tiny_models), preset="full", device="cpu"))


def test_headers_give_format_layout_and_real_size(files):
    f32, fp8, q8 = (inspect_transformer_file(files[k]) for k in ("f32", "fp8", "q8"))
    assert (f32.format, f32.layout, f32.dtypes) == ("safetensors", "bfl", frozenset({"F32"}))
    assert fp8.dtypes == frozenset({"F8_E4M3", "BF16"}) and fp8.tensor_bytes < f32.tensor_bytes / 3
    assert q8.format == "gguf" and q8.quantized and "Q8_0" in q8.dtypes
    assert q8.tensor_bytes < f32.tensor_bytes / 3  # 34 bytes per 32 weights against 128
    assert q8.weight_files().transformer_bytes == q8.tensor_bytes  # the planner counts the quantized bytes
    assert f32.weight_files().transformer_bytes is None  # a safetensors file loads to the compute dtype


# The float32 file holds the folder's weights bit for bit (checked below), but memory-mapped from the file at other
# byte offsets: the CPU kernels take another vectorized path for tensors aligned differently (cloning the parameters
# makes the outputs equal again), so float32 rounding, about 1e-6 on [0, 1] pixels after 2 steps, is allowed with a
# margin (1e-5). fp8 and Q8_0 allow their quantization error.
@pytest.mark.parametrize("kind, tolerance", [("f32", 1e-5), ("fp8", 0.08), ("q8", 0.02)])
def test_a_file_in_the_models_directory_makes_the_folder_image(kind, tolerance, files, tiny_models, folder_image,
                                                                tmp_path):
    models = _models_dir_with(tiny_models, files[kind], tmp_path)
    assert ModelSources.from_models_dir(models).transformer == str(models / "flux" / files[kind].name)
    image = _image(Engine(str(models), preset="full", device="cpu"))
    difference = float(np.abs(image - folder_image).max())
    print(f"\n{kind} file vs diffusers folder, 64x64, 2 steps: max |difference| {difference:.4f}")
    assert difference <= tolerance


def test_the_float32_file_holds_the_folder_weights_exactly(files, tiny_transformer, tiny_models):
    """Renaming and slicing change no value: the same numbers, compared exactly."""
    loaded = load_transformer_file(files["f32"], torch.float32, Path(tiny_models) / "flux").state_dict()
    expected = tiny_transformer.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_base_file_overrides_the_folder_transformer(files, tiny_models, folder_image):
    sources = ModelSources.parse(str(tiny_models)).with_base(str(files["q8"]))
    assert sources.transformer == str(files["q8"]) and sources.base.endswith("flux")
    engine = Engine(str(tiny_models), sources=sources, preset="full", device="cpu")
    image = _image(engine)
    assert float(np.abs(image - folder_image).max()) <= 0.02
    assert type(engine.pipe.transformer.transformer_blocks[0].ff.net[2].weight).__name__ == "GGUFParameter"


def test_gguf_transformer_under_the_fp8_preset_stays_gguf(files, tiny_models, folder_image):
    sources = ModelSources.parse(str(tiny_models)).with_base(str(files["q8"]))
    engine = Engine(str(tiny_models), sources=sources, preset="fp8", device="cpu")
    image = _image(engine)
    assert any("transformer kept as loaded (gguf)" in s for s in engine.steps)
    assert any("text_encoder_2 stored in fp8" in s for s in engine.steps)
    assert float(np.abs(image - folder_image).max()) <= 0.1


def test_wrong_and_corrupt_files_are_named(tmp_path, files):
    truncated = tmp_path / "flux1-dev.safetensors"
    truncated.write_bytes(Path(files["f32"]).read_bytes()[:100_000])
    with pytest.raises(SingleFileError, match=r"flux1-dev\.safetensors is truncated"):
        inspect_transformer_file(truncated)
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(SingleFileError, match=r"model\.safetensors is not a valid safetensors file"):
        inspect_transformer_file(garbage)
    bad_gguf = tmp_path / "flux1-dev-Q4_K_S.gguf"
    bad_gguf.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(SingleFileError, match=r"flux1-dev-Q4_K_S\.gguf is not a valid GGUF file"):
        inspect_transformer_file(bad_gguf)
    from safetensors.torch import save_file

    other = tmp_path / "sdxl.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(SingleFileError, match=r"sdxl\.safetensors is not a FLUX\.1 transformer"):
        inspect_transformer_file(other)
    with pytest.raises(ModelSourceError, match="transformer file not found"):
        ModelSources().with_base(str(tmp_path / "missing.gguf"))
    for error in (SingleFileError,):
        assert issubclass(error, ModelSourceError)


def test_a_file_that_does_not_match_the_config_is_named(tmp_path, tiny_transformer):
    from core.loading.single_file import load_transformer_file

    path = write_transformer_file(tiny_transformer, tmp_path / "tiny.safetensors")
    # no base folder: the bundled full-size FLUX.1-dev config, which the tiny file does not match
    with pytest.raises(SingleFileError, match=r"cannot load the FLUX transformer from .*tiny\.safetensors"):
        load_transformer_file(path, torch.float32, None)


def test_two_files_in_flux_are_ambiguous(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(SingleFileError, match="several transformer files"):
        find_transformer_file(tmp_path)


def test_generate_command_takes_a_base_file(files, tiny_models, tmp_path, capsys):
    from PIL import Image

    from app.cli import main

    common = ["generate", "--prompt", "a fox", "--steps", "2", "--width", "32", "--height", "32", "--seed", "3",
              "--models", str(tiny_models), "--preset", "full"]
    assert main(common + ["--out", str(tmp_path / "folder.png")]) == 0
    assert main(common + ["--base", str(files["f32"]), "--out", str(tmp_path / "file.png")]) == 0
    folder, file = (np.asarray(Image.open(tmp_path / n)) for n in ("folder.png", "file.png"))
    # the float32 file is the folder's transformer bit for bit, but its tensors lie at other memory alignments (see
    # above): float32 rounding (about 1e-6) can move a pixel across a rounding boundary of the 8-bit PNG: one level
    assert int(np.abs(folder.astype(int) - file.astype(int)).max()) <= 1
    capsys.readouterr()
    code = main(common + ["--base", str(tmp_path / "nothing.gguf"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "transformer file not found" in err and "nothing.gguf" in err


def test_a_load_that_would_not_fit_ram_is_refused_before_it_starts(files, tiny_models, monkeypatch):
    from core.loading import loader, memory
    from core.loading.memory import RamBudgetError
    from core.loading.loader import check_ram_before_loading, load_pipeline

    sources = ModelSources.parse(str(tiny_models))
    with pytest.raises(RamBudgetError) as info:  # the released adapter alone is 5.2 GiB at bf16
        check_ram_before_loading(sources, memory.get_preset("full"), available_bytes=2 * memory.GiB)
    message = str(info.value)
    assert "needs about 5.2 GiB" in message and "2.0 GiB is available" in message
    assert "swap" in message and "smaller image" not in message and "\n" not in message
    with pytest.raises(RamBudgetError, match="preset 'full' needs about 5.2 GiB"):  # names the one needing less
        memory.check_ram_budget(memory.estimate("balanced"), 20 * memory.GiB)
    # load_pipeline asks before anything loads: on a "cuda" device with 1 GiB free it raises at once
    monkeypatch.setattr(memory, "detect_memory", lambda: memory.DetectedMemory(None, None, 64 * memory.GiB,
                                                                                memory.GiB))
    monkeypatch.setattr(memory, "swap_free_bytes", lambda: 0)
    monkeypatch.setattr(loader, "quantization_config_for", lambda *a, **k: pytest.fail("loading started"))
    with pytest.raises(RamBudgetError, match="1.0 GiB is available"):
        load_pipeline(sources, memory.get_preset("full"), "cuda")
    # a GGUF file: the planner counts its quantized bytes, and the advice does not suggest one
    gguf = sources.with_base(str(files["q8"]))
    with pytest.raises(RamBudgetError) as info:
        check_ram_before_loading(gguf, memory.get_preset("full"), available_bytes=memory.GiB)
    assert "GGUF" not in str(info.value)
    assert check_ram_before_loading(gguf, memory.get_preset("full"), available_bytes=64 * memory.GiB)


def test_png_record_names_the_transformer_file(files, tiny_models):
    sources = ModelSources.parse(str(tiny_models)).with_base(str(files["q8"]))
    engine = Engine(str(tiny_models), sources=sources, preset="full", device="cpu")
    from core.loading.component_files import file_digest

    # the file's name and fingerprint, never its absolute path
    assert engine.provenance()["models"]["transformer"] == {"file": "flux1-tiny-Q8_0.gguf",
                                                            "digest": file_digest(files["q8"])}
    assert "transformer" not in Engine(str(tiny_models), preset="full", device="cpu").provenance()["models"]


def test_auto_counts_a_gguf_transformers_real_size(files, monkeypatch):
    from core.loading import memory
    from core.loading.presets import resolve_preset

    monkeypatch.setattr(memory, "detect_memory", lambda: memory.DetectedMemory(
        26 * memory.GiB, 26 * memory.GiB, 64 * memory.GiB, 60 * memory.GiB))
    folder = ModelSources()
    assert resolve_preset("auto", device="cuda", sources=folder)[0].name == "fp8"  # bf16 22 GiB transformer
    with_file = ModelSources().with_base(str(files["q8"]))
    preset, reason = resolve_preset("auto", device="cuda", sources=lambda: with_file)
    assert preset.name == "full", reason  # the quantized file leaves room for everything on a 26 GB card

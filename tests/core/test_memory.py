"""Memory presets, the planner's estimates, the auto choice, applying a preset and out-of-memory advice."""

import json

import numpy as np
import pytest
import torch

from core.loading import memory
from core.loading.memory import (GiB, MemoryAdviceError, MemoryPreset, choose_preset, estimate, format_plan, get_preset,
                         next_preset, out_of_memory_advice, weight_bytes)
from core.loading.presets import (PresetUnavailableError, apply_offload, apply_preset, check_preset_supported,
                               quantization_config_for)
from core.loading.model_sizes import CONFIG_DIR, adapter_sizes, model_size

# diffusers' quantization-backends benchmark: FLUX.1-dev, 1024x1024, H100, transformer + T5 quantized, no
# offload; peak memory in GiB (labelled GB, see core.loading.memory's docstring).
PUBLISHED_PEAK_GIB = {None: 36.166, "bnb-nf4": 17.281, "bnb-int8": 24.432, "quanto-int8": 21.814,
                      "quanto-fp8": 20.898}


def _plain_flux(quantization):
    return MemoryPreset("published", "plain FLUX.1-dev", transformer_quantization=quantization,
                        text_encoder_quantization=quantization)


def test_parameter_counts_come_from_the_full_size_configs():
    assert model_size("transformer").params == 11_901_408_320
    assert model_size("text_encoder_2").params == 4_762_310_656
    assert model_size("text_encoder").params == 123_060_480
    assert model_size("vae").params == 83_819_683
    t5 = model_size("text_encoder_2")
    assert t5.kept_params == 24 * 4096 * 10240  # T5's wo, which quantizers leave alone
    projector, processors = adapter_sizes()
    assert projector.params == 1_360_116_096
    assert processors.params == 57 * 25_172_224


def test_a_local_config_json_wins_over_the_bundled_one(tmp_path):
    cfg = json.loads((CONFIG_DIR / "flux1-dev-transformer.json").read_text())
    cfg.update(num_layers=1, num_single_layers=1)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(cfg))
    small = model_size("transformer", tmp_path)
    assert small.params < model_size("transformer").params / 20


def test_quantized_bytes_per_parameter():
    lin = torch.nn.Linear(4096, 1024, bias=False)
    from core.loading.model_sizes import size_of_module

    size = size_of_module("x", lin, {})
    n = 4096 * 1024
    assert weight_bytes(size, None) == 2 * n
    assert weight_bytes(size, "bnb-nf4") == n // 2 + n // 64 * 4  # nibbles + float32 absmax per 64
    assert weight_bytes(size, "bnb-int8") == n + 1024 * 4  # int8 + float32 row statistic
    assert weight_bytes(size, "quanto-int8") == n + 1024 * 2  # int8 + bf16 row scale


def test_estimates_match_published_flux_figures_within_15_percent():
    rows = []
    for quant, published in PUBLISHED_PEAK_GIB.items():
        ours = estimate(_plain_flux(quant), 1024, 1024, adapter=False).gpu_peak_gib
        legacy = estimate(_plain_flux(quant), 1024, 1024, adapter=False, bnb_keeps_float32=True).gpu_peak_gib
        rows.append((quant or "bf16", ours, legacy, published))
        # bf16 is the calibration point of the VAE-decode activations, so only the other four are predictions
        assert ours == pytest.approx(published, rel=0.15), quant
        assert legacy == pytest.approx(published, rel=0.05), quant
    print("\n  mode          ours  ours(T5 wo fp32)  published  (GiB)")
    for name, ours, legacy, published in rows:
        print(f"  {name:<12} {ours:5.2f}  {legacy:16.2f}  {published:9.3f}  {100 * (ours / published - 1):+.1f}%")


def test_model_offload_estimate_matches_published_bf16_offload():
    e = estimate(MemoryPreset("x", "", offload="model"), 1024, 1024, adapter=False)
    assert e.gpu_peak_gib == pytest.approx(23.271, rel=0.05)  # calibration point of the transformer activations
    assert e.peak_phase == "denoise"


def test_presets_go_from_best_quality_to_least_memory():
    assert memory.PRESET_ORDER[0] == "full" and set(memory.PRESET_ORDER) == set(memory.MEMORY_PRESETS)
    gpu = {name: estimate(name).gpu_peak_gib for name in memory.PRESET_ORDER}
    ram = {name: estimate(name).ram_needed_gib for name in memory.PRESET_ORDER}
    assert gpu["full"] > gpu["balanced"] > gpu["fp8"] > gpu["fp8-streamed"]
    assert ram["streamed"] < ram["fp8-streamed"] < ram["balanced"] < ram["minimal"]
    assert estimate("low").gpu_peak_gib <= 16  # issue 4's goals
    assert estimate("minimal").gpu_peak_gib <= 10
    assert estimate("balanced", 1024, 1024).gpu_peak_bytes < estimate("balanced", 2048, 2048).gpu_peak_bytes


@pytest.mark.parametrize("vram_gb, expected", [(80, {"full"}), (48, {"full"}), (24, {"fp8"}),
                                               (16, {"fp8-streamed"}), (12, {"fp8-streamed"}), (8, {"fp8-streamed"})])
def test_auto_picks_a_sensible_preset(vram_gb, expected):
    preset, est, reason = choose_preset(vram_gb * GiB, 64 * GiB, 1024, 1024)
    assert preset.name in expected, reason
    assert est.gpu_peak_bytes <= vram_gb * GiB
    assert preset.name in reason


def test_auto_without_a_gpu_says_so_and_avoids_bitsandbytes():
    preset, _, reason = choose_preset(None, 64 * GiB)
    assert "no CUDA GPU" in reason
    preset, _, reason = choose_preset(None, 24 * GiB)
    assert not preset.needs_bitsandbytes, reason


def test_auto_without_bitsandbytes_uses_quanto_or_bf16_group_offload():
    preset, _, _ = choose_preset(12 * GiB, 20 * GiB, bitsandbytes_ok=True)
    assert preset.name == "low" and preset.transformer_quantization == "bnb-nf4"
    preset, _, _ = choose_preset(16 * GiB, 40 * GiB, bitsandbytes_ok=False)  # fp8 needs no bitsandbytes
    assert preset.name == "fp8-streamed"
    preset, est, _ = choose_preset(12 * GiB, 20 * GiB, bitsandbytes_ok=False)  # low's quanto int8 would not fit
    assert preset.name == "streamed" and preset.transformer_quantization is None  # group offload: no quantizer
    assert est.gpu_peak_bytes < 8 * GiB


def test_auto_with_too_little_ram_says_what_is_short():
    preset, _, reason = choose_preset(8 * GiB, 4 * GiB)
    assert preset.name == "streamed" and "short of system RAM" in reason
    assert "swap" in reason and "smaller image" not in reason
    assert "GGUF" not in reason  # streaming from disk already keeps the transformer out of RAM: no file helps
    preset, _, reason = choose_preset(8 * GiB, 8 * GiB)  # from disk, an 8 GB box fits in 8 GB of RAM
    assert preset.name == "streamed" and "nothing fits" not in reason
    preset, _, reason = choose_preset(3 * GiB, 64 * GiB)
    assert "short of GPU memory" in reason and "smaller image" in reason


def test_format_plan_lists_every_preset_and_the_choice():
    text = format_plan(vram_gb=24, ram_gb=64, width=1024, height=1024, detect=False)
    print("\n" + text)
    for name in memory.PRESET_ORDER:
        assert f" {name} " in text
    assert "auto -> fp8:" in text and "GiB" in text
    assert "no GPU" in format_plan(ram_gb=64, detect=False)


def test_detect_memory_reports_ram():
    found = memory.detect_memory()
    assert found.ram_total_bytes and found.ram_total_bytes > GiB
    if not torch.cuda.is_available():
        assert found.vram_total_bytes is None


def test_next_preset_walks_down_and_keeps_the_backend():
    assert next_preset("full").name == "balanced"
    assert next_preset("balanced").name == "fp8"
    assert next_preset("fp8-streamed") is None and next_preset("streamed") is None  # nothing needs less GPU
    assert next_preset(get_preset("full")).transformer_quantization is None
    assert next_preset("low", bitsandbytes_ok=False).name == "streamed"
    assert next_preset(get_preset("low", "quanto-int8")).transformer_quantization is None  # bf16 group offload
    assert next_preset("full", vram_bytes=12 * GiB, bitsandbytes_ok=True).name == "minimal"  # fp8 would not fit


def test_out_of_memory_is_turned_into_advice_and_memory_is_freed(monkeypatch):
    freed = []
    monkeypatch.setattr(memory, "free_memory", lambda: freed.append(True))
    with pytest.raises(MemoryAdviceError) as info:
        with out_of_memory_advice("full"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert freed == [True]
    assert info.value.next_preset == "balanced"
    assert "'balanced'" in str(info.value) and "\n" not in str(info.value)
    with out_of_memory_advice("full"):  # the next request still works
        pass
    with pytest.raises(MemoryAdviceError, match="smallest"):
        with out_of_memory_advice("fp8-streamed"):
            raise torch.cuda.OutOfMemoryError("injected")
    with pytest.raises(ValueError):  # other errors pass through untouched
        with out_of_memory_advice("full"):
            raise ValueError("not memory")


def test_bitsandbytes_presets_name_the_quanto_alternative_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PresetUnavailableError, match="quanto-int8"):
        check_preset_supported(get_preset("low"), "cpu")
    assert quantization_config_for("minimal", "cpu") is None  # bf16 group offloading: no bitsandbytes
    assert quantization_config_for("balanced", "cpu") is None
    assert quantization_config_for(get_preset("low", "quanto-int8"), "cpu") is None
    check_preset_supported(get_preset("low", "quanto-int8"), "cpu")


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="preset"):
        get_preset("tiny")
    with pytest.raises(ValueError, match="quantization"):
        MemoryPreset("x", "", transformer_quantization="int3")
    with pytest.raises(ValueError, match="cannot move quantized weights"):
        MemoryPreset("x", "", transformer_quantization="quanto-int8", offload="group")


def _tiny_pipe(golden_dir):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(golden_dir / "bundle" / "flux", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe):
    return pipe("a red fox", height=64, width=64, num_inference_steps=2, guidance_scale=3.5,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_quanto_int8_preset_runs_end_to_end_close_to_float32(golden_dir):
    pipe = _tiny_pipe(golden_dir)
    reference = _generate(pipe)
    steps = apply_preset(pipe, get_preset("low", quantization="quanto-int8"), "cpu")
    assert "transformer quantized to quanto-int8" in steps
    assert type(pipe.transformer.transformer_blocks[0].ff.net[2]).__name__ == "QLinear"
    assert type(pipe.text_encoder_2.encoder.block[0].layer[1].DenseReluDense.wo) is torch.nn.Linear  # kept
    quantized = _generate(pipe)
    psnr = _psnr(quantized, reference)
    print(f"\nquanto int8 vs float32, tiny FLUX pipeline, 64x64, 2 steps: PSNR {psnr:.1f} dB")
    assert psnr > 35


@pytest.mark.slow
def test_group_offloading_and_vae_tiling_apply_through_diffusers(golden_dir):
    pipe = _tiny_pipe(golden_dir)
    reference = _generate(pipe)
    assert get_preset("minimal", quantization="quanto-int8").transformer_quantization is None
    apply_preset(pipe, get_preset("minimal", quantization="quanto-int8"), "cpu")
    steps = apply_offload(pipe, "group", "cpu", group_min_bytes=0)  # exercise the hooks on the CPU
    assert "transformer group offload (block_level)" in steps
    assert pipe.vae.use_tiling
    assert _psnr(_generate(pipe), reference) > 35

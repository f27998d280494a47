"""Peak RSS while loading a quantized transformer stays near its quantized size, not its full-precision size.

A scaled-down FLUX transformer (width 768, ~300 MB in float32) is written as a BFL float32 safetensors file and as a
GGUF Q8_0 file; each is loaded in a fresh process (``load_transformer_file``), which reports how far its peak RSS
(``VmHWM``) rose above its RSS before loading. The GGUF's weights stay quantized (memory-mapped, dequantized layer
by layer when run), so its rise is about its file, a quarter of the float32 one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

WIDE = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=6, attention_head_dim=64,
            num_attention_heads=12, joint_attention_dim=768, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=[8, 28, 28])

# Libraries are imported before the baseline; after loading, one byte of every page of every weight is read
# (what moving the model to a GPU or running it does), so memory-mapped weights count too.
MEASURE = textwrap.dedent("""
    import json, sys
    import torch, gguf, diffusers
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from core.loading.single_file import load_transformer_file

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    before = status("VmRSS")
    model = load_transformer_file(sys.argv[1], torch.float32, sys.argv[2])
    touched = 0
    for p in model.parameters():
        data = p.as_tensor() if hasattr(p, "quant_type") else p.detach()
        touched += int(data.reshape(-1).view(torch.uint8)[::4096].sum())
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"rise": status("VmHWM") - before, "params": params,
                      "quantized": type(model.transformer_blocks[0].ff.net[2].weight).__name__}))
""")


def _peak_rise(path, base) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(base)], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_loading_a_gguf_transformer_peaks_near_its_quantized_size(tmp_path):
    import torch
    from diffusers import FluxTransformer2DModel

    from core.loading.single_file import inspect_transformer_file, write_transformer_file

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**WIDE)
    base = tmp_path / "flux"
    model.save_config(base / "transformer")
    f32 = write_transformer_file(model, tmp_path / "wide.safetensors")
    q8 = write_transformer_file(model, tmp_path / "wide-Q8_0.gguf", gguf_type="Q8_0")
    del model
    f32_bytes, q8_bytes = (inspect_transformer_file(p).tensor_bytes for p in (f32, q8))
    assert f32_bytes > 250e6 and q8_bytes < 0.3 * f32_bytes

    full, quantized = _peak_rise(f32, base), _peak_rise(q8, base)
    MB = 1e6
    print(f"\nwide FLUX transformer ({full['params'] / 1e6:.0f} M parameters): float32 file {f32_bytes / MB:.0f} MB, "
          f"peak RSS rise {full['rise'] / MB:.0f} MB; GGUF Q8_0 file {q8_bytes / MB:.0f} MB, peak RSS rise "
          f"{quantized['rise'] / MB:.0f} MB")
    assert quantized["quantized"] == "GGUFParameter"
    assert quantized["rise"] < 1.25 * q8_bytes + 30 * MB  # near the quantized size...
    assert quantized["rise"] < 0.4 * full["rise"]  # ...and far from the float32 one
    assert full["rise"] > 0.8 * f32_bytes  # (the measurement sees a model's weights)


CAST = textwrap.dedent("""
    import json, sys
    import torch, diffusers
    from diffusers import FluxTransformer2DModel
    from diffusers.hooks import apply_layerwise_casting
    from core.loading.quantization.fp8_layerwise import cast_layerwise_fp8

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    anon = status("RssAnon")
    model = FluxTransformer2DModel.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
    loaded = status("RssAnon") - anon
    cast_layerwise_fp8(model, torch.bfloat16)
    fp8 = sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    print(json.dumps({"anon_loaded": loaded, "anon_cast": status("RssAnon") - anon, "fp8_params": fp8,
                      "params": sum(p.numel() for p in model.parameters())}))
""")


@pytest.mark.slow
def test_fp8_casting_holds_the_weights_in_process_memory_at_one_byte(tmp_path):
    """The fp8 presets load a bf16 folder memory-mapped and cast layer by layer: what the process holds
    (``RssAnon``; the bf16 pages are the file's, dropped under pressure) is about one byte per weight."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    FluxTransformer2DModel(**WIDE).to(torch.bfloat16).save_pretrained(tmp_path / "transformer")
    out = subprocess.run([sys.executable, "-c", CAST, str(tmp_path / "transformer")], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    MB = 1e6
    print(f"\nwide FLUX transformer, bf16 folder ({2 * r['params'] / MB:.0f} MB): process memory after loading "
          f"{r['anon_loaded'] / MB:.0f} MB, after fp8 casting {r['anon_cast'] / MB:.0f} MB "
          f"({r['fp8_params'] / MB:.0f} M weights in fp8)")
    # the AdaLN modulation (norm1.linear, ...) stays bf16 as diffusers' skip patterns say, still file pages
    assert r["fp8_params"] > 0.7 * r["params"]
    assert r["anon_cast"] < 1.25 * r["fp8_params"] + 40 * MB  # ~1 byte per cast weight, not the 2 of bf16

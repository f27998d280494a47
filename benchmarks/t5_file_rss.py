"""Peak RSS while loading a T5-XXL-shaped encoder from an fp8 ``t5xxl_fp8_e4m3fn``-style file (scaled down).

``python -m benchmarks.t5_file_rss [--layers 8] [--dtype bfloat16]``: builds a T5 encoder of T5-XXL's vocabulary
and head layout at a smaller width, writes it as transformers' own reverse conversion with 2-D weights in
float8_e4m3fn (as the fp8 files store them), then loads it in a fresh process through
:func:`core.loading.component_files.load_part` and prints the file's size, the RSS before loading and the peak RSS
while loading (Linux's ``VmHWM``, reset just before through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _build(folder: Path, layers: int) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel
    from transformers.core_model_loading import revert_weight_conversion

    config = T5Config(vocab_size=32128, d_model=1024, d_ff=2816, d_kv=64, num_layers=layers, num_heads=16,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = T5EncoderModel(config).eval()
    (folder / "text_encoder_2").mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder / "text_encoder_2")
    sd = dict(revert_weight_conversion(model, model.state_dict()))
    sd.pop("encoder.embed_tokens.weight", None)
    sd = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.to(torch.float16)).contiguous() for k, v in sd.items()}
    path = folder / "t5xxl_fp8_e4m3fn.safetensors"
    save_file(sd, str(path))
    return path


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS: now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":"))) * 1024


def _load(folder: str, path: str, dtype: str) -> None:
    import torch

    from diffusers import AutoencoderKL  # noqa: F401 - the libraries imported before measuring
    from diffusers.loaders.single_file_utils import create_diffusers_t5_model_from_checkpoint  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    from core.loading.component_files import inspect_file, load_part

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets the peak (VmHWM) to the current RSS
        f.write("5")
    now = _status("VmRSS")
    model = load_part(inspect_file(path), "text_encoder_2", getattr(torch, dtype), folder)
    after = _status("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "peak_before": before, "peak_after": after, "rss_before": now,
                      "loaded_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        _load(*args.load, args.dtype)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = _build(Path(tmp), args.layers)
        out = subprocess.run([sys.executable, "-m", "benchmarks.t5_file_rss", "--dtype", args.dtype, "--load", tmp,
                              str(path)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        mb = 2**20
        print(f"T5 encoder, {r['params'] / 1e6:.0f} M parameters; fp8 file {path.stat().st_size / mb:.0f} MiB; "
              f"loaded as {args.dtype}: {r['loaded_bytes'] / mb:.0f} MiB; RSS {r['rss_before'] / mb:.0f} MiB before "
              f"loading (the peak reset there), peak {r['peak_after'] / mb:.0f} MiB while loading: "
              f"+{(r['peak_after'] - r['rss_before']) / mb:.0f} MiB")


if __name__ == "__main__":
    main()

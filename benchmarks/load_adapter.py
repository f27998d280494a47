"""Load time of the released adapter format (a ``torch.save`` pickle, ``.bin``) against the cached safetensors copy.

Writes a random adapter checkpoint with the released key layout (all 577 keys: the projector's 4+4 blocks and
4-layer resampler, 57 attention processors) at reduced widths (about 400 M parameters, 0.8 GB in bf16, about
1/7 of the released 2.79 B), as a ``torch.save`` pickle like the released file. Then it times:

* ``torch.load(weights_only=True)`` of the ``.bin`` alone;
* ``core.loading.checkpoint.read_adapter`` on first use: the ``.bin`` read plus the conversion to the cached safetensors;
* ``read_adapter`` afterwards: the cached safetensors read.

Each read is timed alone and followed by one copy of every tensor (safetensors maps the file lazily, so its
bare read costs almost nothing; the copy is what loading into modules pays at least).

Run from the repository root: ``python benchmarks/load_adapter.py [--folder DIR] [--repeats N]``. The files are
read warm (in the page cache) after one untimed read, so the figures compare parsing, not the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Released widths: projector inner 2688, resampler 1280, tokens 4096, FLUX attention 3072 (head 128).
SCALED_WIDTHS = dict(inner_dim=1024, resampler_dim=512, output_dim=1536, attention_width=1152)


def random_adapter_state(seed: int = 0, dtype: torch.dtype = torch.bfloat16, **widths) -> dict[str, dict]:
    """``{"image_proj": ..., "ip_adapter": ...}`` of random tensors in the released layout at ``widths``."""
    from core.models.attention import CharacterAttentionLayers
    from core.models.projector import CharacterProjector, ProjectorConfig

    w = {**SCALED_WIDTHS, **widths}
    with torch.device("meta"):
        projector = CharacterProjector(ProjectorConfig(inner_dim=w["inner_dim"], resampler_dim=w["resampler_dim"],
                                                       output_dim=w["output_dim"]))
        layers = CharacterAttentionLayers(57, w["attention_width"], w["output_dim"], 128)
    generator = torch.Generator().manual_seed(seed)

    def fill(module):
        return {k: torch.randn(v.shape, generator=generator, dtype=torch.float32).to(dtype)
                for k, v in module.state_dict().items()}

    return {"image_proj": fill(projector), "ip_adapter": fill(layers)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _copy_all(groups) -> None:
    """One copy of every tensor: what loading into modules costs at least (safetensors maps lazily)."""
    for group in groups:
        for tensor in group.values():
            tensor.clone()


def bench_load(path: Path, repeats: int = 3) -> dict:
    """Times (seconds, median of ``repeats``) of reading ``path`` each way, alone and with one copy of every tensor.

    The safetensors copy lives under ``INSTANTCHARACTER_HOME``. ``safetensors.load_file`` maps the file lazily,
    so "read" alone flatters it; "read + copy" is the fair comparison.
    """
    from core.loading.checkpoint import _bin_cache_path, read_adapter

    def bin_read():
        return torch.load(path, map_location="cpu", weights_only=True)

    def cached_read():
        w = read_adapter(path)
        return {"image_proj": w.image_proj, "ip_adapter": w.ip_adapter}

    bin_read()  # untimed: brings the file into the page cache
    cached = _bin_cache_path(path)
    cached.unlink(missing_ok=True)
    first = _timed(lambda: read_adapter(path))
    assert cached.is_file()

    def median(fn):
        return statistics.median(_timed(fn) for _ in range(repeats))

    return {"bin_read_s": median(bin_read), "cached_read_s": median(cached_read),
            "bin_read_copy_s": median(lambda: _copy_all(bin_read().values())),
            "cached_read_copy_s": median(lambda: _copy_all(cached_read().values())),
            "first_read_adapter_s": first,
            "bin_bytes": path.stat().st_size, "safetensors_bytes": cached.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None, help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["INSTANTCHARACTER_HOME"] = str(folder / "home")  # keep the safetensors copy out of the user cache
        path = folder / "instantcharacter_ip-adapter.bin"
        state = random_adapter_state()
        params = sum(t.numel() for group in state.values() for t in group.values())
        keys = sum(len(group) for group in state.values())
        torch.save(state, path)
        del state
        r = bench_load(path, args.repeats)
        print(f"random adapter, released key layout ({keys} keys), {params / 1e6:.0f} M parameters, bf16: "
              f".bin {r['bin_bytes'] / 1e9:.2f} GB, safetensors {r['safetensors_bytes'] / 1e9:.2f} GB "
              f"(files in the page cache; median of {args.repeats})")
        rows = [("torch.load of the .bin (weights_only)", r["bin_read_s"], r["bin_read_copy_s"]),
                ("read_adapter, cached safetensors", r["cached_read_s"], r["cached_read_copy_s"])]
        print(f"  {'':<40} {'read':>8} {'read + copy':>12}")
        for label, read, copy in rows:
            print(f"  {label:<40} {read:>7.3f}s {copy:>11.3f}s")
        print(f"  {'read_adapter, first use (.bin, writes copy)':<40} {r['first_read_adapter_s']:>7.3f}s")
        print(f"  ratio .bin / cached safetensors: read {r['bin_read_s'] / r['cached_read_s']:.1f}x "
              f"(lazy mapping), read + copy {r['bin_read_copy_s'] / r['cached_read_copy_s']:.2f}x; "
              f"first use / cached read + copy {r['first_read_adapter_s'] / r['cached_read_copy_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

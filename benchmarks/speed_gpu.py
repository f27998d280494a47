"""The speed modes measured against the released code's way in one run (issue 13), each in its own process.

    python -m benchmarks.speed_gpu                 # a CUDA GPU: full-size random models built in memory
    python -m benchmarks.speed_gpu --dry-run       # anywhere: small random models on the CPU, 32x32, 2 steps

Runs, in this order (one process each, with a timeout, so one failing or hanging mode leaves the others):

- ``as-released``: the released code's way (projector every step, nothing cached), bf16, eager.
- ``eager``: the ``full`` memory preset, speed off (today's default).
- ``compiled``: speed mode ``full``: compiled repeated blocks, fused QKV, the fastest exact attention backend.
- ``fp8``: speed mode ``fast``: ``full`` + torchao float8 matmuls (falls back, with its line, off Ada/Hopper).
- ``draft``: ``fast`` + the draft step cache (First Block Cache at 0.35; its calls run the blocks eagerly).

Each run appends one JSON line (:func:`benchmarks.bench.run_bench`'s record: ``s_per_step``,
``s_per_image_at_28``, ``compile_s``, ``gpu_peak_gib``...) and saves the timed request's latents; the parent then
adds ``rel_to_as_released`` (s/image at 28 steps over the as-released run's) and ``latents_rel_diff_to_eager``
(``||L - L_eager|| / ||L_eager||`` on the same seed), writes ``benchmarks/results/speed-<time>.jsonl`` and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "as-released": dict(as_released=True),
    "eager": dict(speed="off"),
    "compiled": dict(speed="full"),
    "fp8": dict(speed="fast"),
    "draft": dict(speed="fast", draft=True),
}
RESULTS = Path(__file__).resolve().parent / "results"

# Small stand-ins for the full-size configs (same keys; encoder depths keep the shallow layers the adapter reads).
DRY_RUN_CONFIGS = {
    "transformer": dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        guidance_embeds=True, axes_dims_rope=[4, 6, 6]),
    "text_encoder": dict(vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=32),
    "text_encoder_2": dict(vocab_size=200, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                           relative_attention_num_buckets=8, feed_forward_proj="gated-gelu"),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D"], block_out_channels=[4], layers_per_block=1, latent_channels=1,
                norm_num_groups=1, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.1159, scaling_factor=0.3611),
    "siglip": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=27, num_attention_heads=2,
                   image_size=384, patch_size=14),
    "dinov2": dict(hidden_size=64, num_hidden_layers=30, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                   image_size=518),
}
DRY_RUN_PROJECTOR = dict(inner_dim=128, num_layers=1, resampler_dim=64, resampler_depth=1, num_queries=4,
                         output_dim=32)


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Measures run ``name`` in this process (the child's side)."""
    import torch

    from benchmarks.bench import run_bench
    from core.models.projector import ProjectorConfig

    if args.dry_run:
        torch.set_num_threads(1)
    small = dict(configs=DRY_RUN_CONFIGS, projector_config=ProjectorConfig(**DRY_RUN_PROJECTOR)) if args.dry_run else {}
    return run_bench("full", args.size, args.size, args.steps, in_memory=True, run=name, verbose=False,
                     device="cpu" if args.dry_run else None,
                     dtype=torch.float32 if args.dry_run else torch.bfloat16,
                     latents_path=Path(args.latents_dir) / f"{name}.safetensors", **small, **RUNS[name])


def relative_difference(path: Path, reference: Path) -> float | None:
    """``||a - b|| / ||b||`` of two saved latents (float32), or None when either is missing."""
    if not (path.is_file() and reference.is_file()):
        return None
    from safetensors.torch import load_file

    a, b = load_file(str(path))["latents"], load_file(str(reference))["latents"]
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def add_ratios(records: list[dict], latents_dir: Path) -> list[dict]:
    """Adds ``rel_to_as_released`` and ``latents_rel_diff_to_eager`` to each successful record."""
    by_run = {r["run"]: r for r in records if "error" not in r}
    released = by_run.get("as-released")
    for r in records:
        if "error" in r:
            continue
        r["rel_to_as_released"] = (round(r["s_per_image_at_28"] / released["s_per_image_at_28"], 3)
                                   if released else None)
        diff = relative_difference(latents_dir / f"{r['run']}.safetensors", latents_dir / "eager.safetensors")
        r["latents_rel_diff_to_eager"] = None if diff is None else float(f"{diff:.3g}")
    return records


GOALS = {"compiled": 0.65, "fp8": 0.40, "draft": 0.30}  # s/image vs as released, the goals


def format_table(records: list[dict]) -> str:
    """The markdown table of the README's Speed section."""
    first = next((r for r in records if "error" not in r), {})
    lines = []
    if first:
        lines += [f"Device: {first['device']}, torch {first['torch']}, {first['models']} models, {first['dtype']}, "
                  f"{first['width']}x{first['height']}, {first['steps']} steps timed, one character.", ""]
    lines += ["| run | s/step | s/image @28 | vs as-released | goal | compile s | GPU peak GiB | latents vs eager |",
              "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['run']} | | | | | | | failed: {r['error']} |")
            continue
        rel = r.get("rel_to_as_released")
        goal = GOALS.get(r["run"])
        verdict = "" if goal is None or rel is None else f"<= {goal} ({'met' if rel <= goal else 'missed'})"
        peak = "-" if r.get("gpu_peak_gib") is None else f"{r['gpu_peak_gib']:.1f}"
        diff = r.get("latents_rel_diff_to_eager")
        lines.append(f"| {r['run']} | {r['s_per_step']:.4f} | {r['s_per_image_at_28']:.2f} | "
                     f"{'-' if rel is None else f'{rel:.3f}'} | {verdict} | {_num(r.get('compile_s'))} | {peak} | "
                     f"{'-' if diff is None else f'{diff:.3g}'} |")
    notes = sorted({line for r in records for line in r.get("applied", []) if ":" in line and "off" in line})
    if notes:
        lines += ["", "Fallbacks: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="small random models on the CPU (32x32, 2 steps)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, in order (default {','.join(RUNS)})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 28; dry run 2)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024; dry run 32)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per run (default 150 on a GPU: the five fit in about 10 minutes; dry run 600)")
    parser.add_argument("--out", default=None, help="the JSON-lines file (default benchmarks/results/speed-<time>.jsonl)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process: measure this run
    parser.add_argument("--latents-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 28)
    args.size = args.size or (32 if args.dry_run else 1024)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}: use {', '.join(RUNS)}")

    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS / f"speed-{stamp}{'-dry-run' if args.dry_run else ''}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    latents_dir = Path(args.latents_dir) if args.latents_dir else out.with_suffix("") / "latents"
    latents_dir.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (600 if args.dry_run else 150)
    records = []
    for name in runs:
        command = [sys.executable, "-m", "benchmarks.speed_gpu", "--one", name, "--steps", str(args.steps),
                   "--size", str(args.size), "--latents-dir", str(latents_dir)] + (["--dry-run"] if args.dry_run else [])
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode == 0 and lines:
                record = json.loads(lines[-1])
            else:
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                record = {"run": name, "error": tail[:300]}
        except subprocess.TimeoutExpired:
            record = {"run": name, "error": f"timed out after {timeout:.0f} s"}
        record["wall_s"] = round(time.perf_counter() - start, 1)
        records.append(record)
        print(f"{name}: " + (record.get("error") or f"{record['s_per_step']:.4f} s/step, "
                                                    f"{record['s_per_image_at_28']:.2f} s/image @28"), flush=True)
    add_ratios(records, latents_dir)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(format_table(records))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

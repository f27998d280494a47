"""Every memory preset measured on a CUDA GPU at 1024x1024, each in its own process, on cards of the goal table.

    python -m benchmarks.presets_gpu                       # every run of RUNS, JSON lines + a table
    python -m benchmarks.presets_gpu --runs fp8@24 streamed@8 --steps 8 --timeout 500
    python -m benchmarks.presets_gpu --dry-run             # the CPU check: tiny models, no GPU, seconds

Each run is ``preset@card``: a child process builds FLUX.1-dev + SigLIP + DINOv2 + the adapter at full size with
random weights in memory (on the GPU, then moved to the CPU: nothing written to disk, so the time goes to the runs),
caps the process's GPU memory at ``card`` GiB with ``torch.cuda.set_per_process_memory_fraction``, applies the preset
(:func:`core.loading.presets.apply_preset`), makes one warm-up image and one timed image of a synthetic character,
and appends one JSON line to ``benchmarks/results/presets-gpu.jsonl``: ``run``, ``preset``, ``s_per_step``,
``gpu_peak_gib`` (``torch.cuda.max_memory_allocated`` while applying and generating), ``ram_peak_gib`` (peak RSS
after the build: applying and generating, the peak reset through ``/proc/self/clear_refs``), ``ram_run_gib`` (RSS
after the timed image), ``card_gib``, the planner's ``estimate_gpu_gib`` / ``estimate_ram_gib`` and an ``error``
when it failed (out of memory under the cap is a result, not a crash). The parent kills a child past ``--timeout``.

RAM here is not the file-loading path: weights built in memory are anonymous pages, where ``load_pipeline`` maps
files; ``ram_run_gib`` is what to hold against the planner's ``RAM need`` for offloading presets. ``low`` is
measured with its quanto int8 alternative (bitsandbytes quantizes only while loading from files).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GiB = 2**30
RESULTS = Path(__file__).resolve().parent / "results" / "presets-gpu.jsonl"
# preset@card GiB: the goal table's cards (48/64 full; 24 fp8; 16 and 12 fp8-streamed; 8 streamed), then the rest
RUNS = ("full@48", "fp8@24", "fp8-streamed@16", "fp8-streamed@12", "streamed@8", "streamed@12", "balanced@40",
        "minimal@8", "low@12")
FIELDS = ("run", "preset", "card_gib", "s_per_step", "gpu_peak_gib", "estimate_gpu_gib", "ram_peak_gib",
          "ram_run_gib", "estimate_ram_gib", "error")


def parse_run(text: str) -> tuple[str, float | None]:
    """``preset@card`` -> (preset, card GiB); ``preset`` alone: no cap."""
    from core.loading.memory import MEMORY_PRESETS

    name, _, card = text.partition("@")
    if name not in MEMORY_PRESETS:
        raise argparse.ArgumentTypeError(f"run {text!r}: preset {name!r} unknown; expected one of "
                                         f"{', '.join(MEMORY_PRESETS)}")
    try:
        value = float(card) if card else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"run {text!r}: the card after @ must be GiB, e.g. fp8@24") from None
    if value is not None and value <= 0:
        raise argparse.ArgumentTypeError(f"run {text!r}: the card must be a positive number of GiB")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presets_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=parse_run, default=None, metavar="PRESET@GIB",
                        help=f"runs to measure (default: {' '.join(RUNS)})")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps of the timed image (default 6)")
    parser.add_argument("--size", type=int, default=1024, help="image width and height (default 1024)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per run before it is killed")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON lines file to append to (default {RESULTS})")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU check: the tiny models, presets applied for the CPU, 64 px, 1 step")
    parser.add_argument("--child", nargs=2, metavar=("PRESET", "CARD"), help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------------------------------- child
def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_full_size_pipeline(device):
    """FLUX.1-dev + SigLIP + DINOv2 + the released adapter's shapes, random bf16 weights made on ``device``.

    Each module is created directly on ``device`` in bf16 with its classes' own initialisation (integer buffers
    such as position ids included): seconds on a GPU, no float32 copy, nothing on disk.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (BitImageProcessorPil, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model,
                              SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel, T5Config,
                              T5EncoderModel)

    from benchmarks.bench import full_size_configs
    from core.loading.tiny import build_clip_tokenizer, build_t5_tokenizer
    from core.models.attention import CharacterAttentionLayers
    from core.models.pipeline import InstantCharacterPipeline
    from core.models.projector import CharacterProjector, ProjectorConfig

    c = full_size_configs()
    tcfg = c["transformer"]
    projector_config = ProjectorConfig(inner_dim=c["siglip"]["hidden_size"] + c["dinov2"]["hidden_size"],
                                       output_dim=tcfg["joint_attention_dim"])
    makers = dict(
        transformer=lambda: FluxTransformer2DModel.from_config(tcfg),
        text_encoder=lambda: CLIPTextModel(CLIPTextConfig(**c["text_encoder"])),
        text_encoder_2=lambda: T5EncoderModel(T5Config(**{**c["text_encoder_2"], "dropout_rate": 0.0})),
        vae=lambda: AutoencoderKL.from_config(c["vae"]),
        siglip=lambda: SiglipVisionModel(SiglipVisionConfig(**c["siglip"])),
        dinov2=lambda: Dinov2Model(Dinov2Config(**c["dinov2"])),
        image_proj=lambda: CharacterProjector(projector_config),
        character_layers=lambda: CharacterAttentionLayers(
            tcfg["num_layers"] + tcfg["num_single_layers"], tcfg["num_attention_heads"] * tcfg["attention_head_dim"],
            projector_config.output_dim, tcfg["attention_head_dim"]),
    )
    parts = {}
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        for name, make in makers.items():
            with torch.device(device):
                parts[name] = make().eval()
    finally:
        torch.set_default_dtype(old)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    pipe = InstantCharacterPipeline(
        scheduler=scheduler, tokenizer=build_clip_tokenizer(), tokenizer_2=build_t5_tokenizer(),
        siglip_processor=SiglipImageProcessorPil(size={"height": 384, "width": 384}, resample=3,
                                                 image_mean=[0.5] * 3, image_std=[0.5] * 3),
        dinov2_processor=BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                              do_center_crop=True, resample=3, image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225], do_convert_rgb=True),
        **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_child(preset_name: str, card_gib: float | None, steps: int, size: int, dry_run: bool) -> dict:
    """One run in this process; returns its JSON record (``error`` set when it failed)."""
    import torch

    from benchmarks.bench import BENCH_PROMPT, bench_character
    from core.loading.memory import estimate, get_preset
    from core.loading.presets import apply_preset
    from core.request import GenerationRequest

    preset = get_preset(preset_name)
    if preset.needs_bitsandbytes:
        preset = preset.with_quantization("quanto-int8")  # bitsandbytes quantizes only while loading files
    e = estimate(preset, size, size)
    record = {"run": f"{preset_name}@{card_gib:g}" if card_gib else preset_name, "preset": preset_name,
              "quantization": preset.transformer_quantization, "offload": preset.offload, "card_gib": card_gib,
              "width": size, "height": size, "steps": steps, "estimate_gpu_gib": round(e.gpu_peak_gib, 2),
              "estimate_ram_gib": round(e.ram_needed_gib, 2), "estimate_ram_peak_gib": round(e.ram_peak_gib, 2),
              "s_per_step": None, "gpu_peak_gib": None, "ram_peak_gib": None, "ram_run_gib": None, "error": None}
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    try:
        if dry_run:
            from core.loading.tiny import ensure_tiny_bundle
            from core.models.pipeline import InstantCharacterPipeline

            pipe = InstantCharacterPipeline.from_pretrained(str(ensure_tiny_bundle()), dtype=torch.float32,
                                                            progress=False)
        else:
            if not cuda:
                raise RuntimeError("no CUDA GPU: use --dry-run on a CPU")
            pipe = build_full_size_pipeline(device).to("cpu")  # built on the GPU (fast), kept in RAM
            torch.cuda.empty_cache()
            record["device"] = torch.cuda.get_device_name()
            total = torch.cuda.mem_get_info()[1]
            if card_gib:
                torch.cuda.set_per_process_memory_fraction(min(1.0, card_gib * GiB / total))
            torch.cuda.reset_peak_memory_stats()
        record["ram_build_gib"] = round((_status_bytes("VmRSS") or 0) / GiB, 3)
        record["peak_reset"] = _reset_peak_rss()
        record["applied"] = apply_preset(pipe, preset, device)
        character = bench_character(512 if not dry_run else 64)
        request = GenerationRequest(BENCH_PROMPT, characters=[character], steps=steps, width=size, height=size,
                                    seed=0).check()
        stamps: list[float] = []

        def on_step(pipe, i, t, tensors):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return {}

        kwargs = request.pipeline_kwargs()
        pipe(**{**kwargs, "num_inference_steps": 1}, generator=torch.Generator("cpu").manual_seed(0),
             output_type="latent")  # warm-up: kernels, caches, first disk writes of the streamed presets
        stamps.clear()
        start = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=on_step,
             output_type="pil")
        steps_done = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
        record["s_per_step"] = round(sorted(steps_done)[len(steps_done) // 2], 4) if steps_done else None
        record["s_per_image"] = round(time.perf_counter() - start, 3)
        if cuda:
            record["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    except Exception as exc:  # noqa: BLE001 - out of memory under the cap is a result to record
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record["error"] = f"{type(exc).__name__}: {message}"[:300]
    record["ram_peak_gib"] = round((_status_bytes("VmHWM") or 0) / GiB, 3)
    record["ram_run_gib"] = round((_status_bytes("VmRSS") or 0) / GiB, 3)
    return record


# -------------------------------------------------------------------------------------------------- parent
def format_table(records: list[dict]) -> str:
    """Markdown table of the runs (GiB, seconds)."""
    def cell(value, fmt=".2f"):
        return "" if value is None else (format(value, fmt) if isinstance(value, float) else str(value))

    lines = ["| run | s/step | GPU peak | planner GPU | RAM peak | RAM at end | planner RAM need | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['run']} | {cell(r.get('s_per_step'), '.3f')} | {cell(r.get('gpu_peak_gib'))} | "
                     f"{cell(r.get('estimate_gpu_gib'))} | {cell(r.get('ram_peak_gib'))} | "
                     f"{cell(r.get('ram_run_gib'))} | {cell(r.get('estimate_ram_gib'))} | "
                     f"{(r.get('error') or '')[:80]} |")
    return "\n".join(lines)


def run_all(runs, steps: int, size: int, timeout: float, out: str | Path, dry_run: bool) -> list[dict]:
    """Each run in its own child process (killed past ``timeout`` s); records appended to ``out``."""
    records = []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, card in runs:
        command = [sys.executable, "-m", "benchmarks.presets_gpu", "--child", name, str(card or 0),
                   "--steps", str(steps), "--size", str(size)] + (["--dry-run"] if dry_run else [])
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  cwd=Path(__file__).resolve().parents[1])
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            record = json.loads(lines[-1]) if lines else {
                "run": f"{name}@{card:g}" if card else name, "preset": name, "card_gib": card,
                "error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:250]}"}
        except subprocess.TimeoutExpired:
            record = {"run": f"{name}@{card:g}" if card else name, "preset": name, "card_gib": card,
                      "error": f"timed out after {timeout:.0f} s"}
        record["wall_s"] = round(time.perf_counter() - started, 1)
        record.setdefault("s_per_step", None)
        record.setdefault("gpu_peak_gib", None)
        record.setdefault("ram_peak_gib", None)
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.size < 16 or args.size % 16:
        raise SystemExit("--steps must be >= 1 and --size a multiple of 16")
    if args.child:
        name, card = args.child
        record = run_child(name, float(card) or None, args.steps, args.size, args.dry_run)
        print(json.dumps(record), flush=True)
        return 0
    runs = args.runs or [parse_run(r) for r in RUNS]
    steps, size = (1, 64) if args.dry_run else (args.steps, args.size)
    records = run_all(runs, steps, size, args.timeout, args.out, args.dry_run)
    print("\n" + format_table(records))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

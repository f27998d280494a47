"""The ``bench`` and ``plan`` commands: measured speed and memory of a preset, and the memory planner's table.

``app.cli`` adds them as subcommands; ``python -m app.bench_commands {bench,plan,table}`` runs them on their own
(the GPU benchmark script uses that, so it needs no installed entry point).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import UsageError
from core.loading.quantization import QUANTIZATIONS

from .arguments import add_file_arguments, add_model_arguments, add_speed_arguments, file_sources, speed_options



def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28, help="denoising steps of the timed image")
    parser.add_argument("--random-weights", action="store_true",
                        help="full-size FLUX.1-dev, encoders and adapter with random weights (no download; "
                             "about 42 GB written once to the user cache)")
    parser.add_argument("--as-released", action="store_true",
                        help="measure the released code's way: projector every step, no caching, bf16, no offload")
    add_model_arguments(parser, base=False, adapter=True, dtype=False)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="replace the preset's transformer/T5 quantization (e.g. quanto-int8)")
    parser.add_argument("--random-dir", default=None, help="where the random full-size models are kept")
    parser.add_argument("--no-warmup", action="store_true", help="time the first image (one-time setup included)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="append the figures (or the error) as one JSON line to PATH")
    parser.add_argument("--in-memory", action="store_true",
                        help="full-size random models built in memory on the GPU (nothing written to disk)")
    add_speed_arguments(parser)


def _append_json(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def bench_main(args: argparse.Namespace) -> int:
    """Runs :func:`benchmarks.bench.run_bench` with the command's arguments and prints the figures."""
    from benchmarks.bench import run_bench

    try:
        speed = speed_options(args)
        result = run_bench(args.preset, args.width, args.height, args.steps, random_weights=args.random_weights,
                           models_spec=args.models, as_released=args.as_released, quantization=args.quantization,
                           warmup=not args.no_warmup, random_dir=args.random_dir, verbose=True, speed=speed,
                           draft=getattr(args, "draft", False), in_memory=getattr(args, "in_memory", False),
                           adapter=args.adapter)
    except BaseException as exc:
        if args.json and not isinstance(exc, KeyboardInterrupt):
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _append_json(args.json, {"run": "as-released" if args.as_released else args.preset,
                                     "error": f"{type(exc).__name__}: {message}"[:300]})
        raise
    if args.json:
        _append_json(args.json, result)
    return 0


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vram", type=float, default=None, metavar="GB",
                        help="GPU memory in GB (GiB, as GPU makers count it); default: detected")
    parser.add_argument("--ram", type=float, default=None, metavar="GB", help="system RAM in GB; default: detected")
    parser.add_argument("--base", default=None, metavar="FILE",
                        help="plan for this transformer or all-in-one file (.gguf or .safetensors): its real size is "
                             "read")
    parser.add_argument("--models", default=None, metavar="FOLDER",
                        help="plan for the FLUX files of a ComfyUI/Forge models folder (or a models directory)")
    add_file_arguments(parser)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--controlnet", action="store_true",
                        help="count a ControlNet for control images (Union-Pro-2.0's size: 6 double blocks)")


def plan_main(args: argparse.Namespace) -> int:
    """Prints each preset's estimated GPU and RAM peaks and the one ``auto`` picks."""
    from core.loading.memory import format_plan

    for name in ("vram", "ram"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} {value}: must be a positive number of GB")
    files = None
    if any(getattr(args, k, None) for k in ("base", "models", "vae", "clip", "t5")):
        from core.loading.component_files import weight_files

        sources = file_sources(args, always=True)
        given = sources.part_files()
        files = weight_files(given) if given else None
        for note in sources.notes:
            print(f"models: {note}")
    print(format_plan(args.vram, args.ram, args.width, args.height, files=files,
                      controlnet=bool(getattr(args, "controlnet", False))))
    return 0


def table_main(args: argparse.Namespace) -> int:
    """Prints the markdown table of a ``--json`` file of bench runs."""
    from benchmarks.report import format_markdown, read_jsonl

    if not Path(args.jsonl).is_file():
        raise FileNotFoundError(f"no bench results at {args.jsonl}")
    print(format_markdown(read_jsonl(args.jsonl)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.bench_commands")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="measure load time, speed and peak memory")
    add_bench_arguments(bench)
    bench.set_defaults(handler=bench_main)
    plan = commands.add_parser("plan", help="estimated memory of each preset and the automatic choice")
    add_plan_arguments(plan)
    plan.set_defaults(handler=plan_main)
    table = commands.add_parser("table", help="markdown table of bench --json results")
    table.add_argument("jsonl")
    table.set_defaults(handler=table_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .command import run_handler

    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())

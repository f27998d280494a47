"""The ``eval`` command: render and score a benchmark folder, or compare two runs.

Cases render through the engine (:class:`core.engine.Engine`) with ``--models`` under ``--preset`` and ``--dtype``,
as the studio and ``generate`` load them. Nothing heavy is imported until the command runs (``eval --help`` needs
no torch).
"""

from __future__ import annotations

import argparse

from app.arguments import add_model_arguments, file_sources
from core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench", nargs="?", help="a benchmark folder (characters/ and cases.jsonl)")
    parser.add_argument("--out", help="the run folder (resumable: finished cases are not rendered again)")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="compare two run folders metric by metric (paired t-test)")
    add_model_arguments(parser, base=False, adapter=True)
    parser.add_argument("--text-adapter", default=None, help="a text adapter (file or hub id) for every case")
    parser.add_argument("--clip-model", default=None, help="CLIP model (hub id or folder); default: the scorer's")
    parser.add_argument("--dino-model", default=None, help="DINO model (hub id or folder); default: the scorer's")
    parser.add_argument("--no-segment", action="store_true", help="score whole images (no character segmentation)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=0.9)


def engine_for(args: argparse.Namespace):
    """The engine ``eval`` renders with (its models load when the first case needs rendering)."""
    from core.engine import Engine

    return Engine(args.models, preset=args.preset, dtype=args.dtype, width=args.width, height=args.height,
                  sources=file_sources(args))


def run(args: argparse.Namespace) -> int:
    if args.compare:
        from core.evaluation import compare_command

        print(compare_command(*args.compare))
        return 0
    if not args.bench or not args.out:
        raise UsageError("eval needs a benchmark folder and --out DIR (or --compare RUN_A RUN_B)")
    from core.evaluation import eval_command
    from core.evaluation.runner import RenderSettings
    from core.evaluation.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
    from core.limits import MAX_GUIDANCE, MAX_STEPS, check_int, check_number, check_size

    check_size(args.width, args.height)  # before the models load: the rules every request is built with
    check_int(args.steps, "--steps", 1, MAX_STEPS)
    check_number(args.guidance, "--guidance", 0.0, MAX_GUIDANCE)
    engine = engine_for(args)
    settings = RenderSettings(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                              scale=args.scale)
    # the preset as resolved (auto's choice, the quanto alternative) and the dtype: a run re-renders when they change
    preset = engine.preset
    adapter = engine.provenance()["models"]  # a run re-renders when the adapter file changes
    label = (f"models={args.models} preset={preset.name} quantization={preset.transformer_quantization} "
             f"dtype={engine.dtype_name} text_adapter={args.text_adapter}"
             + (f" adapter={adapter['adapter']}:{adapter['adapter_sha256'][:16]}" if args.adapter else ""))
    print(eval_command(args.bench, args.out, engine, clip_model=args.clip_model or DEFAULT_CLIP_MODEL,
                       dino_model=args.dino_model or DEFAULT_DINO_MODEL,
                       segmenter=None if args.no_segment else "threshold", settings=settings, label=label,
                       text_adapter=args.text_adapter))
    return 0

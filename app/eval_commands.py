"""The ``eval`` command: render and score a benchmark folder, or compare two runs.

Nothing heavy is imported until the command runs (``eval --help`` needs no torch).
"""

from __future__ import annotations

import argparse

from core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench", nargs="?", help="a benchmark folder (characters/ and cases.jsonl)")
    parser.add_argument("--out", help="the run folder (resumable: finished cases are not rendered again)")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="compare two run folders metric by metric (paired t-test)")
    parser.add_argument("--models", default="default", help="default, tiny, or a models directory")
    parser.add_argument("--preset", default=None, help="memory preset")
    parser.add_argument("--text-adapter", default=None)
    parser.add_argument("--clip-model", default=None, help="CLIP model (hub id or folder); default: the scorer's")
    parser.add_argument("--dino-model", default=None, help="DINO model (hub id or folder); default: the scorer's")
    parser.add_argument("--no-segment", action="store_true", help="score whole images (no character segmentation)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=0.9)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])


def run(args: argparse.Namespace) -> int:
    if args.compare:
        from core.evaluation import compare_command

        print(compare_command(*args.compare))
        return 0
    if not args.bench or not args.out:
        raise UsageError("eval needs a benchmark folder and --out DIR (or --compare RUN_A RUN_B)")
    from core.evaluation import eval_command
    from core.evaluation.runner import RenderSettings
    from core.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
    from app.generate import DTYPES, default_dtype
    from core.pipeline import InstantCharacterPipeline, check_settings
    from core.sources import ModelSources

    check_settings("benchmark", args.height, args.width, args.steps, args.guidance)
    import torch

    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse(args.models),
                                                    dtype=DTYPES[args.dtype or default_dtype()],
                                                    text_adapter=args.text_adapter, progress=False)
    if torch.cuda.is_available():
        pipe.to("cuda")
    settings = RenderSettings(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                              scale=args.scale)
    label = f"models={args.models} preset={args.preset} text_adapter={args.text_adapter}"
    print(eval_command(args.bench, args.out, pipe, clip_model=args.clip_model or DEFAULT_CLIP_MODEL,
                       dino_model=args.dino_model or DEFAULT_DINO_MODEL,
                       segmenter=None if args.no_segment else "threshold", settings=settings, label=label))
    return 0

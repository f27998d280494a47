"""``instantcharacter-studio``: the studio (no subcommand) and the command-line tools.

Every known failure (bad input, missing model, bad checkpoint) prints one line and exits with status 2;
no traceback reaches the user unless ``--debug`` is given.

The options are defined in modules that import nothing heavy, so ``--help`` and ``plan`` answer at once; each
handler imports torch, diffusers or gradio when it runs.
"""

from __future__ import annotations

import argparse
import sys

from . import arguments, bench_commands, eval_commands, generate, story_commands
from .command import run_handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instantcharacter-studio",
        description="Put your own characters into new images with FLUX.1 and InstantCharacter. "
                    "With no command, opens the studio in your browser.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    arguments.add_launch_arguments(parser)
    parser.set_defaults(handler=_launch)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = commands.add_parser("generate", help="make one image from the command line")
    generate.add_arguments(gen)
    gen.set_defaults(handler=generate.run)

    evaluate = commands.add_parser("eval", help="score a benchmark (CLIP-I, DINO-I, CLIP-T) or compare two runs")
    eval_commands.add_arguments(evaluate)
    evaluate.set_defaults(handler=eval_commands.run)

    story = commands.add_parser("story", help="render, check or convert a story (comics, storyboards)")
    story_commands.add_story_arguments(story)
    story.set_defaults(handler=story_commands.story_main)

    plan = commands.add_parser("plan", help="estimated GPU and RAM peaks of each memory preset, and auto's pick")
    bench_commands.add_plan_arguments(plan)
    plan.set_defaults(handler=bench_commands.plan_main)

    bench = commands.add_parser("bench", help="measure load time, speed and peak memory")
    bench_commands.add_bench_arguments(bench)
    bench.set_defaults(handler=bench_commands.bench_main)

    train = commands.add_parser("train", help="fine-tune the adapters (train CONFIG [--resume], train validate ...)",
                                add_help=False)
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(handler=_train)
    return parser


def _launch(args: argparse.Namespace):
    from .studio import launch

    return launch(args)


def _train(args: argparse.Namespace) -> int:
    from trainer.cli import main as train_main

    return train_main(args.train_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the trainer parses its own options (argparse's REMAINDER drops a leading --help)
        return _train(argparse.Namespace(train_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())

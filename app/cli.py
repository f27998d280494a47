"""``instantcharacter-studio``: the studio (no subcommand) and the command-line tools.

Every known failure (bad input, missing model, bad checkpoint) prints one line and exits with status 2;
no traceback reaches the user unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import eval_commands, generate

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instantcharacter-studio",
        description="Put your own characters into new images with FLUX.1 and InstantCharacter. "
                    "With no command, opens the studio in your browser.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = commands.add_parser("generate", help="make one image from the command line")
    generate.add_arguments(gen)
    gen.set_defaults(handler=generate.run)

    evaluate = commands.add_parser("eval", help="score a benchmark (CLIP-I, DINO-I, CLIP-T) or compare two runs")
    eval_commands.add_arguments(evaluate)
    evaluate.set_defaults(handler=eval_commands.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

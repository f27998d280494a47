"""Running a command handler the way every entry point does: one line per known error, exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, PermissionError)


def run_handler(handler, args: argparse.Namespace) -> int:
    """Calls ``handler(args)``; known failures print ``error: <one line>`` (tracebacks only with ``--debug``)."""
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2

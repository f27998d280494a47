"""Running a command handler the way every entry point does: one line per user error, exit status 2.

User errors (:class:`core.errors.UserError`, and file-system errors such as a missing or unwritable file, which
name the file) print ``error: <one line>`` and exit 2. Anything else is a bug: one line saying so, with the hint
to rerun with ``--debug`` for the traceback, and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.errors import UserError
from core.loading.library_notes import filter_library_notes

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def run_handler(handler, args: argparse.Namespace) -> int:
    """Calls ``handler(args)``; known failures print ``error: <one line>`` (tracebacks only with ``--debug``)."""
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    filter_library_notes()
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: say so, and how to see where
        if debug:
            raise
        print(f"unexpected error ({type(exc).__name__}: {_first_line(exc)}); this is a bug in "
              "instantcharacter-studio: rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

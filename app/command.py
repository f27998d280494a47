"""Running a command handler the way every entry point does: one line per user error, exit status 2.

User errors (:class:`core.errors.UserError`, and file-system errors such as a missing or unwritable file, which
name the file) print ``error: <one line>`` and exit 2. Anything else is a bug: one line saying so, with the hint
to rerun with ``--debug`` for the traceback, and exit 1.

Ctrl-C (SIGINT) asks the command to stop. A command whose parser sets ``stops_on_cancel`` finds a
``threading.Event`` in ``args.cancel`` that the first Ctrl-C sets (the engine stops at its next denoising step;
files already written stay as they are); a second Ctrl-C stops at once. Other commands stop at once (Python's
``KeyboardInterrupt``). Either way the exit status is 130, the shell's code for an interrupt.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from core.errors import UserError
from core.loading.library_notes import filter_library_notes

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def run_handler(handler, args: argparse.Namespace) -> int:
    """Calls ``handler(args)``; known failures print ``error: <one line>`` (tracebacks only with ``--debug``)."""
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    filter_library_notes()
    stop = threading.Event()
    args.cancel = stop
    try:
        with _ctrl_c_sets(stop) if getattr(args, "stops_on_cancel", False) else contextlib.nullcontext():
            code = handler(args) or 0
        if stop.is_set():
            return INTERRUPTED
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
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


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


@contextlib.contextmanager
def _ctrl_c_sets(stop: threading.Event):
    """While inside, the first Ctrl-C sets ``stop`` and says so; the next one raises ``KeyboardInterrupt``.
    (Only the main thread can take signals; elsewhere Ctrl-C keeps its default.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

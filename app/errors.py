"""Turning failures into one-line messages on the page: known user errors as they are, anything else briefly.

Every event handler of the studio is wrapped with :func:`shown_to_user`, so no traceback ever reaches the page;
unexpected errors are logged in full to the terminal.
"""

from __future__ import annotations

import errno
import functools
import logging

import gradio as gr

from core.errors import UserError

log = logging.getLogger(__name__)


class StudioInputError(UserError, ValueError):
    """A bad value in the studio's own fields (size, seed, LoRA row, library name); one line."""


class OwnerOnlyError(StudioInputError):
    """An action reserved for the person who started the studio, asked by someone else."""


class ComponentInputError(gr.Error):
    """A value a component of the studio cannot take from the browser, raised in the component's ``preprocess``
    (which Gradio calls itself, outside :func:`shown_to_user`). Gradio shows a ``gr.Error``'s message as it is, but
    answers a refused queue join with ``str()`` of it, which ``gr.Error`` puts in quotes: here ``str()`` is the
    message."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)

    def __str__(self) -> str:
        return self.message


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)  # one base: core.errors


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# The machine's state, not a bug: said as the CLI says it (its strerror), with what to do
MACHINE_ERRNOS = {errno.ENOSPC: "free some space and try again", errno.EDQUOT: "free some space and try again",
                  errno.EROFS: "choose a folder that can be written", errno.EACCES: "check the folder's permissions"}


def machine_error_message(exc: OSError) -> str | None:
    """A one-line message for an OSError the user can act on (a full disk, a read-only folder), else None."""
    if exc.errno not in MACHINE_ERRNOS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}: {MACHINE_ERRNOS[exc.errno]}"


def shown_to_user(fn):
    """Wraps an event handler: known errors become ``gr.Error(one line)``; others are logged, then summarized."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as exc:
            raise gr.Error(one_line(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the terminal the traceback
            if isinstance(exc, OSError) and (message := machine_error_message(exc)):
                log.warning("%s in %s", message, fn.__name__)
                raise gr.Error(message, print_exception=False) from None
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(exc).__name__}: {one_line(exc)}); details are in the terminal",
                           print_exception=False) from None

    return wrapper

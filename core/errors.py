"""The one base of every error a user can fix.

A :class:`UserError` is a problem with what the user asked for or has (a bad input, a missing or wrong model file,
not enough memory, an action they may not take); its message is one line, written for them. The command line
prints it as ``error: <message>`` and exits 2; the studio shows it as it is. Anything else is a bug: the command
line says so with a hint to rerun with ``--debug`` for the traceback, and the studio logs the traceback.

Each module's own error class derives from :class:`UserError` and, for compatibility, from the built-in class it
always was (``ValueError`` or ``RuntimeError``).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is the message for them (its first line is shown)."""


class UsageError(UserError, ValueError):
    """A command or option used wrongly (a missing argument, options that do not go together)."""


class ModelSourceError(UserError, RuntimeError):
    """A model that cannot be found or fetched, or a weight file that is not what it was given as; the message
    says what to do. (Here rather than in ``core.loading.sources`` so the file readers that raise it need not
    import the sources.)"""

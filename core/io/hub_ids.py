"""Hugging Face hub ids as values of their own kind, never as paths.

A client may name a hub file as ``owner/repo`` or ``owner/repo/file.safetensors`` (the file may sit in folders of
the repo). :meth:`HubId.parse` checks the hub's own name rules (letters, digits, ``-``, ``_``, ``.``; at most 96
characters a name; no ``--`` or ``..``; no leading or trailing ``-``/``.``) and that no part is empty or ``.``/``..``,
so the id can never be read as a local folder (``tests/core/../../etc``) once it reaches a loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import UserError
from core.limits import short_repr

_NAME = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_FILE_PART = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._ ()+,=@-]{1,255}$")
MAX_HUB_ID_CHARS = 300


class HubIdError(UserError, ValueError):
    """A string that is not a hub id; one line naming the rule it breaks."""


@dataclass(frozen=True)
class HubId:
    """``repo`` (``owner/name``) and, optionally, ``filename`` inside it (``a/b.safetensors``)."""

    repo: str
    filename: str | None = None

    @classmethod
    def parse(cls, text: str, what: str = "hub id") -> "HubId":
        """The id in ``text``; :class:`HubIdError` (one line, the text quoted at most 80 characters) otherwise."""
        shown = short_repr(str(text), 80)
        if not isinstance(text, str) or not text or len(text) > MAX_HUB_ID_CHARS:
            raise HubIdError(f"{what} {shown} must be owner/repo or owner/repo/file.safetensors "
                             f"(at most {MAX_HUB_ID_CHARS} characters)")
        parts = text.split("/")
        if len(parts) < 2 or not all(_NAME.match(p) for p in parts[:2]):
            raise HubIdError(f"{what} {shown} is not a hub id: owner and repo are names of letters, digits, "
                             "'-', '_' and '.' (no '..', no empty parts)")
        if len(parts) > 2 and not all(_FILE_PART.match(p) for p in parts[2:]):
            raise HubIdError(f"{what} {shown} is not a hub id: a file in a repo has no empty, '.' or '..' parts")
        return cls("/".join(parts[:2]), "/".join(parts[2:]) or None)

    def __str__(self) -> str:
        return f"{self.repo}/{self.filename}" if self.filename else self.repo

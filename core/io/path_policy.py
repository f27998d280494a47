"""Which files a request may name: one policy for every path that reaches the engine from a client.

The studio makes a :class:`PathPolicy` with its own folders as roots (outputs, library, stories, runs, uploads,
``assets/``): a path is resolved (``~``, ``..`` and symbolic links followed) and must land inside one of them, or
it is refused before anything is read, hashed, copied, listed or served. The refusal says the same whether the
file exists or not, so it reveals nothing about the rest of the disk. The command line, run by the machine's own
user, uses :data:`UNRESTRICTED`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from core.errors import UserError


class PathNotAllowedError(UserError, ValueError):
    """A path outside the folders this client may use; one line naming the path and the folders."""


class PathPolicy:
    """Roots a client may read and write under; ``roots=None`` allows everything (the command line)."""

    def __init__(self, roots: Iterable[str | os.PathLike] | None, *, labels: dict[str, str] | None = None):
        self._roots = None if roots is None else tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        self._labels = labels or {}

    @property
    def restricted(self) -> bool:
        return self._roots is not None

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots or ()

    def with_roots(self, *extra: str | os.PathLike) -> "PathPolicy":
        """This policy with more roots (an unrestricted policy stays unrestricted)."""
        if self._roots is None:
            return self
        return PathPolicy([*self._roots, *extra], labels=self._labels)

    def allows(self, path: str | os.PathLike, base: str | os.PathLike | None = None) -> bool:
        try:
            self.resolve(path, base=base)
        except PathNotAllowedError:
            return False
        return True

    def resolve(self, path: str | os.PathLike, *, base: str | os.PathLike | None = None, what: str = "path") -> Path:
        """``path`` (relative to ``base`` when relative) resolved, symbolic links and ``..`` followed.

        Raises :class:`PathNotAllowedError` when the result is outside every root. Nothing is read.
        """
        text = os.fspath(path)
        if "\x00" in text:
            raise PathNotAllowedError(f"{what} {text!r} is not a valid path")
        candidate = Path(text)
        if not self.restricted:
            candidate = candidate.expanduser()
        if not candidate.is_absolute():
            candidate = Path(base if base is not None else os.getcwd()) / candidate
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise PathNotAllowedError(f"{what} {text} cannot be resolved (a link loop?)") from None
        if self._roots is None or any(real == root or real.is_relative_to(root) for root in self._roots):
            return real
        raise PathNotAllowedError(f"{what} {text} is outside the folders this studio may use "
                                  f"({self.describe()})")

    def describe(self) -> str:
        if self._roots is None:
            return "any folder"
        return ", ".join(self._labels.get(str(root), str(root)) for root in self._roots)


UNRESTRICTED = PathPolicy(None)

"""Atomic file writes: readers (and resumed runs) see either the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "write_json"]


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file next to ``path``, flush it to disk, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_json(path: str | os.PathLike, value: object) -> Path:
    """Write ``value`` as indented UTF-8 JSON, atomically."""
    return write_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))

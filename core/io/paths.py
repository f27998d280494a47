"""User folders (platformdirs) and atomic file writes.

``INSTANTCHARACTER_HOME`` overrides the base folder of both the cache and the user data (tests use it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path

import platformdirs
from core.errors import UserError

APP_NAME = "instantcharacter-studio"


def _home() -> Path | None:
    home = os.environ.get("INSTANTCHARACTER_HOME")
    return Path(home) if home else None


def cache_dir(*parts: str) -> Path:
    """A folder in the user cache (derived files that can be rebuilt), created on demand."""
    base = (_home() / "cache") if _home() else Path(platformdirs.user_cache_dir(APP_NAME))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(*parts: str) -> Path:
    """A folder in the user data (library, history, outputs), created on demand."""
    base = (_home() / "data") if _home() else Path(platformdirs.user_data_dir(APP_NAME))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


class OutputPathError(UserError, ValueError):
    """An output path that must not be written: a folder, a device, a pipe, or a link to one."""


def output_target(path: str | os.PathLike) -> Path:
    """The regular file that writing ``path`` should replace, checked before any work is done.

    A symbolic link is followed, so the link stays a link and its target gets the new content; a folder, a device
    file, a pipe or a socket (or a link to one) is refused with :class:`OutputPathError`. A missing file is fine.
    """
    given = Path(path).expanduser()
    target = given.resolve() if given.is_symlink() else given
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        if given.is_symlink():  # a dangling link: write where it points
            return target
        if str(path).endswith(("/", os.sep)):
            raise OutputPathError(f"{path} names a folder: give a file name") from None
        return given
    except OSError as exc:
        raise OutputPathError(f"{path} cannot be written: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"{path} is a folder: give a file name inside it, such as {given / 'image.png'}")
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{path} is not a regular file (a device, pipe or socket): give a file name")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Readers never see a half-written file: either the old content or the complete new one. ``path`` goes through
    :func:`output_target` first: links are written through, folders and device files are refused.
    """
    path = output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600 (and a writer may replace it): give it the mode an ordinary write would
        os.chmod(tmp, _kept_mode(path))
        with open(tmp, "rb+") as handle:  # on disk before the rename, so a crash never leaves an empty file
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
    os.umask(mask)
    return mask


def _kept_mode(path: Path) -> int:
    """The permission bits a write to ``path`` leaves: an existing file's, else ``0o666`` less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


TEMPORARY_PATTERN = ".*.tmp"  # what atomic_path leaves behind when its process is killed mid-write
STALE_AFTER_S = 3600.0  # no write of the project takes an hour: an older temporary file belongs to a dead process


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = False,
                             older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Deletes the temporary files (``.NAME.*.tmp``) a killed process left in ``folder``; returns what was removed.

    Only files older than ``older_than_s`` go, so a write in progress elsewhere (another tab, another process) keeps
    its file. Nothing else is touched."""
    folder = Path(folder)
    now = time.time()
    removed = []
    for path in (folder.rglob if recursive else folder.glob)(TEMPORARY_PATTERN):
        with contextlib.suppress(OSError):
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
    return removed


def set_aside(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Moves a damaged file or folder out of the way, never deleting it: to ``folder`` (default: beside it) as
    ``NAME.damaged`` (``NAME.damaged-2``, ... when taken); returns where it went."""
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.name}.damaged"
    number = 2
    while target.exists() or target.is_symlink():
        target = folder / f"{path.name}.damaged-{number}"
        number += 1
    os.replace(path, target)
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

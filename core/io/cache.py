"""A small least-recently-used cache for per-character and per-prompt work, and file digests remembered by stat."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from core.errors import UserError


class LRUCache(OrderedDict):
    """Keeps the ``size`` most recently used values; :meth:`get_or_make` computes a missing one once."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class FileTooLargeError(UserError, ValueError):
    """A file over the size a digest may read; one line with its size and the limit."""


_DIGESTS = LRUCache(2048)
_DIGESTS_LOCK = threading.Lock()
# A file changed within this many seconds of its last change may change again without a new mtime (coarse
# clocks): such digests are not remembered.
_RACY_SECONDS = 2.0


def cached_sha256(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """The SHA-256 hex digest of a file, remembered by (path, size, mtime, ctime, inode): an unchanged file is
    hashed once. With ``max_bytes``, a larger file (by size, or by what is read) raises :class:`FileTooLargeError`."""
    path = os.fspath(path)
    info = os.stat(path)
    if max_bytes is not None and info.st_size > max_bytes:
        raise FileTooLargeError(f"{path} is {info.st_size:,} bytes: the limit is {max_bytes:,}")
    key = (os.path.abspath(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            _DIGESTS.move_to_end(key)
            return _DIGESTS[key]
    digest = hashlib.sha256()
    read = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            read += len(chunk)
            if max_bytes is not None and read > max_bytes:
                raise FileTooLargeError(f"{path} grew past {max_bytes:,} bytes while it was read")
            digest.update(chunk)
    value = digest.hexdigest()
    if time.time() - info.st_mtime > _RACY_SECONDS:
        with _DIGESTS_LOCK:
            _DIGESTS.get_or_make(key, lambda: value)
    return value


class DiskBackedCache(LRUCache):
    """An :class:`LRUCache` whose values also live on disk, one safetensors file per key, so that a restart or a
    story resume reads them back instead of running the model again.

    Args:
        size: values kept in memory (least recently used dropped first; the files stay).
        folder: where the files go (e.g. ``core.io.paths.cache_dir("embeddings", namespace)``).
        pack: value -> ``{name: tensor}``; unpack: ``{name: tensor}`` -> value.
        namespace: what the values depend on besides the key (model identity, dtype): part of each file's name,
            so another model never reads these values.

    Files are written atomically; one that cannot be read is made again (and rewritten). :meth:`clear` (what the
    pipeline calls when a LoRA changes the encoders) also stops using the disk for the rest of the process: the
    files hold values of the encoders without it.
    """

    def __init__(self, size: int, folder, pack, unpack, namespace: str = ""):
        super().__init__(size)
        self.folder = os.fspath(folder)
        self.pack, self.unpack, self.namespace = pack, unpack, namespace
        self.use_disk = True

    def clear(self) -> None:
        super().clear()
        self.use_disk = False

    def path_for(self, key) -> str:
        digest = hashlib.sha256(f"{self.namespace}\0{key!r}".encode()).hexdigest()[:32]
        return os.path.join(self.folder, f"{digest}.safetensors")

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return super().get_or_make(key, lambda: self._read_or_make(key, make) if self.use_disk else make())

    def _read_or_make(self, key, make):
        from safetensors.torch import load_file, save_file

        path = self.path_for(key)
        if os.path.isfile(path):
            try:
                return self.unpack(load_file(path))
            except Exception:  # noqa: BLE001 - a damaged or foreign file: make the value again
                pass
        value = make()
        from core.io.paths import atomic_path

        os.makedirs(self.folder, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: t.detach().contiguous().cpu() for k, t in self.pack(value).items()}, str(tmp))
        return value

"""Past generations, persisted across restarts as JSON lines in the user data folder.

Each line describes one saved PNG (path, time, prompt, seed, size, character names); the PNG itself carries the
full settings, so the history only needs enough to browse. Entries whose file was deleted are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.io.paths import set_aside, write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass
class HistoryEntry:
    """One generated image as listed in the history."""

    path: str
    prompt: str
    seed: int
    width: int
    height: int
    characters: list[str] = field(default_factory=list)
    time: float = field(default_factory=time.time)

    def caption(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.time))
        return f"{when} · seed {self.seed} · {self.prompt[:60]}"


class GenerationHistory:
    """The history file ``path`` (normally ``data_dir() / "history.jsonl"``); appends are thread-safe.

    Damage is survived: a line that is not a whole UTF-8 JSON entry (a crash mid-write, a bad byte) is skipped with a
    note in :attr:`notes` naming it, the file as it was is kept aside and the good lines stay; a new entry always
    starts on its own line, so a cut last line never swallows it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def add(self, entry: HistoryEntry) -> None:
        line = (json.dumps(asdict(entry)) + "\n").encode("utf-8")
        with self._lock, open(self.path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the last write was cut: end that line rather than glue this one onto it
                    line = b"\n" + line
            f.write(line)

    def _read_lines(self) -> list[bytes]:
        """The file's lines; damaged ones are dropped and noted, the file as it was kept aside (under the lock)."""
        raw = self.path.read_bytes()
        good, bad = [], []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                HistoryEntry(**json.loads(line.decode("utf-8")))
            except (ValueError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                bad.append(number)
                continue
            good.append(line)
        if bad:
            kept = set_aside(self.path)
            write_bytes_atomic(self.path, b"".join(line + b"\n" for line in good))
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            note = (f"history: {len(bad)} damaged line{'s' if len(bad) != 1 else ''} of {self.path.name} skipped "
                    f"(line {shown}); the file as it was is kept as {kept}")
            self.notes.append(note)
            log.warning("%s", note)
        return good

    def entries(self, limit: int = 200) -> list[HistoryEntry]:
        """Newest first, at most ``limit``; damaged lines (noted, kept aside) and missing files are skipped."""
        if not self.path.is_file():
            return []
        with self._lock:
            lines = self._read_lines()
        found = []
        for line in reversed(lines):
            entry = HistoryEntry(**json.loads(line.decode("utf-8")))
            if Path(entry.path).is_file():
                found.append(entry)
            if len(found) >= limit:
                break
        return found

    def lists(self, path: str) -> bool:
        """Whether ``path`` (as written) is one of the images :meth:`entries` shows."""
        return any(entry.path == path for entry in self.entries())

    def clear(self) -> None:
        """Forgets the history (the images stay in the output folder)."""
        with self._lock:
            self.path.unlink(missing_ok=True)

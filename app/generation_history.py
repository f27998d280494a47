"""Past generations, persisted across restarts as JSON lines in the user data folder.

Each line describes one saved PNG (path, time, prompt, seed, size, character names); the PNG itself carries the
full settings, so the history only needs enough to browse. Entries whose file was deleted are skipped.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    """The history file ``path`` (normally ``data_dir() / "history.jsonl"``); appends are thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def add(self, entry: HistoryEntry) -> None:
        line = json.dumps(asdict(entry)) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def entries(self, limit: int = 200) -> list[HistoryEntry]:
        """Newest first, at most ``limit``; broken lines and missing files are skipped."""
        if not self.path.is_file():
            return []
        with self._lock:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        found = []
        for line in reversed(lines):
            try:
                entry = HistoryEntry(**json.loads(line))
            except (ValueError, TypeError):
                continue
            if Path(entry.path).is_file():
                found.append(entry)
            if len(found) >= limit:
                break
        return found

    def clear(self) -> None:
        """Forgets the history (the images stay in the output folder)."""
        with self._lock:
            self.path.unlink(missing_ok=True)

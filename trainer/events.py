"""How a training process reports to the outside world, and how it is asked to stop or save: files only.

The trainer appends JSON lines to ``output_dir/events.jsonl`` (one object per line, each with ``"event"`` and
``"time"``): ``loading`` and ``caching`` (setup, with ``message``), ``start``, ``step`` (step, stage, loss, lr, it_s, eta_s), ``sample`` (step, images), ``validation``
(step, clip_i, dino_i, clip_t, cases, images; see :mod:`trainer.validation`), ``checkpoint``, ``export``,
``stopped``, ``done`` and ``error``. The studio (or anyone) reads the file; the trainer knows nothing
of them. Requests go the other way as empty files in ``output_dir/control/``: ``stop`` and ``save-now``, honoured
between optimizer steps.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

EVENTS_FILE = "events.jsonl"
CONTROL_DIR = "control"
STOP, SAVE_NOW = "stop", "save-now"


class EventLog:
    """Appends events to ``folder/events.jsonl``; each line is flushed so readers see it at once."""

    def __init__(self, folder: str | Path, enabled: bool = True, listeners=()):
        self.path = Path(folder) / EVENTS_FILE
        self.enabled = enabled
        self.listeners = list(listeners)  # called with each record after it is written (the terminal's progress)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
                f.flush()
            for listener in self.listeners:
                listener(record)
        return record


def read_events(folder: str | Path, since: int = 0) -> list[dict]:
    """The events after the first ``since`` lines; a half-written last line is left for the next read."""
    path = Path(folder) / EVENTS_FILE
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            if number < since or not line.endswith("\n"):
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "unreadable", "line": number + 1})
    return out


def _control(folder: str | Path, name: str) -> Path:
    return Path(folder) / CONTROL_DIR / name


def request(folder: str | Path, name: str) -> Path:
    """Asks the trainer writing to ``folder`` to ``stop`` or ``save-now`` after its current step."""
    if name not in (STOP, SAVE_NOW):
        raise ValueError(f"unknown request {name!r} (use {STOP!r} or {SAVE_NOW!r})")
    path = _control(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def requested(folder: str | Path, name: str) -> bool:
    """True while a ``stop`` / ``save-now`` request waits for the trainer to take it."""
    return _control(folder, name).exists()


def take_request(folder: str | Path, name: str) -> bool:
    """True (and the request is consumed) if ``name`` was requested."""
    path = _control(folder, name)
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def clear_requests(folder: str | Path) -> None:
    for name in (STOP, SAVE_NOW):
        take_request(folder, name)


class Throughput:
    """Optimizer steps per second over a sliding window and the time left, for the ``step`` events."""

    def __init__(self, window: int = 20):
        self.window = window
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.monotonic())
        self.times = self.times[-(self.window + 1):]

    def rate(self) -> float | None:
        if len(self.times) < 2:
            return None
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)

    def eta(self, remaining_steps: int) -> float | None:
        rate = self.rate()
        return None if rate is None else remaining_steps / rate


@dataclass
class RunStatus:
    """What a run's event log says: its state, the losses so far (after the last resume), the last step's event,
    the last validation, sample image paths and the last error's details."""

    state: str = "not started"  # not started, starting, running, done, stopped, error
    losses: list[float] = field(default_factory=list)
    last_step: dict | None = None
    validation: dict | None = None
    samples: list[str] = field(default_factory=list)
    error: str | None = None


def run_status(folder: str | Path) -> RunStatus:
    """Reads ``folder/events.jsonl`` into a :class:`RunStatus` (a resume replays the losses from its checkpoint)."""
    events = read_events(folder)
    status = RunStatus()
    if not events:
        return status
    status.state = "running"
    for e in events:
        kind = e.get("event")
        if kind == "start":
            status.losses = status.losses[:e.get("global_step") or 0]
            status.state = "running"
        elif kind == "step":
            status.losses.append(e["loss"])
            status.last_step = e
        elif kind == "sample":
            status.samples += e.get("images", [])
        elif kind == "validation":
            status.validation = e
        elif kind in ("done", "stopped", "error"):
            status.state = kind
            if kind == "error":
                status.error = e.get("details") or e.get("message")
    if events[-1].get("event") == "start":
        status.state = "starting"
    return status

"""The training job in the terminal: one line per event worth a glance (loading, caching, each logged step,
checkpoints, the end), from the same records that go to ``events.jsonl``."""

from __future__ import annotations

import sys


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def progress_line(record: dict, stages: list[str] | None = None) -> str | None:
    """The terminal line of one event record, or None for records the terminal does not show.

    A step reads ``step 3/24 [stage 1/2 unpaired-64] loss 0.1234 lr 1.00e-03 2.41 it/s ETA 00:09``.
    """
    kind = record.get("event")
    if kind in ("loading", "caching"):
        return record.get("message")
    if kind == "warning":
        return f"warning: {record.get('message')}"
    if kind == "start":
        resumed = record.get("resumed_from")
        return (f"training {record.get('total_steps')} steps on {record.get('processes', 1)} process(es)"
                + (f", resuming at step {record.get('global_step')}" if resumed else ""))
    if kind == "stage":
        return (f"stage {record['stage'] + 1}: {record.get('name')} ({record.get('steps')} steps, micro batch "
                f"{record.get('micro_batch')})")
    if kind == "step":
        stage = record.get("stage", 0)
        name = stages[stage] if stages and stage < len(stages) else ""
        total_stages = f"/{len(stages)}" if stages else ""
        rate = record.get("it_s")
        loss = record.get("loss")
        return (f"step {record['step']}/{record.get('total_steps')} [stage {stage + 1}{total_stages}"
                f"{' ' + name if name else ''}] loss {loss:.4f} lr {record.get('lr', 0):.2e} "
                f"{'--' if rate is None else f'{rate:.2f}'} it/s ETA {_clock(record.get('eta_s'))}")
    if kind == "checkpoint":
        return f"checkpoint at step {record.get('step')} ({record.get('reason')}): {record.get('path')}"
    if kind == "sample":
        return f"samples at step {record.get('step')}: {len(record.get('images', []))} image(s)"
    if kind == "validation":
        scores = ", ".join(f"{k} {record[k]:.4f}" for k in ("clip_i", "dino_i", "clip_t")
                           if isinstance(record.get(k), (int, float)))
        return f"validation at step {record.get('step')}: {scores or 'no scores'}"
    if kind == "export":
        return "exported " + ", ".join(record.get("paths", []))
    return None


class TerminalProgress:
    """An :class:`trainer.events.EventLog` listener that prints :func:`progress_line` of each record."""

    def __init__(self, stream=None):
        self.stream = stream
        self.stages: list[str] = []

    def __call__(self, record: dict) -> None:
        if record.get("event") == "start":
            self.stages = [s.get("name", "") for s in record.get("stages", [])]
        line = progress_line(record, self.stages)
        if line:
            print(line, file=self.stream or sys.stdout, flush=True)

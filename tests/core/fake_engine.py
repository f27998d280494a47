"""The real :class:`core.engine.Engine` (request checks, seeds, records, progress) around a stand-in pipeline
(:meth:`core.engine.Engine.from_pipeline`), for tests of what calls the engine (stories, evaluation)."""

from __future__ import annotations

from core.engine import Engine

PROVENANCE = {"models": {"spec": "tiny"}, "dtype": "float32", "preset": "full"}


class FakeEngine(Engine):
    """The engine, listing in ``loads`` the text adapter of every :meth:`load` call (the engine calls it once per
    request, the callers may call it first)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads: list[str | None] = []

    def load(self, report=None, text_adapter=None):
        self.loads.append(str(text_adapter) if text_adapter else None)
        return super().load(report, text_adapter)


def fake_engine(pipe) -> FakeEngine:
    """The engine around ``pipe`` (any callable taking the pipeline's keyword arguments and returning an object with
    ``images`` and ``notes``), kept as ``fake``; the records' provenance is :data:`PROVENANCE`."""
    engine = FakeEngine.from_pipeline(pipe, "tiny", preset="full", provenance=PROVENANCE)
    engine.fake = pipe
    return engine

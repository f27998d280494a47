"""An engine on a fake pipeline: the real :class:`core.engine.Engine` (request checks, seeds, records, progress)
with nothing loaded, for tests of what calls the engine (stories, evaluation)."""

from __future__ import annotations

from core.engine import Engine

PROVENANCE = {"models": {"spec": "tiny"}, "dtype": "float32", "preset": "full"}


class FakeEngine(Engine):
    """``Engine.generate`` calling ``pipe`` (any callable taking the pipeline's keyword arguments and returning an
    object with ``images`` and ``notes``). ``loads`` lists the text adapter of every :meth:`load` call (the engine
    calls it once per request, the callers may call it first); the provenance is fixed (:data:`PROVENANCE`)."""

    def __init__(self, pipe):
        super().__init__("tiny", preset="full")
        self.fake = pipe
        self.loads: list[str | None] = []

    @property
    def calls(self) -> list:
        return self.fake.calls

    def load(self, report=None, text_adapter=None):
        self.loads.append(str(text_adapter) if text_adapter else None)
        return self.fake

    def provenance(self) -> dict:
        return {**PROVENANCE, "models": dict(PROVENANCE["models"])}

"""Engine.from_pipeline: the engine around a pipeline the caller already has (nothing loads)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.loading.memory import MemoryAdviceError
from core.request import GenerationRequest


class StandIn:
    """Called like the pipeline; ``fail`` raises it instead of drawing."""

    def __init__(self, fail: BaseException | None = None):
        self.fail, self.seeds = fail, []

    def __call__(self, **kwargs):
        if self.fail is not None:
            raise self.fail
        self.seeds.append(kwargs["generator"].initial_seed())
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]))], notes=[])


def test_requests_run_on_the_given_pipeline_with_its_records():
    pipe = StandIn()
    provenance = {"models": {"spec": "mine"}, "dtype": "float32", "preset": "full"}
    engine = Engine.from_pipeline(pipe, "mine", provenance=provenance, loaded_as="built here")
    assert engine.loaded and engine.pipe is pipe and engine.steps == ["built here"]
    result = engine.generate(GenerationRequest("a cat", width=32, height=32, steps=1, seed=5, images=2))
    assert pipe.seeds == result.seeds and len(result.images) == 2
    assert (result.records[0].models, result.records[0].preset) == ({"spec": "mine"}, "full")
    assert engine.provenance() == provenance and engine.provenance() is not provenance


def test_without_sources_or_provenance_the_records_name_the_models_as_given():
    engine = Engine.from_pipeline(StandIn(), "built in memory", dtype="float32")
    record = engine.generate(GenerationRequest("a cat", width=32, height=32, steps=1, seed=5)).records[0]
    assert record.models["base"] == record.models["spec"] == record.models["adapter"] == "built in memory"
    assert (record.dtype, record.preset) == ("float32", "full")


def test_out_of_memory_is_advised_under_a_preset_and_passes_as_it_is_without_one():
    request = GenerationRequest("a cat", width=32, height=32, steps=1, seed=5)
    with pytest.raises(MemoryAdviceError, match="preset 'full'"):
        Engine.from_pipeline(StandIn(torch.OutOfMemoryError("fake")), provenance={}).generate(request)
    with pytest.raises(torch.OutOfMemoryError, match="fake"):
        Engine.from_pipeline(StandIn(torch.OutOfMemoryError("fake")), preset=None, provenance={}).generate(request)

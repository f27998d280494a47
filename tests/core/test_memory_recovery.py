"""Out of GPU memory during a generation: memory is freed, the message names the next preset, the app keeps working.

The error is injected into the tiny pipeline's transformer forward, the way a CUDA allocation failure surfaces in
the middle of the denoising loop.
"""

import numpy as np
import pytest
import torch

from core.loading import memory
from core.loading.memory import MemoryAdviceError, out_of_memory_advice


def _generate(pipe, characters=()):
    prompt = "a [hero] in a park" if characters else "a park"
    return pipe(prompt, characters=list(characters), num_inference_steps=2, width=32, height=32,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]


@pytest.fixture
def hero():
    from benchmarks.bench import bench_character

    return bench_character(64)


def test_out_of_memory_in_the_transformer_is_advised_and_the_pipeline_recovers(tiny_pipe, hero, monkeypatch):
    reference = _generate(tiny_pipe, [hero])
    freed = []
    real_free = memory.free_memory
    monkeypatch.setattr(memory, "free_memory", lambda: (freed.append(True), real_free()))

    real_forward = tiny_pipe.transformer.forward
    calls = []

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second step: mid-loop, with the character's tokens live
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_pipe.transformer, "forward", failing_forward)
    with pytest.raises(MemoryAdviceError) as info:
        with out_of_memory_advice("full", width=32, height=32, bitsandbytes_ok=True):
            _generate(tiny_pipe, [hero])
    message = str(info.value)
    assert info.value.preset == "full" and info.value.next_preset == "balanced"
    assert "preset 'balanced'" in message and "\n" not in message
    assert freed == [True]
    assert isinstance(info.value, RuntimeError)  # the CLI prints RuntimeErrors as one line

    with out_of_memory_advice("full", width=32, height=32):  # the next request goes through
        again = _generate(tiny_pipe, [hero])
    np.testing.assert_allclose(again, reference, atol=1e-5)
    assert len(calls) > 2


def test_without_bitsandbytes_the_advice_names_the_quanto_alternative_preset(tiny_pipe, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("injected")

    monkeypatch.setattr(tiny_pipe.transformer, "forward", oom)
    with pytest.raises(MemoryAdviceError) as info:
        with out_of_memory_advice("balanced", width=32, height=32, bitsandbytes_ok=False):
            _generate(tiny_pipe)
    assert info.value.next_preset == "fp8"
    with pytest.raises(MemoryAdviceError, match="smallest"):
        with out_of_memory_advice("streamed", width=32, height=32):
            _generate(tiny_pipe)

"""Ahead-of-time compilation for ZeroGPU (app.spaces.compile_ahead_of_time) on the tiny models, with a stand-in
``spaces`` module whose ``aoti_compile`` runs the exported program as it is (the real one needs ZeroGPU)."""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch
from PIL import Image

from app.spaces import compile_ahead_of_time
from core.conditioning.character import Character
from core.engine import Engine
from core.request import GenerationRequest


class _Captured(Exception):
    pass


def _fake_spaces(calls: list):
    """``aoti_capture`` (the first call's arguments), ``aoti_compile`` (the exported program, counted), ``GPU``."""
    module = types.ModuleType("spaces")

    @contextlib.contextmanager
    def aoti_capture(target):
        call = types.SimpleNamespace(args=(), kwargs={})
        original = target.forward

        def capture(*args, **kwargs):
            call.args, call.kwargs = args, kwargs
            raise _Captured

        target.forward = capture
        try:
            yield call
        except _Captured:
            pass
        finally:
            target.forward = original

    def aoti_compile(exported):
        program = exported.module()

        def run(**kwargs):
            calls.append(1)
            return program(**kwargs)

        return run

    module.aoti_capture, module.aoti_compile = aoti_capture, aoti_compile
    module.GPU = lambda duration: (lambda fn: fn)
    return module


def _latents(engine, characters, prompt="[a] in a park", seed=1):
    request = GenerationRequest(prompt, characters=characters, steps=2, width=64, height=64, seed=seed)
    return engine.generate(request, pipeline_options={"output_type": "latent"}).images[0]


@pytest.mark.slow
def test_the_compiled_program_serves_its_layout_and_eager_the_rest(tiny_models, monkeypatch, one_thread):
    calls = []
    monkeypatch.setitem(sys.modules, "spaces", _fake_spaces(calls))
    eager = Engine("tiny", preset="full")
    aot = Engine("tiny", preset="full", speed="full")
    lines = compile_ahead_of_time(aot, 64, 64, force=True)
    assert lines and lines[0].startswith("ahead-of-time compiled the transformer for one character at 64x64")

    a = Character(Image.new("RGB", (64, 64), (200, 30, 30)), name="a", scale=0.7)
    assert (_latents(aot, [a]) - _latents(eager, [a])).abs().max().item() < 1e-5
    assert len(calls) == 2  # both steps through the compiled program, at another scale than the capture's
    b = Character(Image.new("RGB", (64, 64), (20, 30, 230)), name="b", mask=(0.5, 0, 1, 1))
    two = [Character(a.image, name="a", mask=(0, 0, 0.5, 1)), b]
    assert torch.equal(_latents(aot, two, "[a] and [b]"), _latents(eager, two, "[a] and [b]"))  # eager
    assert len(calls) == 2


def test_without_the_spaces_package_the_space_runs_eagerly(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    engine = Engine("tiny", preset="full", speed="full")
    lines = compile_ahead_of_time(engine, 64, 64, force=True)
    assert lines == ["ahead-of-time compile: off (the spaces package is not installed); the transformer runs eagerly"]
    assert compile_ahead_of_time(Engine("tiny"), force=True) == []  # speed off: nothing to compile
    assert compile_ahead_of_time(engine) == []  # not on ZeroGPU

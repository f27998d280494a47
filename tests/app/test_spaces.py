"""The studio built with the Hugging Face Spaces / ZeroGPU environment: spaces.GPU wrapping, no Trainer tab."""

from __future__ import annotations

import sys
import types

import pytest

from app import spaces as studio_spaces


@pytest.fixture
def zero_gpu(monkeypatch):
    """ZeroGPU's environment variables and a stand-in ``spaces`` package that records ``spaces.GPU`` calls."""
    calls = []

    def gpu(fn=None, duration=60):
        def wrap(inner):
            def wrapped(*args, **kwargs):
                calls.append(duration(*args, **kwargs) if callable(duration) else duration)
                return inner(*args, **kwargs)
            return wrapped
        return wrap(fn) if fn is not None else wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACE_ID", "someone/instantcharacter-studio")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("INSTANTCHARACTER_MODELS", "tiny")
    monkeypatch.setenv("INSTANTCHARACTER_PRELOAD", "0")
    return calls


def test_detection(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not studio_spaces.on_spaces() and not studio_spaces.on_zero_gpu()
    fn = lambda: 1  # noqa: E731
    assert studio_spaces.gpu_function(fn, 60) is fn  # untouched off ZeroGPU, no spaces package needed


def test_duration_fits_the_request():
    small = studio_spaces.estimate_duration(512, 512, 8)
    large = studio_spaces.estimate_duration(2048, 2048, 28, images=4, true_cfg=True, characters=2)
    assert small == studio_spaces.MIN_DURATION and large == studio_spaces.MAX_DURATION
    assert small < studio_spaces.estimate_duration(1024, 1024, 28) < large


def test_space_build_hides_trainer_and_wraps_gpu(zero_gpu, monkeypatch, tiny_models, character_files):
    from app import studio
    from app.tabs import generate_events as ev

    fake_tab = types.SimpleNamespace(build=lambda ctx: types.SimpleNamespace(built=True))
    monkeypatch.setattr(studio, "_plugin", lambda name: fake_tab)  # pretend story.py and train.py exist
    demo, kwargs = studio.build_space()
    assert "story" in demo.studio_tabs and "train" not in demo.studio_tabs
    assert kwargs["max_file_size"] == studio.MAX_UPLOAD and "server_name" not in kwargs

    events = ev.GenerateEvents(studio.StudioContext(studio.StudioSettings(models="tiny")))
    paths, *_ = events.generate(None, lambda *a, **k: None, *ev.form_values(
        image1=str(character_files[0]), prompt="a portrait", steps=1, width=32, height=32), [])
    assert len(paths) == 1 and zero_gpu == [studio_spaces.MIN_DURATION]

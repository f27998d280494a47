"""Cancel stops at the next denoising step: the engine skips the rest of the image and its VAE decode; a Story
render cancelled inside a panel returns within about one step (measured and printed), keeps the panels done, and
the next job runs at once and resumes the render."""

from __future__ import annotations

import statistics
import threading
import time

import gradio as gr
import pytest
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs import story_events as ev
from core.story.manifest import load_manifest

STEPS = 12
STORY = f"""title: Cancel Test
size: 128x128
steps: {STEPS}
seed: 3
layout: grid 2x2
page: 100x100mm
dpi: 72
character Ann: ann.png
---
[Ann@left] on a hill  # One.
[Ann] by the sea  # Two.
a forest at night [NC]  # Three.
[Ann] waves  # Four.
"""


@pytest.fixture
def ctx(tiny_models, tmp_path):
    return StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "outputs"))


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "outputs" / "story"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 48), (200, 50, 50)).save(folder / "ann.png")
    return folder


@pytest.fixture
def quiet(monkeypatch):
    shown = []
    monkeypatch.setattr(gr, "Info", shown.append)
    return shown


class Clock:
    """A progress callback that stamps every message."""

    def __init__(self, on_message=None):
        self.calls: list[tuple[float, str]] = []
        self.on_message = on_message

    def __call__(self, fraction, desc=None):
        self.calls.append((time.perf_counter(), desc or ""))
        if self.on_message is not None:
            self.on_message(desc or "")

    def step_times(self) -> list[float]:
        stamps = [t for t, desc in self.calls if ": step " in desc]
        return [b - a for a, b in zip(stamps, stamps[1:])]


def test_engine_cancel_skips_the_rest_and_the_vae_decode(ctx, monkeypatch):
    from core.request import GenerationRequest

    engine = ctx.engine()
    pipe = engine.pipe
    decoded = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: decoded.append(1) or decode(*a, **k))
    cancel = threading.Event()
    steps = []

    def report(fraction, message):
        steps.append(message)
        if message.endswith(f"step 3/{STEPS}"):
            cancel.set()

    result = engine.generate(GenerationRequest("a hill", steps=STEPS, width=64, height=64, seed=1, images=2),
                             report=report, cancel=cancel)
    assert result.cancelled and result.images == [] and decoded == []
    assert [m for m in steps if "step" in m][-1] == f"Image 1/2: step 3/{STEPS}"  # not one step more
    assert result.notes[-1] == "cancelled: 0 of 2 images finished"
    again = engine.generate(GenerationRequest("a hill", steps=2, width=64, height=64, seed=1))
    assert len(again.images) == 1 and decoded == [1]  # the engine is free and whole after a cancel


@pytest.mark.slow
def test_cancel_inside_a_story_panel_frees_the_queue_within_a_step(ctx, folder, quiet, one_thread):
    events = ev.StoryEvents(ctx)
    state = {}

    def on_message(desc):
        if desc.startswith("Panel 2 ") and desc.endswith(f"step 4/{STEPS}") and "cancel" not in state:
            state["cancel"] = time.perf_counter()
            assert events.cancel(None)["value"] == "Cancelling..."

    clock = Clock(on_message)
    events.runs.queued("local")
    notes, rows, gallery, pages, pdf, archive = events.render(STORY, str(folder), False, None, clock)
    returned = time.perf_counter()
    latency = returned - state["cancel"]
    step = statistics.median(clock.step_times())
    print(f"\ncancel latency: {latency * 1000:.0f} ms from Cancel to a free queue; one denoising step: "
          f"{step * 1000:.0f} ms (tiny models, 128x128-pixel budget, 1 CPU thread)")
    assert "Cancelled" in notes and pdf == gr.update()
    assert [row[-1] for row in rows] == ["done", "not rendered", "not rendered", "not rendered"]
    assert latency < 2 * step + 0.5, (latency, step)
    assert not [d for _, d in clock.calls if d.startswith("Panel 2 ") and d.endswith(f"step 5/{STEPS}")]
    assert events.wait_until_stopped(None)["value"] == "Cancel"

    # the next job starts at once and resumes: panel 1 is kept, the others are drawn
    started = time.perf_counter()
    second = Clock()
    notes, rows, *_ = events.render(STORY, str(folder), False, None, second)
    first_step = next(t for t, d in second.calls if ": step 1/" in d)
    assert "Rendered 3 panel(s); 1 were already done" in notes
    assert [row[-1] for row in rows] == ["done"] * 4
    assert first_step - started < 30  # no wait on a job still running behind the cancelled one
    out = ev.render_dir_for(ctx, ev.parse_text(STORY, str(folder), ctx.paths), None)
    assert sorted(load_manifest(out).done()) == [0, 1, 2, 3]


def test_cancel_while_queued_drops_the_render(ctx, folder, quiet):
    events = ev.StoryEvents(ctx)
    events.runs.queued("local")
    assert events.cancel(None)["value"] == "Cancelling..."
    notes, rows, *_ = events.render(STORY, str(folder), False, None, Clock())
    assert "Cancelled" in notes and {row[-1] for row in rows} == {"not rendered"}
    assert quiet == ["Cancelled before it started"]


@pytest.mark.slow
def test_cancel_on_the_launched_studio_frees_the_queue_for_the_next_job(studio):
    """Through the server (gradio_client, one session): Cancel during a long Generate; that job returns within
    about a step, and the next one runs at once on the same queue."""
    from gradio_client import Client

    from app.tabs.generate_events import form_values

    _, _, url = studio
    client = Client(url, verbose=False)
    long_run = client.submit(*form_values(prompt="a hill", steps=100, width=128, height=128, seed=1,
                                          randomize_seed=False), api_name="/generate")
    deadline = time.monotonic() + 120
    while not any("step" in str(getattr(s, "progress_data", "") or "") for s in [long_run.status()]):
        assert time.monotonic() < deadline and not long_run.done()
        time.sleep(0.05)
    cancelled = time.perf_counter()
    client.predict(api_name="/cancel")
    gallery, notes, seed = long_run.result(timeout=120)
    freed = time.perf_counter() - cancelled
    assert "cancelled: 0 of 1 images finished" in notes and gallery == []
    started = time.perf_counter()
    gallery, notes, seed = client.predict(*form_values(prompt="a hill", steps=2, width=64, height=64, seed=2,
                                                       randomize_seed=False), api_name="/generate")
    print(f"\nlaunched studio: Generate freed {freed * 1000:.0f} ms after Cancel; the next job took "
          f"{time.perf_counter() - started:.1f} s")
    assert len(gallery) == 1 and freed < 5.0

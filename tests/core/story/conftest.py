"""Fakes for story tests: a pipeline that draws a deterministic image from (prompt, seed), and an engine on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.core.fake_engine import fake_engine as engine_around

REPO = Path(__file__).resolve().parents[3]
STORIES = REPO / "assets" / "stories"


class FakeOutput:
    def __init__(self, images):
        self.images = images
        self.notes = []


class FakePipe:
    """Returns an image that depends only on prompt, seed and size; counts calls and 'encodes' each character
    image once per distinct content, like the real pipeline's content-keyed cache. `fail_on` makes prompts
    containing that text raise (an out-of-memory stand-in)."""

    controlnet = "fake"  # control images need no ControlNet to be loaded

    def __init__(self, fail_on: str | None = None):
        self.calls: list[dict] = []
        self.encoded: dict[bytes, int] = {}  # image content digest -> times its features were computed
        self.fail_on = fail_on

    def _features(self, image: Image.Image) -> bytes:
        key = hashlib.sha256(image.tobytes()).digest()
        if key not in self.encoded:  # a cache miss: features computed
            self.encoded[key] = 0
        self.encoded[key] += 1
        return key

    def __call__(self, prompt, characters=(), negative_prompt=None, true_cfg_scale=1.0, num_inference_steps=28,
                 guidance_scale=3.5, height=1024, width=1024, generator=None, output_type="pil", **kwargs):
        seed = generator.initial_seed()
        self.calls.append({"prompt": prompt, "seed": seed, "characters": list(characters),
                           "height": height, "width": width, **kwargs})
        for character in characters:
            self._features(character.image)
        if self.fail_on and self.fail_on in prompt:
            raise RuntimeError("CUDA out of memory (fake)")
        digest = hashlib.sha256(f"{prompt}|{seed}|{width}x{height}".encode()).digest()
        image = Image.new("RGB", (width, height), tuple(digest[:3]))
        ImageDraw.Draw(image).rectangle((2, 2, width // 2, height // 2), fill=tuple(digest[3:6]))
        return FakeOutput([image])


def fake_pipe_engine(pipe: FakePipe | None = None):
    """The real engine around a :class:`FakePipe` (a new one by default): nothing loads; its provenance is
    ``{"models": {"spec": "tiny"}, "dtype": "float32", "preset": "full"}``."""
    return engine_around(pipe if pipe is not None else FakePipe())


def make_character_image(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


@pytest.fixture
def story_dir(tmp_path) -> Path:
    """A folder with two character images, ready for story text."""
    make_character_image(tmp_path / "chars" / "ann.png", (200, 30, 30))
    make_character_image(tmp_path / "chars" / "bob.png", (30, 30, 200))
    return tmp_path


def small_story_text(panels: int = 5, layout: str = "grid 2x2") -> str:
    lines = [
        "title: Test Story",
        "style: ink drawing",
        "size: 32x32",
        "seed: 5",
        f"layout: {layout}",
        "page: 100x150mm",
        "dpi: 72",
        "character Ann: chars/ann.png",
        "    scale: 0.8",
        "character Bob: chars/bob.png",
        "---",
    ]
    for i in range(panels):
        if i % 3 == 2:
            lines.append(f"an empty road number {i} [NC]  # caption {i}")
        else:
            lines.append(f"[Ann@left] greets [Bob@right] in scene {i}  # caption {i}")
            lines.append(f"  > Ann: hello {i}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_pipe() -> FakePipe:
    return FakePipe()


@pytest.fixture
def fake_engine(fake_pipe):
    return fake_pipe_engine(fake_pipe)

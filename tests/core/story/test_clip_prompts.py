"""Prompts that fit the encoders: CLIP gets the start of a panel's text that fits it (the panel's own prompt first,
then the style), T5 the whole text; no CLIP truncation warning, and one note per story, not per panel."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from core.conditioning.prompt import CLIP_CUT_NOTE, clip_text
from core.story.load import load_story
from tests.core.story.conftest import STORIES

EXAMPLES = sorted(STORIES.glob("*.story"))


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    """Everything diffusers logs (its loggers do not propagate to the root, so pytest's caplog misses them)."""
    handler = Captured()
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def test_clip_text_keeps_whole_words_that_fit(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    limit = tokenizer.model_max_length
    short = "a red fox"
    assert clip_text(tokenizer, short) == (short, False)
    long = " ".join(f"word{i}" for i in range(200))
    cut, was_cut = clip_text(tokenizer, long)
    assert was_cut and long.startswith(cut) and long[len(cut)] == " "
    assert len(tokenizer(cut)["input_ids"]) <= limit < len(tokenizer(cut + " word")["input_ids"]) + 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_panel_of_the_examples_makes_clip_truncate(tiny_pipe, diffusers_log, monkeypatch, path):
    """Each panel's engine prompt (panel prompt first, then the style) through the pipeline's prompt encoding:
    CLIP gets its start, T5 all of it."""
    story = load_story(path)
    seen = []
    encode = tiny_pipe.encode_prompt
    monkeypatch.setattr(tiny_pipe, "encode_prompt", lambda **kw: seen.append(kw) or encode(**kw))
    tiny_pipe.clear_caches()
    cut = 0
    for panel in story.panels:
        text = story.engine_prompt(panel)
        assert text.startswith(dataclasses.replace(story, style="").engine_prompt(panel))  # the panel's words first
        notes: list[str] = []
        tiny_pipe.cached_prompt_embeds(text, tiny_pipe.device, 512, notes)
        cut += bool(notes)
        clip_sees, was_cut = clip_text(tiny_pipe.tokenizer, text)
        if seen:
            call = seen.pop()
            assert call["prompt"] == clip_sees and (call["prompt_2"] or call["prompt"]) == text
    assert not [m for m in diffusers_log.messages if "truncated" in m and "CLIP" in m], diffusers_log.messages
    assert cut > 0  # the tiny CLIP (77 tokens of single bytes) is far shorter than these prompts: cutting happened


def test_a_story_render_gives_the_clip_note_once(tiny_models, diffusers_log, tmp_path):
    from core.engine import Engine
    from core.story.render import render_story

    story = dataclasses.replace(load_story(STORIES / "fishing-trip.story"), width=32, height=32, steps=1)
    story = dataclasses.replace(story, panels=story.panels[:3])
    engine = Engine("tiny", preset="full", device="cpu")
    result = render_story(story, engine, tmp_path / "out")
    assert len(result.rendered) == 3, result.failed
    limit = engine.pipe.tokenizer.model_max_length
    assert result.notes.count(CLIP_CUT_NOTE.format(limit=limit)) == 1
    assert not [m for m in diffusers_log.messages if "truncated" in m], diffusers_log.messages

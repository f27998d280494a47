"""``control: KIND path [SCALE]`` per panel: parsed with the path relative to the story (through the path policy),
in the settings hash only when present, sent to the engine, recorded, saved beside the panel; JSON round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from core.io.path_policy import PathPolicy
from core.story.load import load_story
from core.story.manifest import panel_filename
from core.story.model import StoryError
from core.story.parse_text import parse_story
from core.story.render import render_story
from core.story.settings import panel_settings
from tests.core.story.conftest import fake_pipe_engine, small_story_text


@pytest.fixture
def posed_dir(story_dir):
    (story_dir / "poses").mkdir()
    Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)).save(
        story_dir / "poses" / "p3.png")
    return story_dir


def _with_control(line: str, panels: int = 2) -> str:
    text = small_story_text(panels)
    first = text.split("---\n", 1)
    body = first[1].splitlines()
    body.insert(1, f"  {line}")
    return first[0] + "---\n" + "\n".join(body) + "\n"


def test_a_panel_control_line(posed_dir):
    story = parse_story(_with_control("control: pose poses/p3.png 0.6"), base_dir=posed_dir)
    [control] = story.panels[0].controls
    assert (control.kind, control.image, control.scale) == ("pose", posed_dir / "poses" / "p3.png", 0.6)
    assert story.panels[1].controls == ()
    assert "controls" in panel_settings(story, story.panels[0])
    assert "controls" not in panel_settings(story, story.panels[1])  # the hash of before
    assert parse_story(_with_control("control: depth poses/p3.png"), base_dir=posed_dir).panels[0].controls[0].scale == 0.7


@pytest.mark.parametrize("line, message", [
    ("control: scribble poses/p3.png", "control kind 'scribble' unknown: use one of pose"),
    ("control: pose poses/p3.png 4", "control scale '4' is out of range: use 0 to 2"),
    ("control: pose poses/missing.png", "missing pose control image: poses/missing.png"),
    ("control: pose", "bad control 'pose': expected 'control: KIND path/to/image.png [SCALE]'"),
])
def test_bad_control_lines(posed_dir, line, message):
    with pytest.raises(StoryError, match=re.escape(message)):
        parse_story(_with_control(line), base_dir=posed_dir)


def test_a_control_outside_the_allowed_folders_is_refused(posed_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    story_file = posed_dir / "story.txt"
    story_file.write_text(_with_control(f"control: pose {outside}"))
    with pytest.raises(StoryError, match="is outside the folders this studio may use"):
        load_story(story_file, paths=PathPolicy([posed_dir]))
    story_file.write_text(_with_control("control: pose poses/p3.png"))
    assert load_story(story_file, paths=PathPolicy([posed_dir])).panels[0].controls


def test_render_sends_records_and_saves_the_control(posed_dir, tmp_path, fake_pipe):
    from core.io.metadata import read_record

    story = parse_story(_with_control("control: canny poses/p3.png 0.5"), base_dir=posed_dir)
    render_story(story, fake_pipe_engine(fake_pipe), tmp_path / "out")
    control = fake_pipe.calls[0]["control"][0]
    assert (control.kind, control.scale, control.image.size) == ("canny", 0.5, (32, 32))
    assert "control" not in fake_pipe.calls[1]
    record = read_record(tmp_path / "out" / panel_filename(0))
    assert record.control[0]["kind"] == "canny"
    assert (tmp_path / "out" / panel_filename(0)).parent.joinpath(record.control[0]["file"]).is_file()


def test_json_round_trip(posed_dir):
    story = parse_story(_with_control("control: pose poses/p3.png 0.6"), base_dir=posed_dir)
    saved = story.save_json(posed_dir / "story.json")
    again = load_story(saved)
    assert again.panels[0].controls == story.panels[0].controls

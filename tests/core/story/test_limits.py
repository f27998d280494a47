"""Every story input is bounded by core.limits: each over-limit value is a problem on its line (or field) that says
the value and the limit, in the text and the JSON form; wrong JSON types are problems, never TypeErrors."""

from __future__ import annotations

import json
import time

import pytest

from core.limits import (
    MAX_BUBBLES_PER_PANEL,
    MAX_CAPTION_CHARS,
    MAX_CHARACTERS,
    MAX_DIALOGUE_CHARS,
    MAX_PAGES,
    MAX_PANELS,
    MAX_PROMPT_CHARS,
    MAX_STORY_BYTES,
)
from core.story.geometry import plan_pages
from core.story.load import load_story
from core.story.model import StoryError
from core.story.parse_checks import MAX_PROBLEMS
from core.story.parse_json import story_from_dict
from core.story.parse_text import check_story_text, parse_story
from tests.core.story.conftest import small_story_text

HEAD = "character Ann: chars/ann.png\n---\n"


def problems(story_dir, text: str) -> list[str]:
    with pytest.raises(StoryError) as info:
        parse_story(text, base_dir=story_dir)
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("steps: 1000000000", "line 1: steps must be from 1 to 100, got 1000000000"),
        ("steps: 0", "line 1: steps must be from 1 to 100, got 0"),
        ("steps: " + "9" * 5000, "line 1: bad steps '9999999999"),
        ("dpi: 1200", "line 1: dpi must be from 72 to 600, got 1200"),
        ("dpi: 36", "line 1: dpi must be from 72 to 600, got 36"),
        ("seed: 4294967296", "line 1: seed must be from 0 to 4294967295, got 4294967296"),
        ("seed: -1", "line 1: seed must be from 0 to 4294967295, got -1"),
        ("size: 4112x16", "line 1: bad size '4112x16': width must be from 16 to 4096, got 4112"),
        ("guidance: 45", "line 1: guidance must be from 0 to 30, got 45.0"),
        ("guidance: nan", "line 1: guidance must be a number from 0 to 30, got nan"),
        ("true_cfg: 0.5", "line 1: true_cfg must be from 1 to 20, got 0.5"),
        ("title: " + "t" * 301, "line 1: title is 301 characters long: the limit is 300"),
        ("style: " + "s" * 4001, "line 1: style is 4,001 characters long: the limit is 4,000"),
        ("negative: " + "n" * 4001, "line 1: negative is 4,001 characters long: the limit is 4,000"),
        ("page: A3\ndpi: 600", "line 2: one page (A3 portrait) at 600 dpi is 7016x9921 pixels (69.6 million): "
                               "the limit is 40 million; lower the dpi or use a smaller page"),
        ("page: A5\nmargin: 60mm", "line 2: margin 60 mm is more than a quarter of the A5 portrait page's shorter "
                                   "side: the limit is 37 mm"),
    ],
)
def test_header_values_over_their_limits(story_dir, header, expected):
    lines = problems(story_dir, header + "\n" + HEAD + "[Ann] waves\n")
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_character_limits(story_dir):
    many = "".join(f"character C{k}: chars/ann.png\n" for k in range(1, MAX_CHARACTERS + 2))
    lines = problems(story_dir, many + "---\n[C9] waves\n")
    assert lines == [f"line 9: character [C9] is number 9: a story has at most {MAX_CHARACTERS} characters"]
    long_name = "A" * 65
    assert problems(story_dir, f"character {long_name}: chars/ann.png\n---\n[NC] x\n")[0] == (
        f"line 1: character name '{long_name[:37]}...' is 65 characters long: the limit is 64")
    lines = problems(story_dir, "character Ann: chars/ann.png\n    description: " + "d" * 501 + "\n---\n[Ann] x\n")
    assert lines == ["line 1: the description of [Ann] is 501 characters long: the limit is 500"]
    lines = problems(story_dir, "character Ann: chars/ann.png\n    scale: 1e999\n---\n[Ann] x\n")
    assert lines == ["line 1: bad scale inf for [Ann]: expected 0..2"]


def test_panel_limits(story_dir):
    bubbles = "".join(f"  > Ann: line {k}\n" for k in range(MAX_BUBBLES_PER_PANEL + 1))
    assert problems(story_dir, HEAD + "[Ann] talks\n" + bubbles) == [
        f"line {3 + MAX_BUBBLES_PER_PANEL + 1}: speech bubble 7 of the panel on line 3: a panel has at most "
        f"{MAX_BUBBLES_PER_PANEL}"]
    assert problems(story_dir, HEAD + "[Ann] talks\n  > Ann: " + "w" * (MAX_DIALOGUE_CHARS + 1) + "\n") == [
        "line 4: the speech bubble is 301 characters long: the limit is 300"]
    assert problems(story_dir, HEAD + "[Ann] " + "p" * MAX_PROMPT_CHARS + "\n") == [
        "line 3: the prompt is 4,006 characters long: the limit is 4,000"]
    styled = "style: " + "s" * 3000 + "\n" + HEAD + "[Ann] " + "p" * 1500 + "\n"
    assert problems(story_dir, styled) == [
        "line 4: the prompt with the style is 4,508 characters long: the limit is 4,000"]
    assert problems(story_dir, HEAD + "[Ann] waves  # " + "c" * (MAX_CAPTION_CHARS + 1) + "\n") == [
        "line 3: the caption is 301 characters long: the limit is 300"]
    assert problems(story_dir, HEAD + "[Ann] waves\n  seed: 99999999999\n") == [
        "line 4: seed must be from 0 to 4294967295, got 99999999999"]


def test_too_many_panels_stops_at_the_first_one_over(story_dir):
    text = HEAD + "[Ann] waves\n" * 10_000
    started = time.perf_counter()
    lines = problems(story_dir, text)
    assert time.perf_counter() - started < 5
    assert lines == [f"line {3 + MAX_PANELS}: panel {MAX_PANELS + 1}: a story has at most {MAX_PANELS} panels"]
    story = parse_story(HEAD + "[Ann] waves\n" * MAX_PANELS, base_dir=story_dir)
    assert len(story.panels) == MAX_PANELS


def test_too_many_pages(story_dir):
    text = "layout: grid 1x1\n" + HEAD + "[Ann] waves\n" * (MAX_PAGES + 1)
    assert problems(story_dir, text) == [
        f"line 1: the story needs {MAX_PAGES + 1} pages: the limit is {MAX_PAGES} (use fewer panels, or a layout "
        "with more panels a page) with layout grid 1x1"]
    story = parse_story("layout: grid 1x1\n" + HEAD + "[Ann] waves\n" * MAX_PAGES, base_dir=story_dir)
    assert len(plan_pages(story)) == MAX_PAGES
    with pytest.raises(ValueError, match="the limit is 50"):  # wherever pages are planned
        plan_pages(story, panel_count=MAX_PAGES + 1)


def test_story_text_size_is_checked_first(story_dir, monkeypatch):
    import core.story.parse_text as fmt

    monkeypatch.setattr(fmt, "_parse_story", lambda *a: pytest.fail("parsed a huge story"))
    with pytest.raises(StoryError, match=r"^the story is 1,048,577 characters long: the limit is 1,048,576 bytes$"):
        parse_story("x" * (MAX_STORY_BYTES + 1), base_dir=story_dir)
    with pytest.raises(StoryError, match=r"^the story is 1,200,000 bytes: the limit is 1,048,576 bytes$"):
        check_story_text("é" * 600_000)
    with pytest.raises(StoryError, match="a story must be text, got list"):
        check_story_text(["[NC] x"])


def test_story_file_size_is_checked_before_reading(story_dir, tmp_path):
    path = tmp_path / "big.story"
    with open(path, "wb") as handle:
        handle.truncate(MAX_STORY_BYTES + 1)
    with pytest.raises(StoryError, match=f"story {path} is 1,048,577 bytes: the limit is 1,048,576 bytes"):
        load_story(path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(StoryError, match="bad JSON"):
        load_story(deep)


def test_problems_stop_after_a_few(story_dir):
    lines = problems(story_dir, "nonsense\n" * 10_000 + "---\n[NC] x\n")
    assert len(lines) == MAX_PROBLEMS + 1 and lines[-1] == f"stopped after {MAX_PROBLEMS} problems: fix these first"
    long_line = "x" * 100_000
    lines = problems(story_dir, long_line + "\n---\n[NC] x\n")
    assert len(lines[0]) < 200  # a message quotes a huge line cut short


# ------------------------------------------------------------------------------------------------ JSON
def story_json(story_dir) -> dict:
    return parse_story(small_story_text(2), base_dir=story_dir).to_dict(relative_to=story_dir)


def json_problems(story_dir, data) -> list[str]:
    with pytest.raises(StoryError) as info:
        story_from_dict(data, base_dir=story_dir)
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(steps=10**9), "steps must be from 1 to 100, got 1000000000"),
        (lambda d: d.update(steps="28"), "steps must be a whole number from 1 to 100, got '28'"),
        (lambda d: d.update(steps=10**300), "steps must be from 1 to 100, got 1000000000"),
        (lambda d: d.update(dpi=1200), "dpi must be from 72 to 600, got 1200"),
        (lambda d: d.update(seed=-5), "seed must be from 0 to 4294967295, got -5"),
        (lambda d: d.update(size="big"), "size must be [WIDTH, HEIGHT], got 'big'"),
        (lambda d: d.update(size=[4112, 16]), "bad size '4112x16': width must be from 16 to 4096, got 4112"),
        (lambda d: d.update(size=[True, 16]), "bad size 'Truex16'"),
        (lambda d: d.update(title=["a", "list"]), "title must be text, got list"),
        (lambda d: d.update(title="t" * 301), "title is 301 characters long: the limit is 300"),
        (lambda d: d.update(layout=7), "layout must be text, got int"),
        (lambda d: d.update(guidance="high"), "guidance must be a number from 0 to 30, got 'high'"),
        (lambda d: d.update(margin_mm=float("inf")), "margin_mm must be from 0 to 2000, got inf"),
        (lambda d: d.update(characters={"name": "Ann"}), "characters must be a list, got dict"),
        (lambda d: d["characters"].append("Zed"), "characters[2]: a character must be an object, got str"),
        (lambda d: d["characters"][0].update(image=["x.png"]), "characters[0]: image must be text, got list"),
        (lambda d: d["characters"][0].update(scale=5), "characters[0]: scale must be from 0 to 2, got 5"),
        (lambda d: d["characters"][0].update(scale=True),
         "characters[0]: scale must be a number from 0 to 2, got True"),
        (lambda d: d.update(seed=True), "seed must be a whole number from 0 to 4294967295, got True"),
        (lambda d: d.update(guidance=False), "guidance must be a number from 0 to 30, got False"),
        (lambda d: d.update(margin_mm=10**5000), "margin_mm must be from 0 to 2000, got a number too long to show"),
        (lambda d: d.update(seed=10**5000), "seed must be from 0 to 4294967295, got a number too long to show"),
        (lambda d: d.update(characters=[{"name": f"C{k}", "image": "chars/ann.png"} for k in range(9)]),
         "characters has 9 entries: the limit is 8"),
        (lambda d: d.update(panels="[NC] x"), "panels must be a list, got str"),
        (lambda d: d.update(panels=d["panels"] * 101), "panels has 202 entries: the limit is 200"),
        (lambda d: d["panels"].append(7), "panels[2]: a panel must be an object, got int"),
        (lambda d: d["panels"][0].update(prompt=42), "panels[0]: prompt must be text, got int"),
        (lambda d: d["panels"][0].update(prompt="p" * 4001), "panels[0]: prompt is 4,001 characters long"),
        (lambda d: d["panels"][0].update(caption="c" * 301), "panels[0]: caption is 301 characters long: the limit"),
        (lambda d: d["panels"][0].update(characters="Ann"), "panels[0]: characters must be a list, got str"),
        (lambda d: d["panels"][0].update(characters=[["Ann"]]), "panels[0]: a character name must be text, got list"),
        (lambda d: d["panels"][0].update(regions=["left"]), "panels[0]: regions must be an object, got list"),
        (lambda d: d["panels"][0].update(regions={"Ann": 3}), "panels[0]: the region of [Ann] must be text, got int"),
        (lambda d: d["panels"][0].update(dialogue=["hello"]),
         "panels[0]: dialogue[0]: a speech bubble must be an object, got str"),
        (lambda d: d["panels"][0].update(dialogue=[{"speaker": "Ann", "text": "w" * 301}]),
         "panels[0]: dialogue[0]: the speech bubble is 301 characters long: the limit is 300"),
        (lambda d: d["panels"][0].update(dialogue=[{"speaker": "Ann", "text": "hi"}] * 7),
         "panels[0]: dialogue has 7 entries: the limit is 6"),
        (lambda d: d["panels"][0].update(seed_pinned="yes"), "panels[0]: seed_pinned must be true or false"),
        (lambda d: d["panels"][0].update(seed_pinned=True, seed=2**40),
         "panels[0]: seed must be from 0 to 4294967295, got 1099511627776"),
        (lambda d: d["panels"][0].update(line="ten"), "panels[0]: line must be a whole number"),
    ],
)
def test_json_values_over_limits_or_of_the_wrong_type(story_dir, change, expected):
    data = story_json(story_dir)
    change(data)
    lines = json_problems(story_dir, data)
    assert any(line.startswith(expected) for line in lines), lines


@pytest.mark.parametrize(
    ("key", "written", "value", "expected"),
    [
        ("size", "1000x768", [1000, 768], "bad size '1000x768': width 1000 is not a multiple of 16: use 992 or 1008"),
        ("dpi", "1200", 1200, "dpi must be from 72 to 600, got 1200"),
        ("layout", "spiral", "spiral", "bad layout 'spiral': expected comic, strip, webtoon or grid RxC"),
        ("webtoon", "100x1280", [100, 1280], "bad webtoon '100x1280': the width must be from 160 to 4000 px"),
        ("true_cfg", "0.5", 0.5, "true_cfg must be from 1 to 20, got 0.5"),
    ],
)
def test_a_header_key_has_one_rule_and_message_in_both_forms(story_dir, key, written, value, expected):
    assert problems(story_dir, f"{key}: {written}\n" + small_story_text(2))[0].startswith(f"line 1: {expected}")
    data = story_json(story_dir)
    data[key] = value
    assert json_problems(story_dir, data)[0].startswith(expected)


def test_json_too_many_pages_and_problems(story_dir):
    data = story_json(story_dir)
    data["layout"] = "grid 1x1"
    data["panels"] = [dict(data["panels"][0]) for _ in range(MAX_PAGES + 1)]
    assert json_problems(story_dir, data) == [
        f"the story needs {MAX_PAGES + 1} pages: the limit is {MAX_PAGES} (use fewer panels, or a layout with more "
        "panels a page) with layout grid 1x1"]
    data = story_json(story_dir)
    data["panels"] = [{"prompt": 1}] * MAX_PANELS
    lines = json_problems(story_dir, data)
    assert len(lines) == MAX_PROBLEMS + 1 and lines[-1].startswith("stopped after")


def test_json_file_with_a_huge_number(story_dir, tmp_path):
    data = story_json(story_dir)
    path = story_dir / "n.json"
    path.write_text(json.dumps(data).replace('"steps": 28', '"steps": ' + "9" * 5000))
    with pytest.raises(StoryError, match="bad JSON"):
        load_story(path)


def test_all_pages_of_an_export_share_one_pixel_budget():
    from core.limits import LimitError
    from core.story.geometry import check_page_limits, parse_page_spec

    page = parse_page_spec("A4 portrait")
    check_page_limits(page, 600, 10)  # 10 pages at 600 dpi: 348 million pixels, fine
    with pytest.raises(LimitError, match="pages .* at 600 dpi are 1740 million pixels together: the limit is 600"):
        check_page_limits(page, 600, 50)

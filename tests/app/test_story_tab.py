"""The Story tab's handlers, called as plain functions: parse with line numbers, render on tiny models with
per-panel progress, regenerate one panel with a new seed, PDF and ZIP out, library characters into the text."""

from __future__ import annotations

import threading
import zipfile

import gradio as gr
import pytest
from PIL import Image

from app.context import StudioContext, StudioSettings
from app.tabs import story_events as ev
from core.story.geometry import plan_pages
from core.story.manifest import panel_filename

STORY = """title: Tab Test
size: 32x32
steps: 2
seed: 11
layout: grid 2x2
page: 100x150mm
dpi: 72
character Ann: ann.png
    scale: 0.8
character Bob: bob.png
---
[Ann@left] greets [Bob@right]  # One.
  > Ann: Hello!
[Ann] runs to the sea  # Two.
[Bob] swims  # Three.
  seed: 5
the sea at night [NC]  # Four.
[Bob@left] and [Ann@right] dry off  # Five.
[Ann] and [Bob] wave goodbye  # Six.
"""


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None):
        self.calls.append((fraction, desc))


@pytest.fixture
def folder(tmp_path):
    """The story folder with its two character images, inside the studio's output folder (a policy root)."""
    folder = tmp_path / "outputs" / "my-story"
    folder.mkdir(parents=True)
    for name, colour in (("ann", (200, 50, 50)), ("bob", (50, 60, 200))):
        Image.new("RGB", (40, 48), colour).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def ctx(tiny_models, tmp_path):
    from app.character_library import CharacterLibrary

    # a library of its own: the session's is shared with the launched studios' tests
    return StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "outputs"),
                         library=CharacterLibrary(tmp_path / "library"))


def test_parse_lists_panels_and_previews_pages_with_placeholders(ctx):
    text, folder = ev.load_example("fishing-trip.story")
    summary, rows, pages = ev.StoryEvents(ctx).parse(text, folder)
    assert "**Red and Blue Go Fishing**: 8 panels, 2 characters" in summary
    assert [row[0] for row in rows] == list(range(1, 9)) and {row[-1] for row in rows} == {"not rendered"}
    assert rows[6][5] == 77 and rows[0][2] == "Red@left, Blue@right"
    assert len(pages) == 1 and all(isinstance(p, Image.Image) for p in pages)  # "a one-page comic"



def test_a_webtoon_previews_as_one_scrolling_strip_and_a_manga_says_how_it_reads(ctx):
    events = ev.StoryEvents(ctx)
    text, folder = ev.load_example("webtoon-strip.story")
    summary, rows, pages = events.parse(text, folder)
    assert "layout `webtoon`, 800 px wide in slices of at most 1280 px" in summary
    assert all(p.width == 800 and p.height <= 1280 for p in pages)  # the slices, as exported
    strip = events.strip(text, folder)
    assert strip["visible"] is True
    assert 'id="story-strip-scroll"' in strip["value"] and "overflow-y:auto" in strip["value"]
    assert 'src="data:image/jpeg;base64,' in strip["value"]
    text, folder = ev.load_example("manga-page.story")
    summary, _, pages = events.parse(text, folder)
    assert "read right to left, vertical bubbles" in summary and "warning" not in summary
    assert events.strip(text, folder) == gr.update(value="", visible=False)  # pages, not a strip


def test_a_character_no_font_has_shows_a_warning_with_the_fix(ctx, folder):
    summary, rows, _ = ev.StoryEvents(ctx).parse(STORY.replace("Hello!", "Hello \U000F0001"), str(folder))
    assert len(rows) == 6
    assert "**warning** line 12 (Ann's speech): no font has" in summary and "U+F0001" in summary
    assert "font: path/to/font.ttf" in summary


def test_parse_shows_every_problem_with_its_line(ctx, folder):
    bad = STORY.replace("size: 32x32", "size: 30x32").replace("[Bob] swims", "[Bobb] swims")
    summary, rows, pages = ev.StoryEvents(ctx).parse(bad, str(folder))
    assert summary.startswith("**2 problems:**")
    assert "**line 2**: bad size '30x32'" in summary and "**line 15**: unknown character [Bobb]" in summary
    assert rows == [] and pages == []
    with pytest.raises(gr.Error, match=r"fix the story first: line 2: bad size .* \(and 1 more\)"):
        ev.StoryEvents(ctx).render(bad, str(folder), False, None, Progress())


def test_unknown_example_and_bad_panel_number(ctx, folder):
    events = ev.StoryEvents(ctx)
    with pytest.raises(gr.Error, match="no example story named"):
        events.load_example("../../README.md")
    with pytest.raises(gr.Error, match="panel number must be 1 to 6"):
        events.new_seed(STORY, str(folder), 7, None, Progress())


def test_library_character_goes_into_the_header(ctx, folder):
    ctx.library.save(str(folder / "ann.png"), "Mia Rose", 0.7, "a girl in a red coat")
    text = ev.StoryEvents(ctx).add_library_character(STORY, "mia rose", str(folder))
    story = ev.parse_text(text.replace("[NC]", "[Mia_Rose]"), str(folder), ctx.paths)
    mia = story.characters["Mia_Rose"]
    assert (mia.scale, mia.description) == (0.7, "a girl in a red coat") and mia.image.is_file()
    assert story.panels[3].characters == ("Mia_Rose",)
    # the image is copied beside the story and named relative to it: the story moves with its folder
    assert "character Mia_Rose: characters/Mia_Rose.png\n" in text
    assert (folder / "characters" / "Mia_Rose.png").read_bytes() == ctx.library.get("Mia Rose").image_path.read_bytes()
    ctx.library.save(str(folder / "ann.png"), "Mia Rose", 0.7)  # saved again, the same image: its copy is reused
    assert "characters/Mia_Rose.png" in ev.StoryEvents(ctx).add_library_character(STORY, "mia rose", str(folder))


def test_pin_panel_seed_replaces_or_adds_the_seed_line(ctx, folder):
    story = ev.parse_text(STORY, str(folder), ctx.paths)
    text = ev.pin_panel_seed(STORY, story, 2, 99)  # panel 3 has "seed: 5"
    assert "  seed: 99" in text and "seed: 5" not in text
    text = ev.pin_panel_seed(text, story, 0, 42)  # panel 1 has a bubble line and no seed
    again = ev.parse_text(text, str(folder), ctx.paths)
    assert [again.panels[i].seed for i in (0, 2)] == [42, 99] and again.panels[0].dialogue == story.panels[0].dialogue
    assert [p.seed for p in again.panels[3:]] == [p.seed for p in story.panels[3:]]


def test_render_regenerate_and_download(ctx, folder, one_thread):
    from pypdf import PdfReader

    events = ev.StoryEvents(ctx)
    progress = Progress()
    notes, rows, gallery, pages, pdf, archive = events.render(STORY, str(folder), False, None, progress)
    assert "Rendered 6 panel(s); 0 were already done" in notes
    assert [row[-1] for row in rows] == ["done"] * 6 and len(gallery) == 6
    story = ev.parse_text(STORY, str(folder), ctx.paths)
    out = ev.render_dir_for(ctx, story, None)
    assert out == ctx.settings.output_dir / "stories" / "tab-test"
    assert len(pages) == len(plan_pages(story)) == 2 and len(PdfReader(pdf).pages) == 2
    with zipfile.ZipFile(archive) as z:
        assert {panel_filename(i) for i in range(6)} <= set(z.namelist())
    panel_messages = [desc for _, desc in progress.calls if desc and desc.startswith("Panel ")]
    # per panel and, inside each, per denoising step
    assert panel_messages[:4] == ["Panel 1 (1 of 6)", "Panel 1 (1 of 6): step 1/2", "Panel 1 (1 of 6): step 2/2",
                                  "Panel 1 done"] and panel_messages[-1] == "Panel 6 done"
    assert progress.calls[-1][0] == 1.0

    from core.io.metadata import read_record

    record = read_record(out / panel_filename(0))  # the studio engine's record: where the panel was made
    assert (record.models["spec"], record.dtype, record.preset) == ("tiny", "float32", "full")
    before = [(out / panel_filename(i)).read_bytes() for i in range(6)]
    notes, *_ = events.render(STORY, str(folder), False, None, Progress())
    assert "Rendered 0 panel(s); 6 were already done" in notes

    text, notes, rows, *_ = events.new_seed(STORY, str(folder), 4, None, Progress(), seed=1234)
    assert "Rendered 1 panel(s); 5 were already done" in notes
    assert ev.parse_text(text, str(folder), ctx.paths).panels[3].seed == 1234 and rows[3][5] == 1234
    after = [(out / panel_filename(i)).read_bytes() for i in range(6)]
    assert after[3] != before[3] and after[:3] + after[4:] == before[:3] + before[4:]
    notes, *_ = events.render(text, str(folder), False, None, Progress())  # the new seed stays in the text
    assert "Rendered 0 panel(s)" in notes

    cancelled = threading.Event()
    cancelled.set()
    ctx.jobs.start = lambda session: cancelled  # as if Cancel was pressed before the first panel
    notes, rows, *_ = events.render(text, str(folder), True, None, Progress())
    assert "Cancelled" in notes and [row[-1] for row in rows] == ["done"] * 6


# ------------------------------------------------------------------------------------------------ limits and paths
def no_work(ctx, monkeypatch):
    """Makes loading the engine, rendering or exporting fail the test."""
    monkeypatch.setattr(ctx, "engine", lambda *a, **k: pytest.fail("loaded the engine"))
    monkeypatch.setattr(ev, "export_story", lambda *a, **k: pytest.fail("exported"))


def test_character_paths_outside_the_studio_folders_are_refused(ctx, folder, tmp_path, monkeypatch):
    no_work(ctx, monkeypatch)
    events = ev.StoryEvents(ctx)
    (tmp_path / "secret.png").write_bytes((folder / "ann.png").read_bytes())  # exists, outside every root
    for image in ("/etc/passwd", "/proc/self/environ", "../../secret.png", "../../missing.png"):
        summary, rows, pages = events.parse(STORY.replace("ann.png", image), str(folder))
        assert summary == (f"**1 problem:**\n- **line 8**: image of [Ann] {image} is outside the folders this "
                           f"studio may use ({ctx.paths.describe()})"), summary
        assert rows == [] and pages == []
        with pytest.raises(gr.Error, match=rf"fix the story first: line 8: image of \[Ann\] {image} is outside"):
            events.render(STORY.replace("ann.png", image), str(folder), False, None, Progress())


def test_story_folder_must_be_inside_the_studio_folders(ctx, folder, tmp_path, monkeypatch):
    no_work(ctx, monkeypatch)
    events = ev.StoryEvents(ctx)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    summary, rows, _ = events.parse(STORY, str(elsewhere))
    assert summary == (f"**1 problem:**\n- story folder {elsewhere} is outside the folders this studio may use "
                       f"({ctx.paths.describe()})") and rows == []
    with pytest.raises(gr.Error, match="fix the story first: story folder .* is outside the folders"):
        events.new_seed(STORY, "/", 1, None, Progress())


def test_a_billion_steps_is_refused_before_any_work(ctx, folder, monkeypatch):
    no_work(ctx, monkeypatch)
    events = ev.StoryEvents(ctx)
    slow = STORY.replace("steps: 2", "steps: 1000000000")
    summary, rows, pages = events.parse(slow, str(folder))
    assert summary == "**1 problem:**\n- **line 3**: steps must be from 1 to 100, got 1000000000"
    with pytest.raises(gr.Error, match=r"fix the story first: line 3: steps must be from 1 to 100, got 1000000000"):
        events.render(slow, str(folder), False, None, Progress())
    assert not (ctx.settings.output_dir / "stories").exists()


def test_over_long_text_is_refused_without_parsing(ctx, folder, monkeypatch):
    from core.limits import MAX_STORY_BYTES

    monkeypatch.setattr(ev, "parse_story", lambda *a, **k: pytest.fail("parsed an over-long story"))
    summary, rows, pages = ev.StoryEvents(ctx).parse("x" * (MAX_STORY_BYTES + 1), str(folder))
    assert summary == ("**1 problem:**\n- the story is 1,048,577 characters long: the limit is 1,048,576 bytes")
    assert rows == [] and pages == []


def test_preview_draws_only_the_first_pages(ctx, folder):
    import time

    from core.limits import MAX_PANELS

    events = ev.StoryEvents(ctx)
    header = STORY.split("---")[0].replace("grid 2x2", "grid 1x1") + "---\n"
    long_story = header + "".join(f"[Ann] walks, page {k}\n" for k in range(40))
    started = time.perf_counter()
    summary, rows, pages = events.parse(long_story, str(folder))
    assert time.perf_counter() - started < 10
    assert "40 pages (the preview shows the first 4)" in summary and len(rows) == 40
    assert len(pages) == ev.PREVIEW_PAGES and pages[0].size == (236, 354)  # 100x150 mm at 60 dpi
    too_many = STORY.split("---")[0] + "---\n" + "[Ann] walks\n" * 10_000
    started = time.perf_counter()
    summary, rows, pages = events.parse(too_many, str(folder))
    assert time.perf_counter() - started < 5
    assert summary == (f"**1 problem:**\n- **line {12 + MAX_PANELS}**: panel {MAX_PANELS + 1}: a story has at most "
                       f"{MAX_PANELS} panels")

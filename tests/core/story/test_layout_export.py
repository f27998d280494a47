"""Page layouts (counts, determinism, bubbles) and the export: page PNGs, a PDF pypdf reads, the ZIP."""

from __future__ import annotations

import dataclasses
import zipfile

import pytest
from PIL import Image

from core.story.drawing import compose_pages, plan_bubble
from core.story.export import export_story
from core.story.geometry import parse_layout_spec, parse_length_mm, parse_page_spec, plan_pages
from core.story.load import load_story
from core.story.parse_text import parse_story
from core.story.render import render_story
from tests.core.story.conftest import STORIES, FakePipe, fake_pipe_engine, small_story_text


def story_with(story_dir, panels, layout, **changes):
    story = parse_story(small_story_text(panels, layout), base_dir=story_dir)
    return dataclasses.replace(story, **changes)


def placed(pages):
    return sorted(cell.panel_index for page in pages for cell in page.cells)


@pytest.mark.parametrize(
    ("layout", "page", "panels", "pages"),
    [
        ("grid 2x2", "A4 portrait", 5, 2),
        ("grid 2x3", "A4 portrait", 6, 1),
        ("grid 1x1", "A4 portrait", 3, 3),
        ("strip", "A4 portrait", 9, 3),
        ("strip", "A4 landscape", 4, 1),
    ],
)
def test_page_counts(story_dir, layout, page, panels, pages):
    story = story_with(story_dir, panels, layout, page=page)
    planned = plan_pages(story)
    assert len(planned) == pages and placed(planned) == list(range(panels))


def test_strip_orientation(story_dir):
    portrait = plan_pages(story_with(story_dir, 4, "strip", page="A4 portrait"))[0].cells
    landscape = plan_pages(story_with(story_dir, 4, "strip", page="A4 landscape"))[0].cells
    assert len({c.x for c in portrait}) == 1 and len({c.y for c in portrait}) == 4
    assert len({c.y for c in landscape}) == 1 and len({c.x for c in landscape}) == 4


def test_comic_is_deterministic_varied_and_inside_the_page(story_dir):
    story = story_with(story_dir, 20, "comic", page="A4 portrait", dpi=100, title="A title")
    pages = plan_pages(story)
    assert pages == plan_pages(story) and placed(pages) == list(range(20))
    assert pages != plan_pages(dataclasses.replace(story, seed=story.seed + 1))
    sizes = {(c.w, c.h) for page in pages for c in page.cells}
    assert len(sizes) > 3
    margin = round(story.margin_mm * story.dpi / 25.4)
    for page in pages:
        for c in page.cells:
            assert c.x >= margin and c.y >= margin + page.title_height
            assert c.x + c.w <= page.width - margin + 1 and c.y + c.h <= page.height - margin + 1
        for a in page.cells:  # no two cells overlap
            for b in page.cells:
                if a is not b:
                    assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
    assert pages[0].title == "A title" and pages[0].title_height > 0 and pages[1].title == ""


def test_page_and_length_specs():
    a4 = parse_page_spec("a4")
    assert (a4.width_mm, a4.height_mm, a4.spec) == (210.0, 297.0, "A4 portrait")
    assert parse_page_spec("Letter landscape").width_mm == pytest.approx(279.4)
    custom = parse_page_spec("8.5x11in")
    assert custom.width_mm == pytest.approx(215.9) and custom.spec == "8.5x11in portrait"
    assert parse_page_spec("300x200mm").spec == "300x200mm landscape"
    assert parse_length_mm("0.5in") == pytest.approx(12.7) and parse_length_mm("12") == 12.0
    assert parse_layout_spec("Grid 2 x 3") == "grid 2x3"
    with pytest.raises(ValueError, match="at most 8x8"):
        parse_layout_spec("grid 9x9")


def test_page_pixels_follow_dpi(story_dir):
    page = plan_pages(story_with(story_dir, 1, "grid 1x1", page="A4 portrait", dpi=100))[0]
    assert (page.width, page.height) == (827, 1169)


def test_bubble_avoids_characters_and_other_bubbles():
    area = (0, 0, 400, 300)
    speaker, other = (0, 100, 180, 300), (220, 60, 400, 300)
    rect = plan_bubble((120, 50), area, (90, 110), speaker, [other], [])
    assert rect[3] <= 100 + 1e-6 and rect[2] <= 220 + 1e-6  # above the speaker, clear of the other character
    second = plan_bubble((120, 50), area, (90, 110), speaker, [other], [rect])
    overlap = max(0, min(rect[2], second[2]) - max(rect[0], second[0])) * max(
        0, min(rect[3], second[3]) - max(rect[1], second[1]))
    assert overlap == 0


def test_compose_draws_bubbles_clear_of_the_speaker(story_dir):
    text = small_story_text(1, "grid 1x1").replace("[Ann@left] greets [Bob@right]", "[Ann@box:0,0.5,0.4,1] "
                                                   "greets [Bob@box:0.6,0.5,1,1]")
    story = dataclasses.replace(parse_story(text, base_dir=story_dir), width=256, height=256, page="100x100mm",
                                title="", margin_mm=5, gutter_mm=2)
    black = Image.new("RGB", (256, 256), (0, 0, 0))
    page = compose_pages(story, {0: black})[0]
    cell = plan_pages(story)[0].cells[0]
    # the speaker's and the other character's lower body stay unpainted; a white bubble exists in the top half
    ann_body = page.crop((cell.x + 10, cell.y + int(cell.h * 0.75), cell.x + int(cell.w * 0.35),
                          cell.y + int(cell.h * 0.8)))
    assert ann_body.getextrema() == ((0, 0), (0, 0), (0, 0))
    top = page.crop((cell.x + 5, cell.y + 5, cell.x + cell.w - 5, cell.y + cell.h // 2))
    assert max(top.getextrema()[0]) == 255


def test_missing_panels_get_placeholders(story_dir):
    story = story_with(story_dir, 3, "grid 1x3", page="A5 landscape", dpi=72)
    pages = compose_pages(story, {0: Image.new("RGB", (32, 32), "red")})
    assert len(pages) == 1 and pages[0].size == (595, 420)


def test_export_pdf_pages_and_zip(story_dir, tmp_path, monkeypatch):
    import pypdf

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")

    story_path = story_dir / "test.story"
    story_path.write_text(small_story_text(7, "grid 2x2"))
    story = load_story(story_path)
    out = tmp_path / "out"
    render_story(story, fake_pipe_engine(FakePipe(fail_on="scene 4")), out)
    result = export_story(story, out)
    assert [p.name for p in result.pages] == ["page-01.png", "page-02.png"]
    assert result.missing_panels == [4]
    reader = pypdf.PdfReader(result.pdf)
    assert len(reader.pages) == 2
    width_pt = float(reader.pages[0].mediabox.width)
    assert width_pt == pytest.approx(100 / 25.4 * 72, abs=1.5)  # printed at the page's size in millimetres
    with zipfile.ZipFile(result.zip) as archive:
        names = set(archive.namelist())
        assert archive.testzip() is None
    expected = {"manifest.json", "story.json", "story.pdf", "test.story", "pages/page-01.png", "pages/page-02.png",
                "chars/ann.png", "chars/bob.png"}
    expected |= {f"panels/panel-{i:03d}.png" for i in (1, 2, 3, 4, 6, 7)}
    assert names == expected
    # the unpacked ZIP is a story that loads on its own
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(result.zip).extractall(unpacked)
    assert len(load_story(unpacked / "story.json").panels) == 7
    assert len(load_story(unpacked / "test.story").panels) == 7
    first_zip = result.zip.read_bytes()
    assert export_story(story, out).zip.read_bytes() == first_zip  # reproducible with SOURCE_DATE_EPOCH


@pytest.mark.slow
def test_shipped_example_renders_and_exports(tmp_path):
    story = load_story(STORIES / "fishing-trip.story")
    story = dataclasses.replace(story, width=128, height=96)
    out = tmp_path / "fishing"
    result = render_story(story, fake_pipe_engine(), out)
    assert len(result.rendered) == 8
    exported = export_story(story, out)
    import pypdf

    assert len(pypdf.PdfReader(exported.pdf).pages) == len(exported.pages) == len(plan_pages(story))

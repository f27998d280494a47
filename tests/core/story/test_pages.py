"""What an illustrator gets on the page: panels rendered at their cell's shape (nothing cropped away), the example
comic on the pages it announces, bubbles that stay readable with short tails aimed at their speaker, captions
clear of the bubbles, a PDF whose words are text, and a CBZ."""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile

import pytest
from PIL import Image

from core.story.drawing import TAIL_SHARE, _panel_boxes, _paste_cover, bubble_area, caption_lines, plan_bubbles
from core.story.export import export_story
from core.story.geometry import fit_panel_size, panel_sizes, plan_pages
from core.story.load import load_story
from core.story.parse_text import parse_story
from core.story.render import render_story
from tests.core.story.conftest import STORIES, fake_pipe_engine, small_story_text

EXAMPLES = sorted(STORIES.glob("*.story"))


def story_with(story_dir, panels, layout, **changes):
    story = parse_story(small_story_text(panels, layout), base_dir=story_dir)
    return dataclasses.replace(story, **changes)


@pytest.mark.parametrize(("layout", "page"), [("grid 2x3", "A4 portrait"), ("strip", "A4 portrait"),
                                              ("strip", "A4 landscape"), ("comic", "A4 portrait"),
                                              ("comic", "Letter landscape")])
def test_panel_sizes_follow_their_cells(story_dir, layout, page):
    """One size per panel: its cell's aspect ratio (to the rounding of 16 px steps), the story's pixel budget."""
    story = story_with(story_dir, 7, layout, page=page, width=1024, height=768, dpi=150)
    sizes = panel_sizes(story)
    cells = {cell.panel_index: cell for p in plan_pages(story) for cell in p.cells}
    assert sorted(sizes) == sorted(cells) == list(range(7))
    for index, (w, h) in sizes.items():
        cell = cells[index]
        assert w % 16 == 0 and h % 16 == 0
        assert abs(math.log((w / h) / (cell.w / cell.h))) < 0.05, (index, (w, h), (cell.w, cell.h))
        assert 0.85 < w * h / (1024 * 768) < 1.15
        assert story.panel_size(story.panels[index]) == (w, h)
    if layout.startswith("strip") and page.endswith("portrait"):
        assert all(w > h for w, h in sizes.values())  # a column of wide cells: wide panels


def test_panel_size_is_in_the_settings_hash_and_the_request(story_dir, tmp_path):
    from core.story.settings import panel_request, panel_settings

    story = story_with(story_dir, 3, "grid 3x1", page="A4 portrait", width=512, height=512)
    panel = story.panels[0]
    w, h = story.panel_size(panel)
    assert w > h  # three rows of one: wide cells
    assert panel_settings(story, panel)["size"] == [w, h]
    request = panel_request(story, panel, [])
    assert (request.width, request.height) == (w, h)


def test_a_panel_rendered_at_its_cell_shape_loses_almost_nothing():
    image = Image.new("RGB", (720, 1088), (0, 0, 0))
    canvas = Image.new("RGB", (400, 600), (255, 255, 255))
    _paste_cover(canvas, image, (50, 20, 300, 452), {})
    # the whole picture is on the page (scaled): 300x452 shows 720x1088 less than 1% of a side
    assert 300 / 452 == pytest.approx(720 / 1088, rel=0.01)


def test_fit_panel_size_bounds():
    assert fit_panel_size(1.0, 1024 * 1024) == (1024, 1024)
    assert fit_panel_size(100.0, 64 * 64)[1] >= 16  # an extreme cell still gets a valid size
    w, h = fit_panel_size(0.5, 1024 * 768)
    assert (w % 16, h % 16) == (0, 0) and h > w


def test_the_fishing_trip_is_the_one_page_comic_it_says_it_is():
    story = load_story(STORIES / "fishing-trip.story")
    assert "a one-page comic" in (STORIES / "fishing-trip.story").read_text()
    pages = plan_pages(story)
    assert len(pages) == 1 and sorted(c.panel_index for c in pages[0].cells) == list(range(8))


def test_comic_pages_that_fit_take_one_page(story_dir):
    for count in range(1, 10):  # up to three rows of three on a portrait page
        story = story_with(story_dir, count, "comic", page="A4 portrait")
        assert len(plan_pages(story)) == 1, count
    assert len(plan_pages(story_with(story_dir, 4, "comic", page="A4 landscape"))) == 1


def _bubbles_of(story):
    """Every planned bubble of every panel: ``(story, panel, bubble area, bubble)``."""
    for page in plan_pages(story):
        for cell in page.cells:
            panel = story.panels[cell.panel_index]
            area = (cell.x, cell.y, cell.w, cell.h)
            boxes = _paste_cover(Image.new("RGB", (page.width, page.height)), Image.new("RGB", story.panel_size(panel)),
                                 area, _panel_boxes(panel))
            for bubble in plan_bubbles(story, panel, bubble_area(story, cell, panel), boxes):
                yield panel, cell, bubble


def _ray_hits_box(origin, direction, box) -> bool:
    """Whether the ray from `origin` along `direction` meets `box` (slab test)."""
    t0, t1 = 0.0, math.inf
    for axis in (0, 1):
        o, d, lo, hi = origin[axis], direction[axis], box[axis], box[axis + 2]
        if abs(d) < 1e-9:
            if not lo <= o <= hi:
                return False
            continue
        a, b = (lo - o) / d, (hi - o) / d
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0 <= t1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_bubble_tails_are_short_and_aimed_at_the_speaker(path):
    story = load_story(path)
    seen = 0
    for panel, cell, bubble in _bubbles_of(story):
        if bubble.tail is None:
            continue
        seen += 1
        base_a, base_b, tip = bubble.tail
        base = ((base_a[0] + base_b[0]) / 2, (base_a[1] + base_b[1]) / 2)
        direction = (tip[0] - base[0], tip[1] - base[1])
        length = math.hypot(*direction)
        # (+3 px: the base sits just inside the bubble's outline)
        assert length <= TAIL_SHARE * min(cell.w, cell.h) + 3.5, (panel.number, length)
        # the tail heads into the speaker's region: the ray from its base through its tip meets it
        assert _ray_hits_box(base, direction, bubble.speaker_box), (panel.number, bubble.lines, bubble.tail)
        # from the bubble's top or bottom edge, never a flat needle out of its side
        assert abs(direction[1]) >= 0.5 * abs(direction[0]), (panel.number, bubble.lines, direction)
    if path.name == "fishing-trip.story":
        assert seen >= 8  # of its 11 bubbles (a bubble over its speaker's head needs no tail)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_bubbles_are_readable_and_clear_of_captions(path):
    story = load_story(path)
    for panel, cell, bubble in _bubbles_of(story):
        x0, y0, x1, y1 = bubble.rect
        assert cell.x <= x0 and x1 <= cell.x + cell.w and cell.y <= y0
        if panel.caption:
            caption_top = cell.y + cell.h - caption_lines(story, cell, panel)[3]
            assert y1 <= caption_top + 1e-6, (panel.number, "a caption covers a bubble")
        assert bubble.font_px >= round(7 / 72 * story.dpi)  # the size floor: 7 pt
        if bubble.vertical:  # columns of characters (Japanese, Chinese): taller than wide
            assert y1 - y0 > x1 - x0, (panel.number, bubble.lines)
            continue
        words = sum(len(line.split()) for line in bubble.lines)
        assert len(bubble.lines) == 1 or words / len(bubble.lines) >= 2, (panel.number, bubble.lines)
        assert x1 - x0 >= bubble.font_px * 3 - 1e-6


def test_pdf_has_real_text_at_the_story_dpi_and_the_cbz_reads(tmp_path):
    import pypdf

    story = dataclasses.replace(load_story(STORIES / "fishing-trip.story"), width=128, height=96)
    out = tmp_path / "fishing"
    render_story(story, fake_pipe_engine(), out)
    result = export_story(story, out)
    reader = pypdf.PdfReader(result.pdf)
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx((210 / 25.4 * 72, 297 / 25.4 * 72), abs=1.0)
    text = " ".join(reader.pages[0].extract_text().split())
    for words in ("Red and Blue Go Fishing", "The first morning of summer.", "Whee!", "Heave!", "It is a start."):
        assert words in text, words
    fonts = reader.pages[0]["/Resources"]["/Font"]
    # embedded subsets ("/ABCDEF+DejaVuSansBook") of the shipped fonts
    assert {fonts[name].get_object()["/BaseFont"].split("+")[-1] for name in fonts} == {"DejaVuSansBook",
                                                                                        "DejaVuSansBold"}
    # the picture is the page PNG (words drawn) at the story's dpi; the text layer lies over it
    page_png = Image.open(result.pages[0])
    assert page_png.size == (1240, 1754)
    with zipfile.ZipFile(result.cbz) as cbz:
        assert cbz.namelist() == ["page-01.png", "ComicInfo.xml"]
        assert cbz.read("page-01.png") == result.pages[0].read_bytes()
        info = cbz.read("ComicInfo.xml").decode()
        assert re.search(r"<Title>Red and Blue Go Fishing</Title>", info) and "<PageCount>1</PageCount>" in info

"""Comics in every script and format: shaped text from a font chain checked through the fonts' cmaps, a PDF whose
text layer pypdf reads back as written, manga reading order and vertical bubbles, webtoon strips and slices."""

from __future__ import annotations

import dataclasses
import re
import zipfile

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from core.story.drawing import bubble_area, compose_pages, missing_glyph_warnings, plan_bubbles
from core.story.export import export_story
from core.story.fonts import FontChain, needs_glyph
from core.story.geometry import plan_pages, webtoon_slices
from core.story.load import load_story
from core.story.model import StoryError
from core.story.parse_text import parse_story
from core.story.render import render_story
from tests.core.story.conftest import STORIES, fake_pipe_engine

# One bubble per script; letters and spaces only, so that pypdf's own right-to-left reordering (which moves
# digits and punctuation around) is not what is being tested.
SPEECH = {
    "Ann": ["こんにちは世界", "你好世界", "안녕하세요 세계"],
    "Bob": ["Привет мир", "مرحبا بالعالم", "שלום עולם"],
}


def many_scripts_text(extra_header: str = "", layout: str = "grid 2x3") -> str:
    lines = ["title: 多言語 Мир עולם", "size: 64x64", "seed: 3", f"layout: {layout}", "page: A5 portrait",
             "dpi: 100", "character Ann: chars/ann.png", "character Bob: chars/bob.png", extra_header, "---"]
    for speaker, texts in SPEECH.items():
        for text in texts:
            lines += [f"[{speaker}] says hello  # {text}", f"  > {speaker}: {text}"]
    return "\n".join(lines) + "\n"


def cmap(face) -> set[int]:
    with TTFont(str(face.path), fontNumber=face.index, lazy=True) as font:
        return set(font.getBestCmap())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.core.story.conftest import make_character_image

    folder = tmp_path_factory.mktemp("scripts")
    make_character_image(folder / "chars" / "ann.png", (200, 30, 30))
    make_character_image(folder / "chars" / "bob.png", (30, 30, 200))
    (folder / "many.story").write_text(many_scripts_text(), encoding="utf-8")
    story = load_story(folder / "many.story")
    render_story(story, fake_pipe_engine(), folder / "out")
    return story, export_story(story, folder / "out")


def test_bubbles_in_six_scripts_render_and_the_pdf_text_is_theirs(exported):
    import pypdf

    story, result = exported
    assert missing_glyph_warnings(story) == []  # every character has a font here (CI installs them)
    reader = pypdf.PdfReader(result.pdf)
    assert len(reader.pages) == len(result.pages) == 1
    lines = [line.strip() for line in reader.pages[0].extract_text().split("\n")]
    for texts in SPEECH.values():
        for text in texts:
            assert lines.count(text) == 2, (text, lines)  # the bubble and the caption, as written
    assert "多言語 Мир עולם" in lines or any("多言語" in line for line in lines)
    assert reader.metadata.title == "多言語 Мир עולם"
    # the page picture is the PNG at the story's dpi: A5 at 100 dpi
    assert Image.open(result.pages[0]).size == (583, 827)
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx((583 * 72 / 100, 827 * 72 / 100), abs=0.01)


def test_every_glyph_comes_from_a_font_that_has_it(exported):
    story, _ = exported
    texts = []
    compose_pages(story, {}, texts=texts)
    runs = [run for page in texts for run in page]
    faces = {run.face for run in runs}
    assert any("CJK" in face.path.name or "cjk" in str(face.path).lower() for face in faces), faces
    drawn = ""
    for run in runs:
        have = cmap(run.face)
        lacking = [c for c in run.text if needs_glyph(c) and ord(c) not in have]
        assert not lacking, (run.text, run.face, lacking)
        drawn += run.text
    for texts_of in SPEECH.values():
        for text in texts_of:
            assert text.replace(" ", "") in drawn.replace(" ", "")


def test_the_pdf_embeds_each_font_with_a_unicode_map(exported):
    import pypdf

    _, result = exported
    page = pypdf.PdfReader(result.pdf).pages[0]
    fonts = [page["/Resources"]["/Font"][name].get_object() for name in page["/Resources"]["/Font"]]
    assert len(fonts) >= 2 and all("/ToUnicode" in font for font in fonts)
    names = {str(font["/BaseFont"]).split("+")[-1] for font in fonts}
    assert any(name.startswith("DejaVuSans") for name in names) and any("CJK" in name for name in names), names


def test_a_character_no_font_has_is_a_check_time_warning_and_a_font_header_fixes_it(story_dir):
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    odd = "\U000F0001"  # a private-use character: no system font draws it
    text = f"title: x\nsize: 32x32\ncharacter Ann: chars/ann.png\n{{font}}---\n[Ann] waves\n  > Ann: hi {odd}\n"
    story = parse_story(text.format(font=""), base_dir=story_dir)
    warnings = missing_glyph_warnings(story)
    assert len(warnings) == 1
    assert warnings[0].startswith("line 5 (Ann's speech): no font has '\U000F0001' (U+F0001")
    assert "install a font for that script" in warnings[0] and "font: path/to/font.ttf" in warnings[0]

    # a font with that one glyph, named in the header: the warning goes and the glyph is drawn from it
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "odd"])
    builder.setupCharacterMap({ord(odd): "odd"})
    pen = TTGlyphPen(None)
    for x0, y0, x1, y1 in ((0, 0, 500, 700),):
        pen.moveTo((x0, y0)), pen.lineTo((x0, y1)), pen.lineTo((x1, y1)), pen.lineTo((x1, y0)), pen.closePath()
    box = pen.glyph()
    builder.setupGlyf({".notdef": TTGlyphPen(None).glyph(), "odd": box})
    builder.setupHorizontalMetrics({".notdef": (500, 0), "odd": (600, 0)})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Odd", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(story_dir / "odd.ttf")
    story = parse_story(text.format(font="font: odd.ttf\n"), base_dir=story_dir)
    assert story.font == (story_dir / "odd.ttf").resolve()
    assert missing_glyph_warnings(story) == []
    segments = FontChain().segments(f"hi {odd}")
    assert segments[-1][0].endswith(odd) and segments[-1][1].name == "DejaVuSans.ttf"  # without the header
    from core.story.drawing import font_chain

    assert font_chain(story).segments(f"hi {odd}")[-1] == (odd, story.font and font_chain(story).story_font)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("reading: upside-down", "line 2: bad reading 'upside-down': expected left-to-right or right-to-left"),
        ("bubbles: diagonal", "line 2: bad bubbles 'diagonal': expected horizontal or vertical"),
        ("webtoon: 800", "line 2: bad webtoon '800': expected WIDTHxSLICE in pixels, e.g. 800x1280"),
        ("webtoon: 50x1280", "line 2: bad webtoon '50x1280': the width must be from 160 to 4000 px"),
        ("webtoon: 800x100000", "line 2: bad webtoon '800x100000': the slice height must be from 160 to 20000 px"),
        ("font: nowhere.ttf", "line 2: missing font file: nowhere.ttf"),
        ("font: chars/ann.png", "line 2: chars/ann.png is not a font file with a character map"),
    ],
)
def test_bad_new_header_values_name_the_value_and_the_choices(story_dir, header, expected):
    with pytest.raises(StoryError) as caught:
        parse_story(f"size: 32x32\n{header}\ncharacter Ann: chars/ann.png\n---\n[Ann] waves\n", base_dir=story_dir)
    assert expected in str(caught.value), str(caught.value)


def test_a_panel_height_outside_a_webtoon_and_a_strip_too_long_are_problems(story_dir):
    with pytest.raises(StoryError) as caught:
        parse_story("size: 32x32\ncharacter Ann: chars/ann.png\n---\n[Ann] waves\n  height: 900\n", base_dir=story_dir)
    assert "line 5: height: sets a panel's height in a webtoon strip: write 'layout: webtoon'" in str(caught.value)
    long = "layout: webtoon\ncharacter Ann: chars/ann.png\n---\n" + "[Ann] waves\n  height: 8000\n" * 8
    with pytest.raises(StoryError) as caught:
        parse_story(long, base_dir=story_dir)
    assert "line 1: the webtoon strip is 800x" in str(caught.value) and "limit is 40 million" in str(caught.value)


# --- reading order -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["grid 2x2", "comic", "strip"])
def test_right_to_left_puts_panel_one_top_right_and_mirrors_every_page(story_dir, layout):
    text = many_scripts_text(layout=layout)
    ltr = parse_story(text, base_dir=story_dir)
    rtl = parse_story(text.replace("---", "reading: right-to-left\n---"), base_dir=story_dir)
    for left, right in zip(plan_pages(ltr), plan_pages(rtl), strict=True):
        for a, b in zip(left.cells, right.cells, strict=True):
            assert (b.panel_index, b.x, b.y, b.w, b.h) == (a.panel_index, left.width - a.x - a.w, a.y, a.w, a.h)
    first_page = plan_pages(rtl)[0]
    first = next(c for c in first_page.cells if c.panel_index == 0)
    top_row = [c for c in first_page.cells if c.y == first.y]
    assert first.x + first.w == max(c.x + c.w for c in top_row)  # panel 1 is the top-right cell
    assert first.y == min(c.y for c in first_page.cells)
    if len(top_row) > 1:
        assert first.x > min(c.x for c in top_row)
    from core.story.geometry import panel_sizes

    assert panel_sizes(rtl) == panel_sizes(ltr)  # the same pictures: a mirror changes no cell's shape


def test_right_to_left_reads_the_bubbles_of_a_panel_from_the_right(story_dir):
    text = ("size: 512x256\nlayout: grid 1x1\npage: A5 landscape\ncharacter Ann: chars/ann.png\n"
            "character Bob: chars/bob.png\n{reading}---\n[Ann] and [Bob] talk\n  > Ann: First.\n  > Bob: Second.\n"
            "  > Ann: Third.\n")
    for reading, later_is_left in (("", False), ("reading: right-to-left\n", True)):
        story = parse_story(text.format(reading=reading), base_dir=story_dir)
        page = plan_pages(story)[0]
        cell = page.cells[0]
        bubbles = plan_bubbles(story, story.panels[0], bubble_area(story, cell, story.panels[0]), {})
        first, second = ((b.rect[0] + b.rect[2]) / 2 for b in bubbles[:2])
        same_band = bubbles[1].rect[1] < bubbles[0].rect[3]
        if same_band:
            assert (second < first) == later_is_left, (reading, first, second)


def test_vertical_bubbles_are_taller_than_wide_and_read_in_columns_from_the_right(story_dir):
    text = ("size: 512x768\nlayout: grid 1x2\npage: A5 portrait\nreading: right-to-left\nbubbles: vertical\n"
            "character Ann: chars/ann.png\n---\n[Ann] talks\n  > Ann: はい\n  > Ann: おはようございます！今日もいい天気ですね。"
            "散歩に行きましょうか？それともお茶にしますか？\n"
            "[Ann] listens\n  > Ann: 読めない……\n")
    story = parse_story(text, base_dir=story_dir)
    page = plan_pages(story)[0]
    texts: list = []
    compose_pages(story, {}, texts=texts)
    for cell in page.cells:
        panel = story.panels[cell.panel_index]
        for bubble, dialogue in zip(plan_bubbles(story, panel, bubble_area(story, cell, panel), {}),
                                    panel.dialogue, strict=True):
            x0, y0, x1, y1 = bubble.rect
            assert bubble.vertical and y1 - y0 > x1 - x0, (dialogue.text, bubble.rect)
            assert "".join(bubble.lines) == dialogue.text.replace(" ", "")
    columns = [run for run in texts[0] if run.vertical]
    first = next(run for run in columns if run.text.startswith("おはよう"))
    bubble_columns = [run for run in columns if run.baseline == first.baseline]  # all start at the bubble's top
    assert len(bubble_columns) >= 2 and bubble_columns[0] == first
    assert all(a.x > b.x for a, b in zip(bubble_columns, bubble_columns[1:]))  # each next column to the left
    assert "".join(run.text for run in columns if run.baseline < 10_000).count("…") == 2  # as written


# --- webtoon -----------------------------------------------------------------------------------------------------
def test_webtoon_exports_one_strip_and_slices_that_cover_it_exactly():
    import pypdf

    story = load_story(STORIES / "webtoon-strip.story")
    story = dataclasses.replace(story, width=64, height=48)  # tiny panels; the strip keeps its 800 px width
    assert story.layout == "webtoon" and (story.webtoon_width, story.webtoon_slice) == (800, 1280)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        render_story(story, fake_pipe_engine(), out)
        result = export_story(story, out)
        strip = np.asarray(Image.open(result.strip))
        assert strip.shape[1] == 800
        cells = plan_pages(story)[0].cells
        heights = [c.h for c in cells]
        assert heights[0] == 1100 and heights[3] == 1000 and heights[1] == 600  # height: lines, else the aspect
        slices = [np.asarray(Image.open(p)) for p in result.pages]
        assert all(s.shape[0] <= 1280 and s.shape[1] == 800 for s in slices)
        assert np.array_equal(np.concatenate(slices, axis=0), strip)
        reader = pypdf.PdfReader(result.pdf)
        assert len(reader.pages) == len(slices)
        text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
        for words in ("I can make it. I know I can.", "Blue! That is way too far!", "Told you."):
            assert words in text
        with zipfile.ZipFile(result.cbz) as cbz:
            assert cbz.namelist() == [p.name for p in result.pages] + ["ComicInfo.xml"]
        with zipfile.ZipFile(result.zip) as archive:
            assert "strip.png" in archive.namelist()


@pytest.mark.parametrize("height", [1, 1279, 1280, 1281, 4378, 9000])
def test_webtoon_slices_cover_the_strip_and_cut_between_panels(height):
    cuts = [600, 1300, 2100, 3000]
    slices = webtoon_slices(height, 1280, cuts)
    assert slices[0][0] == 0 and slices[-1][1] == height
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    assert all(0 < bottom - top <= 1280 for top, bottom in slices)
    if height == 4378:
        assert [bottom for _, bottom in slices[:-1]] == [600, 1300, 2100, 3000, 4280]  # 3000+1280: no gap


def test_manga_example_is_right_to_left_vertical_japanese_and_marked_as_manga(tmp_path):
    story = load_story(STORIES / "manga-page.story")
    assert (story.reading, story.bubbles) == ("right-to-left", "vertical")
    assert missing_glyph_warnings(story) == []
    story = dataclasses.replace(story, width=64, height=80, dpi=72)
    render_story(story, fake_pipe_engine(), tmp_path)
    result = export_story(story, tmp_path)
    with zipfile.ZipFile(result.cbz) as cbz:
        assert "<Manga>YesAndRightToLeft</Manga>" in cbz.read("ComicInfo.xml").decode()
    assert re.search("赤いポストマン", result.pdf.read_bytes().decode("latin-1")) is None  # text is in fonts, not raw


def test_new_keys_round_trip_through_json(story_dir, tmp_path):
    text = ("size: 32x32\nlayout: webtoon\nwebtoon: 640x1000\nreading: rtl\nbubbles: vertical\n"
            "character Ann: chars/ann.png\n---\n[Ann] waves\n  height: 700\n")
    story = parse_story(text, base_dir=story_dir)
    assert (story.webtoon_width, story.webtoon_slice, story.reading, story.panels[0].height) == (
        640, 1000, "right-to-left", 700)
    again = load_story(story.save_json(story_dir / "s.json"))
    assert (again.webtoon_width, again.webtoon_slice, again.reading, again.bubbles, again.panels[0].height) == (
        640, 1000, "right-to-left", "vertical", 700)


def test_without_fontconfig_the_font_folders_are_searched(monkeypatch):
    """Windows and macOS have no fc-list: the usual font folders are read instead (here: the folder fontconfig
    names for a Japanese font, searched as if it were the system's only one)."""
    import subprocess
    from pathlib import Path

    from core.story import fonts

    found = subprocess.run(["fc-match", "-f", "%{file}", ":lang=ja"], capture_output=True, text=True, check=True)
    folder = Path(found.stdout).parent
    monkeypatch.setattr(fonts.shutil, "which", lambda name: None)
    monkeypatch.setattr(fonts, "font_folders", lambda: [folder])
    fonts._folder_fonts.cache_clear()
    try:
        text = "こんにちは世界"
        left = {ord(c) for c in text}
        faces = fonts._search_system(left, "ja", False)
        assert faces and not left  # every character found a face
        assert all(ord(c) in fonts.coverage(faces[0]) for c in text)
    finally:
        fonts._folder_fonts.cache_clear()

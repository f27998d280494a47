"""Page layouts for a rendered story: panels placed on printable pages with captions and speech bubbles.

Four layouts: ``grid RxC`` (equal cells), ``strip`` (four panels a page: a column on portrait pages, a row on
landscape ones), ``comic`` (rows of one to three panels with varied sizes, chosen from the story seed so the
same story always gives the same pages) and ``webtoon`` (one vertical strip of full-width panels, sliced at export).
Pages are sized in millimetres and drawn at the story's DPI; a right-to-left story's pages are mirrored. Text is
drawn in any script through `core.story.typeset` with the story's font chain (`core.story.fonts`).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from core.limits import MAX_EXPORT_PIXELS, MAX_IMAGE_PIXELS, MAX_PAGES, LimitError
from core.story.fonts import MISSING_FONT_FIX, FontChain, FontFace, describe_characters
from core.story.typeset import ChainFont, TextRun

if TYPE_CHECKING:
    from core.story.format import Panel, Story

MM_PER_INCH = 25.4
PAGE_SIZES_MM = {
    "A3": (297.0, 420.0),
    "A4": (210.0, 297.0),
    "A5": (148.0, 210.0),
    "Letter": (215.9, 279.4),
    "Legal": (215.9, 355.6),
}
_UNITS_MM = {"mm": 1.0, "cm": 10.0, "in": MM_PER_INCH, "pt": MM_PER_INCH / 72}

INK = (20, 20, 20)
PAPER = (255, 255, 255)
CAPTION_FILL = (255, 249, 225)
MISSING_FILL = (226, 226, 226)
PRESET_HEADROOM = 0.3  # fraction of a preset region above the character's head, where bubbles may go


# --- specs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageSpec:
    """A page size in millimetres; `spec` is the canonical text (``A4 portrait``, ``200x300mm``)."""

    width_mm: float
    height_mm: float
    spec: str

    @property
    def landscape(self) -> bool:
        return self.width_mm > self.height_mm


def parse_length_mm(text: str) -> float:
    """A length such as ``10mm``, ``1cm``, ``0.5in`` or ``12pt`` in millimetres; a bare number is millimetres."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(mm|cm|in|pt)?\s*", text.lower())
    if not match:
        raise ValueError(f"bad length '{text}': expected a number with mm, cm, in or pt, e.g. 10mm")
    return float(match.group(1)) * _UNITS_MM[match.group(2) or "mm"]


def parse_page_spec(text: str) -> PageSpec:
    """``A4``, ``letter landscape``, ``210x297mm`` or ``8.5x11in`` (optionally ``portrait``/``landscape``)."""
    words = text.split()
    orientation = None
    if words and words[-1].lower() in ("portrait", "landscape"):
        orientation = words.pop().lower()
    name = " ".join(words)
    named = {k.lower(): k for k in PAGE_SIZES_MM}
    if name.lower() in named:
        key = named[name.lower()]
        width, height = PAGE_SIZES_MM[key]
        label = key
    else:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*[xX×]\s*(\d+(?:\.\d+)?)\s*(mm|cm|in)", name.strip().lower())
        if not match:
            raise ValueError(f"bad page '{text}': expected A3, A4, A5, Letter, Legal or WxH with mm, cm or in "
                             f"(e.g. 210x297mm), optionally followed by portrait or landscape")
        unit = _UNITS_MM[match.group(3)]
        width, height = float(match.group(1)) * unit, float(match.group(2)) * unit
        label = f"{match.group(1)}x{match.group(2)}{match.group(3)}"
        if orientation is None:
            orientation = "landscape" if width > height else "portrait"
    if not (50 <= min(width, height) and max(width, height) <= 2000):
        raise ValueError(f"bad page '{text}': sides must be 50..2000 mm")
    if orientation is None:
        orientation = "portrait"
    if (orientation == "landscape") != (width > height):
        width, height = height, width
    return PageSpec(width, height, f"{label} {orientation}")


def parse_layout_spec(text: str) -> str:
    """``comic``, ``strip``, ``webtoon`` or ``grid RxC`` (rows x columns), returned in canonical form."""
    value = text.strip().lower()
    if value in ("comic", "strip", WEBTOON):
        return value
    match = re.fullmatch(r"grid[\s:]*(\d+)\s*[x×]\s*(\d+)", value)
    if match:
        rows, cols = int(match.group(1)), int(match.group(2))
        if 1 <= rows <= 8 and 1 <= cols <= 8:
            return f"grid {rows}x{cols}"
    raise ValueError(f"bad layout '{text}': expected comic, strip, webtoon or grid RxC (e.g. grid 2x3, at most 8x8)")


READING_ORDERS = ("left-to-right", "right-to-left")
BUBBLE_DIRECTIONS = ("horizontal", "vertical")


def parse_reading(text: str) -> str:
    """``left-to-right`` or ``right-to-left`` (also ``ltr`` / ``rtl``)."""
    value = {"ltr": "left-to-right", "rtl": "right-to-left"}.get(text.strip().lower(), text.strip().lower())
    if value not in READING_ORDERS:
        raise ValueError(f"bad reading '{text[:60]}': expected left-to-right or right-to-left")
    return value


def parse_bubbles(text: str) -> str:
    """``horizontal`` or ``vertical``."""
    value = text.strip().lower()
    if value not in BUBBLE_DIRECTIONS:
        raise ValueError(f"bad bubbles '{text[:60]}': expected horizontal or vertical (top to bottom, for "
                         "Japanese and Chinese)")
    return value


# --- webtoon strips ------------------------------------------------------------------------------------------
WEBTOON = "webtoon"
WEBTOON_WIDTH, WEBTOON_SLICE = 800, 1280  # px: the common platforms' strip width and image height limit
WEBTOON_WIDTHS, WEBTOON_SLICES = (160, 4000), (160, 20000)
PANEL_HEIGHTS = (64, 8000)  # a webtoon panel's own `height:` in strip pixels


def parse_webtoon_spec(text: str) -> tuple[int, int]:
    """``WIDTHxSLICE`` in pixels (e.g. ``800x1280``): the strip's width and the most height of one slice."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*(?:px)?\s*", text)
    if not match:
        raise ValueError(f"bad webtoon '{text[:60]}': expected WIDTHxSLICE in pixels, e.g. 800x1280")
    width, slice_height = int(match.group(1)), int(match.group(2))
    if not WEBTOON_WIDTHS[0] <= width <= WEBTOON_WIDTHS[1]:
        raise LimitError(f"bad webtoon '{text[:60]}': the width must be from {WEBTOON_WIDTHS[0]} to "
                         f"{WEBTOON_WIDTHS[1]} px")
    if not WEBTOON_SLICES[0] <= slice_height <= WEBTOON_SLICES[1]:
        raise LimitError(f"bad webtoon '{text[:60]}': the slice height must be from {WEBTOON_SLICES[0]} to "
                         f"{WEBTOON_SLICES[1]} px")
    return width, slice_height


def webtoon_slices(strip_height: int, limit: int, cuts: list[int] = ()) -> list[tuple[int, int]]:
    """``(top, bottom)`` of the slices a strip `strip_height` px tall is cut into: each at most `limit` px,
    together the whole strip, cut at the lowest of `cuts` (gaps between panels) that fits, else at the limit."""
    slices = []
    top = 0
    while top < strip_height:
        bottom = min(top + limit, strip_height)
        if bottom < strip_height:
            fitting = [c for c in cuts if top + limit // 3 <= c < bottom]
            if fitting:
                bottom = max(fitting)
        slices.append((top, bottom))
        top = bottom
    return slices


# --- planning --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """Where one panel goes on a page, in pixels."""

    panel_index: int
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class PageLayout:
    """One page: its size in pixels, its cells, and the title drawn at its top (first page only)."""

    number: int
    width: int
    height: int
    cells: tuple[Cell, ...]
    title: str = ""
    title_height: int = 0


# A page plan is a list of rows: (height weight, [width weight or None for an empty slot]).
_Row = tuple[float, list[float | None]]


def _rng(seed: int, salt: str) -> random.Random:
    digest = hashlib.sha256(f"instantcharacter-layout:{salt}:{int(seed)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _grid_plans(count: int, rows: int, cols: int) -> list[list[_Row]]:
    plans = []
    for start in range(0, count, rows * cols):
        left = min(rows * cols, count - start)
        plan = []
        for r in range(rows):
            filled = max(0, min(cols, left - r * cols))
            plan.append((1.0, [1.0] * filled + [None] * (cols - filled)))
        plans.append(plan)
    return plans


_COMIC_WIDTHS = {
    1: [[1.0]],
    2: [[1.0, 1.0], [1.0, 1.6], [1.6, 1.0], [1.0, 1.25], [1.25, 1.0]],
    3: [[1.0, 1.0, 1.0], [1.0, 1.5, 1.0], [1.4, 1.0, 1.0], [1.0, 1.0, 1.4]],
}
_COMIC_HEIGHTS = {
    2: [[1.0, 1.0], [1.25, 1.0], [1.0, 1.25]],
    3: [[1.0, 1.0, 1.0], [1.3, 1.0, 1.0], [1.0, 1.3, 1.0], [1.0, 1.0, 1.3], [1.15, 0.85, 1.15]],
}


def _last_page_counts(rng: random.Random, left: int, n_rows: int) -> list[int]:
    """Panels per row for the panels that fit on one page (1 to 3 a row): every one of them goes on it."""
    rows = min(n_rows, left)
    options = [c for c in _compositions(left, rows) if c.count(1) < rows or rows == 1]
    counts = list(rng.choice(options or _compositions(left, rows)))
    return counts + [0] * (n_rows - rows)


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Ways to write ``total`` as ``parts`` numbers from 1 to 3, in order."""
    if parts == 1:
        return [(total,)] if 1 <= total <= 3 else []
    return [(k, *rest) for k in (1, 2, 3) for rest in _compositions(total - k, parts - 1)]


def _comic_plans(count: int, seed: int, landscape: bool) -> list[list[_Row]]:
    rng = _rng(seed, "comic")
    plans = []
    left = count
    n_rows = 2 if landscape else 3
    while left > 0:
        heights = rng.choice(_COMIC_HEIGHTS[n_rows])
        counts = [rng.choices([1, 2, 3], weights=[2, 5, 3])[0] for _ in range(n_rows)]
        if counts.count(1) == n_rows:  # a page of three full-width panels reads like a strip, not a comic page
            counts[rng.randrange(n_rows)] = 2
        if left <= 3 * n_rows:  # the rest fits on this page: put all of it there, not a nearly empty page more
            counts = _last_page_counts(rng, left, n_rows)
            if counts.count(0):
                heights = heights[:n_rows - counts.count(0)]
        plan = []
        for height, k in zip(heights, counts[:len(heights)], strict=True):
            k = min(k, left)
            widths = rng.choice(_COMIC_WIDTHS[k]) if k else []
            plan.append((height, list(widths) if k else [None]))
            left -= k
        plans.append(plan)
    return plans


def _plans(layout: str, seed: int, landscape: bool, count: int) -> list[list[_Row]]:
    if layout == "comic":
        return _comic_plans(count, seed, landscape)
    if layout == "strip":
        return _grid_plans(count, 1, 4) if landscape else _grid_plans(count, 4, 1)
    rows, cols = (int(v) for v in layout.split()[1].split("x"))
    return _grid_plans(count, rows, cols)


def count_pages(layout: str, page: str, seed: int, panel_count: int) -> int:
    """How many pages `panel_count` panels take with `layout` on `page` (canonical specs); nothing is drawn."""
    if layout == WEBTOON:
        return 1
    return len(_plans(layout, seed, parse_page_spec(page).landscape, panel_count))


def page_pixels(page: PageSpec, dpi: int) -> tuple[int, int]:
    """The width and height in pixels of `page` drawn at `dpi`."""
    px = dpi / MM_PER_INCH
    return round(page.width_mm * px), round(page.height_mm * px)


def check_page_limits(page: PageSpec, dpi: int, pages: int | None = None) -> None:
    """Raises `LimitError` when one page at `dpi` has more than MAX_IMAGE_PIXELS or there are over MAX_PAGES."""
    width, height = page_pixels(page, dpi)
    if width * height > MAX_IMAGE_PIXELS:
        raise LimitError(f"one page ({page.spec}) at {dpi} dpi is {width}x{height} pixels "
                         f"({width * height / 1e6:.1f} million): the limit is {MAX_IMAGE_PIXELS / 1e6:g} million; "
                         "lower the dpi or use a smaller page")
    if pages is not None and pages > MAX_PAGES:
        raise LimitError(f"the story needs {pages} pages: the limit is {MAX_PAGES} "
                         "(use fewer panels, or a layout with more panels a page)")
    if pages is not None and pages * width * height > MAX_EXPORT_PIXELS:
        raise LimitError(f"{pages} pages ({page.spec}) at {dpi} dpi are {pages * width * height / 1e6:.0f} million "
                         f"pixels together: the limit is {MAX_EXPORT_PIXELS / 1e6:g} million; lower the dpi "
                         "or use fewer pages")


def plan_pages(story: Story, panel_count: int | None = None) -> list[PageLayout]:
    """Place `panel_count` panels (default: all of the story's) on pages; deterministic for a story. A webtoon is
    one page: the whole strip.

    Raises `LimitError` (nothing planned) when the pages would be over `check_page_limits`.
    """
    count = len(story.panels) if panel_count is None else panel_count
    title_height = round(_title_font_px(story.dpi) * 1.8) if story.title else 0
    planned = _plan_cells(_plan_key(story, count))
    return [PageLayout(number, width, height, page_cells, title=story.title if number == 1 else "",
                       title_height=title_height if number == 1 else 0)
            for number, (width, height, page_cells) in enumerate(planned, start=1)]


def _plan_key(story: Story, count: int | None = None) -> tuple:
    """Everything of `story` that places its cells (hashable, for the caches)."""
    count = len(story.panels) if count is None else count
    heights = tuple(p.height for p in story.panels[:count]) if story.layout == WEBTOON else ()
    heights += (None,) * (count - len(heights)) if story.layout == WEBTOON else ()
    return (story.layout, story.page, story.seed, story.dpi, story.margin_mm, story.gutter_mm, bool(story.title),
            count, story.reading, story.webtoon_width, story.height / story.width, heights)


def webtoon_cells(width: int, aspect: float, heights: tuple, dpi: int, margin_mm: float, gutter_mm: float,
                  titled: bool) -> tuple[int, tuple[Cell, ...]]:
    """``(strip height, cells)``: panels `width` px wide stacked with gutters, each `heights[i]` px tall or,
    when that is None, ``width * aspect`` (the story size's height / width)."""
    px = dpi / MM_PER_INCH
    margin, gutter = round(margin_mm * px), round(gutter_mm * px)
    y = margin + (round(_title_font_px(dpi) * 1.8) if titled else 0)
    cells = []
    for index, height in enumerate(heights):
        h = int(height) if height else max(PANEL_HEIGHTS[0], round(width * aspect))
        cells.append(Cell(index, 0, y, width, h))
        y += h + gutter
    total = y - (gutter if cells else 0) + margin
    if width * total > MAX_IMAGE_PIXELS:
        raise LimitError(f"the webtoon strip is {width}x{total} pixels ({width * total / 1e6:.1f} million): the "
                         f"limit is {MAX_IMAGE_PIXELS / 1e6:g} million; use fewer or shorter panels")
    return total, tuple(cells)


@functools.lru_cache(maxsize=32)
def _plan_cells(key: tuple) -> list[tuple[int, int, tuple[Cell, ...]]]:
    """``(width, height, cells)`` of every page (see `plan_pages`)."""
    (layout, page_spec, seed, dpi, margin_mm, gutter_mm, titled, count, reading, strip_width, aspect,
     heights) = key
    if layout == WEBTOON:
        total, cells = webtoon_cells(strip_width, aspect, heights, dpi, margin_mm, gutter_mm, titled)
        return [(strip_width, total, cells)]
    page = parse_page_spec(page_spec)
    plans = _plans(layout, seed, page.landscape, count)
    check_page_limits(page, dpi, len(plans))
    px = dpi / MM_PER_INCH
    width, height = page_pixels(page, dpi)
    margin, gutter = round(margin_mm * px), round(gutter_mm * px)
    title_height = round(_title_font_px(dpi) * 1.8) if titled else 0
    pages = []
    index = 0
    for number, plan in enumerate(plans, start=1):
        top = margin + (title_height if number == 1 else 0)
        area_h = height - top - margin
        area_w = width - 2 * margin
        cells = []
        total_h = sum(h for h, _ in plan)
        usable_h = area_h - gutter * (len(plan) - 1)
        y = float(top)
        for row_h, slots in plan:
            cell_h = usable_h * row_h / total_h
            total_w = sum(w if w is not None else 1.0 for w in slots)
            usable_w = area_w - gutter * (len(slots) - 1)
            x = float(margin)
            for slot in slots:
                cell_w = usable_w * (slot if slot is not None else 1.0) / total_w
                if slot is not None:
                    cells.append(Cell(index, round(x), round(y), round(x + cell_w) - round(x),
                                      round(y + cell_h) - round(y)))
                    index += 1
                x += cell_w + gutter
            y += cell_h + gutter
        if reading == "right-to-left":  # the same cells seen in a mirror: panel 1 top right
            cells = [Cell(c.panel_index, width - c.x - c.w, c.y, c.w, c.h) for c in cells]
        pages.append((width, height, tuple(cells)))
    return pages


# --- panel sizes -----------------------------------------------------------------------------------------------
SIZE_MULTIPLE = 16  # FLUX's packed latents: 8x VAE and 2x2 patches


def fit_panel_size(aspect: float, pixels: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """``(width, height)`` in multiples of `multiple` with ``width / height`` close to `aspect` and about
    `pixels` pixels (the story's ``size`` is its budget), each side within the engine's limits."""
    from core.limits import MAX_OUTPUT_PIXELS, MAX_SIDE, MIN_SIDE

    aspect = min(max(float(aspect), 1 / 8), 8.0)
    pixels = min(max(int(pixels), MIN_SIDE * MIN_SIDE), MAX_OUTPUT_PIXELS)

    def side(value: float) -> int:
        return min(max(multiple * round(value / multiple), max(MIN_SIDE, multiple)), MAX_SIDE)

    return side((pixels * aspect) ** 0.5), side((pixels / aspect) ** 0.5)


def panel_sizes(story: Story) -> dict[int, tuple[int, int]]:
    """The size each panel is rendered at, by index: its cell's shape at the story's pixel budget, so the page
    shows the whole picture (nothing is cropped away). Captions and bubbles do not change it."""
    pixels = story.width * story.height
    return {cell.panel_index: fit_panel_size(cell.w / max(1, cell.h), pixels)
            for _, _, page_cells in _plan_cells(_plan_key(story)) for cell in page_cells}


# --- drawing ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def load_font(size_px: int, bold: bool = False, chain: FontChain = FontChain()) -> ChainFont:
    """Text at `size_px` in `chain` (DejaVu Sans first, then the fonts for scripts it lacks)."""
    return ChainFont(chain, size_px, bold)


def font_chain(story: Story) -> FontChain:
    """The fonts of `story`'s text: the shipped and system ones, then its ``font:`` file."""
    return FontChain(FontFace(Path(story.font)) if story.font else None)


def missing_glyph_warnings(story: Story) -> list[str]:
    """One warning per title, caption or speech that has characters no font of the story's chain can draw,
    naming them and the fix (they would print as empty boxes)."""
    found: list[tuple[str, str]] = []

    def check(where: str, text: str, bold: bool = False) -> None:
        missing = chain.missing_characters(text, bold)
        if missing:
            found.append((where, missing))

    chain = font_chain(story)
    if story.title:
        check("title", story.title, bold=True)
    for panel in story.panels:
        where = f"line {panel.line}" if panel.line else f"panel {panel.number}"
        if panel.caption:
            check(f"{where} (caption)", panel.caption)
        for dialogue in panel.dialogue:
            check(f"{where} ({dialogue.speaker}'s speech)", f"{dialogue.speaker}: {dialogue.text}")
    return [f"{where}: no font has {describe_characters(missing)}, which would print as boxes: {MISSING_FONT_FIX}"
            for where, missing in found]


def _pt_to_px(points: float, dpi: int) -> int:
    return max(8, round(points / 72 * dpi))


def _title_font_px(dpi: int) -> int:
    return _pt_to_px(20, dpi)


def wrap_text(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap to `max_width` pixels; words longer than a line are cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= max_width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
            while font.getlength(line) > max_width and len(line) > 1:
                cut = max(1, int(len(line) * max_width / font.getlength(line)) - 1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _line_height(font) -> int:
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.size, 0)
    return round((ascent + descent) * 1.15)


def _fit_lines(lines: list[str], font, max_width: float, max_lines: int) -> list[str]:
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max(1, max_lines)]
    last = kept[-1]
    while last and font.getlength(last + "…") > max_width:
        last = last[:-1]
    kept[-1] = last.rstrip() + "…"
    return kept


def _text(draw, runs: list[TextRun] | None, xy, text: str, font: ChainFont, anchor: str = "la") -> None:
    """Draws `text` with Pillow's `anchor` (``la``, ``ma`` or ``mm``) and adds its runs to `runs` when given."""
    drawn = font.draw_line(draw, xy, text, anchor)
    if runs is not None:
        runs.extend(drawn)


def compose_pages(story: Story, images: Mapping[int, Image.Image | None], first: int | None = None,
                  texts: list[list[TextRun]] | None = None) -> list[Image.Image]:
    """Draw every page (only the `first` ones when given). `images` maps panel index to its rendered image;
    missing ones get a grey placeholder. With `texts` (an empty list), the title, captions and speech drawn are
    also listed there, one list of `TextRun` per page (the PDF's text layer)."""
    pages = plan_pages(story)
    shown = pages if first is None else pages[:first]
    drawn = []
    for page in shown:
        runs = [] if texts is not None else None
        drawn.append(compose_page(story, page, images, total_pages=len(pages), texts=runs))
        if texts is not None:
            texts.append(runs)
    return drawn


def compose_page(story: Story, page: PageLayout, images: Mapping[int, Image.Image | None],
                 total_pages: int | None = None, texts: list[TextRun] | None = None) -> Image.Image:
    """Draw one page of `plan_pages` (RGB, `page.width` x `page.height`), numbered "n / total_pages"; the words
    drawn are also added to `texts` when it is a list."""
    canvas = Image.new("RGB", (page.width, page.height), PAPER)
    draw = ImageDraw.Draw(canvas)
    margin = round(story.margin_mm * story.dpi / MM_PER_INCH)
    if page.title:
        font = load_font(_title_font_px(story.dpi), True, font_chain(story))
        title = _fit_lines(wrap_text(page.title, font, page.width - 2 * margin), font, page.width - 2 * margin, 1)[0]
        _text(draw, texts, (page.width / 2, margin + page.title_height / 2), title, font, "mm")
    footer = load_font(_pt_to_px(7, story.dpi))
    if margin >= _line_height(footer) and story.layout != WEBTOON:
        total = total_pages if total_pages is not None else len(plan_pages(story))
        draw.text((page.width / 2, page.height - margin / 2), f"{page.number} / {total}", font=footer.base,
                  fill=(110, 110, 110), anchor="mm")
    for cell in page.cells:
        panel = story.panels[cell.panel_index] if cell.panel_index < len(story.panels) else None
        _draw_cell(canvas, story, cell, panel, images.get(cell.panel_index), texts)
    return canvas


def caption_lines(story: Story, cell: Cell, panel: Panel) -> tuple[list[str], object, int, int]:
    """``(lines, font, line height, box height)`` of a panel's caption box (at the bottom of its cell)."""
    font = load_font(_pt_to_px(9, story.dpi), False, font_chain(story))
    lh, pad = _line_height(font), _pad(story)
    max_lines = max(1, int((cell.h * 0.35 - 2 * pad) // lh))
    lines = _fit_lines(wrap_text(panel.caption, font, cell.w - 2 * pad), font, cell.w - 2 * pad, max_lines)
    return lines, font, lh, len(lines) * lh + 2 * pad


def _pad(story: Story) -> int:
    return max(4, round(story.dpi / 30))


def bubble_area(story: Story, cell: Cell, panel: Panel | None) -> tuple[int, int, int, int]:
    """Where a panel's speech bubbles may go: its cell above the caption box (captions never cover bubbles)."""
    caption_h = caption_lines(story, cell, panel)[3] if panel is not None and panel.caption else 0
    return (cell.x, cell.y, cell.w, cell.h - caption_h)


def _draw_cell(canvas: Image.Image, story: Story, cell: Cell, panel: Panel | None,
               image: Image.Image | None, texts: list[TextRun] | None = None) -> None:
    draw = ImageDraw.Draw(canvas)
    line_w = max(2, round(story.dpi / 75))
    area = (cell.x, cell.y, cell.w, cell.h)  # the picture fills the cell: it was rendered at the cell's shape
    boxes: dict[str, tuple[float, float, float, float]] = {}
    if panel is not None:
        boxes = _panel_boxes(panel)
    if image is not None:
        boxes_px = _paste_cover(canvas, image, area, boxes)
    else:
        boxes_px = {name: _box_to_area(box, area, 1.0, area[2], area[3], 0, 0) for name, box in boxes.items()}
        draw.rectangle((area[0], area[1], area[0] + area[2] - 1, area[1] + area[3] - 1), fill=MISSING_FILL)
        if panel is not None:
            font = load_font(_pt_to_px(10, story.dpi))
            draw.text((area[0] + area[2] / 2, area[1] + area[3] / 3), f"Panel {panel.number}\nnot rendered",
                      font=font.base, fill=(120, 120, 120), anchor="mm", align="center")
    if panel is not None and panel.caption:
        lines, font, lh, caption_h = caption_lines(story, cell, panel)
        pad = _pad(story)
        top = cell.y + cell.h - caption_h
        draw.rectangle((cell.x, top, cell.x + cell.w - 1, cell.y + cell.h - 1), fill=CAPTION_FILL)
        for k, text in enumerate(lines):
            _text(draw, texts, (cell.x + pad, top + pad + k * lh), text, font)
        draw.line((cell.x, top, cell.x + cell.w - 1, top), fill=INK, width=line_w)
    if panel is not None and panel.dialogue:
        _draw_bubbles(canvas, story, plan_bubbles(story, panel, bubble_area(story, cell, panel), boxes_px), texts)
    draw.rectangle((cell.x, cell.y, cell.x + cell.w - 1, cell.y + cell.h - 1), outline=INK, width=line_w)


def _panel_boxes(panel: Panel) -> dict[str, tuple[float, float, float, float]]:
    """Where each character's figure is, as normalized boxes. A drawn box is taken as tight around the figure;
    a preset (``left``, ``grid:...``) spans its whole band, so the figure is assumed to leave headroom above it
    for speech bubbles."""
    from core.story.format import region_box

    boxes = {}
    for name, spec in panel.regions.items():
        x0, y0, x1, y1 = region_box(spec)
        if not spec.startswith("box:"):
            y0 += (y1 - y0) * PRESET_HEADROOM
        boxes[name] = (x0, y0, x1, y1)
    return boxes


def _box_to_area(box, area, scale, sw, sh, ox, oy) -> tuple[float, float, float, float]:
    """A normalized image box in page pixels, after scaling the image to (sw, sh) and cropping at (ox, oy)."""
    ax, ay, aw, ah = area
    x0 = min(max(box[0] * sw - ox, 0), aw)
    x1 = min(max(box[2] * sw - ox, 0), aw)
    y0 = min(max(box[1] * sh - oy, 0), ah)
    y1 = min(max(box[3] * sh - oy, 0), ah)
    return (ax + x0, ay + y0, ax + x1, ay + y1)


def _paste_cover(canvas: Image.Image, image: Image.Image, area, boxes) -> dict[str, tuple[float, ...]]:
    """Scale `image` to cover `area` and crop it, keeping the characters' boxes in view; returns them in pixels.
    A panel rendered at its cell's shape loses at most the rounding of its sides to multiples of 16."""
    ax, ay, aw, ah = area
    if aw <= 0 or ah <= 0:
        return {}
    iw, ih = image.size
    scale = max(aw / iw, ah / ih)
    sw, sh = max(aw, round(iw * scale)), max(ah, round(ih * scale))
    if boxes:
        fx = (min(b[0] for b in boxes.values()) + max(b[2] for b in boxes.values())) / 2
        fy = (min(b[1] for b in boxes.values()) + max(b[3] for b in boxes.values())) / 2
    else:
        fx = fy = 0.5
    ox = int(min(max(fx * sw - aw / 2, 0), sw - aw))
    oy = int(min(max(fy * sh - ah / 2, 0), sh - ah))
    scaled = image.convert("RGB").resize((sw, sh), Image.Resampling.LANCZOS)
    canvas.paste(scaled.crop((ox, oy, ox + aw, oy + ah)), (ax, ay))
    return {name: _box_to_area(box, area, scale, sw, sh, ox, oy) for name, box in boxes.items()}


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def speaker_box(panel: Panel, speaker: str, area, boxes_px,
                right_to_left: bool = False) -> tuple[float, float, float, float] | None:
    """The speaker's region in page pixels (its region, or its share of the panel in prompt order, from the
    right when the story reads `right_to_left`); None when the speaker is not in the panel."""
    ax, ay, aw, ah = area
    if speaker not in panel.characters:
        return None
    if speaker in boxes_px:
        return boxes_px[speaker]
    # no region given: assume characters stand left to right in the order the prompt names them
    k, n = panel.characters.index(speaker), len(panel.characters)
    if right_to_left:
        k = n - 1 - k
    return (ax + aw * k / n, ay + ah * PRESET_HEADROOM, ax + aw * (k + 1) / n, ay + ah)


def _speaker_anchor(panel: Panel, speaker: str, area, boxes_px,
                    right_to_left: bool = False) -> tuple[float, float] | None:
    """The point a bubble's tail aims at: near the top of the speaker's box (their head), or None off-panel."""
    box = speaker_box(panel, speaker, area, boxes_px, right_to_left)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2, min(y0 + (y1 - y0) * 0.08, area[1] + area[3] * 0.9))


TAIL_SHARE = 0.15  # a tail is at most this share of its panel's shorter side


def _gap(rect, point) -> float:
    """Distance from `point` to the nearest point of `rect` (0 inside)."""
    dx = max(rect[0] - point[0], 0, point[0] - rect[2])
    dy = max(rect[1] - point[1], 0, point[1] - rect[3])
    return (dx * dx + dy * dy) ** 0.5


def plan_bubble(size: tuple[float, float], area, anchor, speaker_box, other_boxes, placed,
                right_to_left: bool = False) -> tuple[float, ...]:
    """Choose where a bubble of `size` goes inside `area` (x, y, w, h): away from the characters' boxes and the
    bubbles already `placed`, near the top, close above its speaker's `anchor` (so its tail stays short), after
    the earlier bubbles in reading order (left to right, or right to left with `right_to_left`).
    Returns (x0, y0, x1, y1)."""
    ax, ay, aw, ah = area
    bw, bh = size
    inset = min(aw, ah) * 0.03
    side = min(aw, ah)
    steps_x, steps_y = 13, 9
    best, best_score = None, float("inf")
    for i in (reversed(range(steps_x)) if right_to_left else range(steps_x)):  # ties go to the reading start
        x = ax + inset + max(0.0, aw - bw - 2 * inset) * i / (steps_x - 1)
        for j in range(steps_y):
            y = ay + inset + max(0.0, ah - bh - 2 * inset) * j / (steps_y - 1)
            rect = (x, y, x + bw, y + bh)
            area_b = bw * bh
            score = 0.0
            if speaker_box is not None:
                score += 10.0 * _overlap(rect, speaker_box) / area_b
            score += sum(4.0 * _overlap(rect, box) / area_b for box in other_boxes)
            score += sum(50.0 * _overlap(rect, box) / area_b for box in placed)
            # Reading order: a later bubble should not sit before an earlier one on the same band.
            score += sum(0.8 for box in placed if ((x + bw / 2 > (box[0] + box[2]) / 2) if right_to_left
                                                   else (x + bw / 2 < (box[0] + box[2]) / 2)) and y < box[3])
            score += 1.0 * (y - ay) / ah
            if anchor is not None:
                score += 1.5 * abs(x + bw / 2 - anchor[0]) / aw
                if y + bh > anchor[1]:
                    score += 0.5  # beside or below the head: the tail would point sideways or up
                if _gap(rect, anchor) == 0:
                    score += 20.0  # over the speaker's head
                score += 2.0 * max(0.0, _gap(rect, anchor) - TAIL_SHARE * side) / side
            if score < best_score - 1e-9:
                best, best_score = rect, score
    return best


@dataclass(frozen=True)
class Bubble:
    """A planned speech bubble: its box and lines, the font size, and its tail (two base points on the bubble's
    edge and the tip; None for no tail) aimed at `speaker_box`. A `vertical` bubble's lines are its columns,
    in reading order (right to left), each `line_height` wide."""

    rect: tuple[float, float, float, float]
    lines: tuple[str, ...]
    font_px: int
    line_height: int
    pad: int
    tail: tuple | None
    speaker_box: tuple[float, float, float, float] | None
    anchor: tuple[float, float] | None
    vertical: bool = False


BUBBLE_POINTS = (9, 8, 7)  # speech shrinks to 7 pt at the smallest, then is cut with "…"


def plan_bubbles(story: Story, panel: Panel, area, boxes_px) -> list[Bubble]:
    """Every speech bubble of `panel` inside `area` (x, y, w, h), in reading order."""
    ax, ay, aw, ah = area
    bubbles: list[Bubble] = []
    placed: list[tuple[float, ...]] = []
    chain = font_chain(story)
    vertical = story.bubbles == "vertical"
    rtl = story.reading == "right-to-left"
    for dialogue in panel.dialogue:
        box = speaker_box(panel, dialogue.speaker, area, boxes_px, rtl)
        anchor = _speaker_anchor(panel, dialogue.speaker, area, boxes_px, rtl)
        text = dialogue.text if anchor is not None else f"{dialogue.speaker}: {dialogue.text}"
        if vertical:
            lines, font, lh, pad, bw, bh = _vertical_bubble(text, chain, story.dpi, aw, ah)
        else:
            lines, font, lh, pad, bw, bh = _horizontal_bubble(text, chain, story.dpi, aw, ah)
        others = [b for name, b in boxes_px.items() if name != dialogue.speaker]
        rect = plan_bubble((bw, bh), area, anchor, boxes_px.get(dialogue.speaker, box), others, placed, rtl)
        placed.append(rect)
        radius = min(bh / 2, bw / 2, pad * 1.6)
        tail = _tail(rect, anchor, min(aw, ah), radius, font.size, box) if anchor is not None else None
        bubbles.append(Bubble(rect, tuple(lines), font.size, lh, pad, tail, box, anchor, vertical))
    return bubbles


def _horizontal_bubble(text: str, chain: FontChain, dpi: int, aw: float, ah: float):
    """``(lines, font, line height, pad, width, height)`` of a bubble of lines."""
    for points in BUBBLE_POINTS:  # shrink long speeches until they fit in half the panel
        font = load_font(_pt_to_px(points, dpi), False, chain)
        pad = max(4, round(font.size * 0.6))
        # wide enough for a few words a line even in a narrow cell, never wider than the cell
        wrap = min(aw * 0.92, max(aw * 0.5, font.size * 12.0)) - 2 * pad
        lines = wrap_text(text, font, wrap)
        lh = _line_height(font)
        if len(lines) * lh + 2 * pad <= ah * 0.45:
            break
    lines = _fit_lines(lines, font, wrap, max(1, int((ah * 0.45 - 2 * pad) // lh)))
    bw = max(max(font.getlength(t) for t in lines) + 2 * pad, font.size * 3.0)  # a size floor for "Ho!"
    bh = len(lines) * lh + 2 * pad
    return lines, font, lh, pad, min(bw, aw * 0.92), min(bh, ah * 0.9)


def _vertical_bubble(text: str, chain: FontChain, dpi: int, aw: float, ah: float):
    """``(columns, font, column width, pad, width, height)`` of a bubble of vertical columns (top to bottom,
    read right to left): columns hold up to 60% of the panel's height, a bubble at most half its width."""
    for points in BUBBLE_POINTS:
        font = load_font(_pt_to_px(points, dpi), False, chain)
        pad = max(4, round(font.size * 0.6))
        column_w = round(font.size * 1.3)
        per_column = max(1, int((ah * 0.6 - 2 * pad) // font.column_advance))
        columns = _columns(text, per_column)
        if len(columns) * column_w + 2 * pad <= aw * 0.5:
            break
    columns = columns[:max(1, int((aw * 0.5 - 2 * pad) // column_w))]
    if "".join(columns) != "".join(_columns(text, per_column)):
        columns[-1] = columns[-1][:-1] + "…"
    longest = max(font.column_length(c) for c in columns)
    bw = len(columns) * column_w + 2 * pad
    bh = max(longest + 2 * pad, bw + font.size)  # a column bubble is taller than wide, even for one character
    return columns, font, column_w, pad, min(bw, aw * 0.92), min(bh, ah * 0.9)


def _columns(text: str, per_column: int) -> list[str]:
    """`text` cut into columns of at most `per_column` characters; a line break or a space starts a new one."""
    columns = []
    for part in text.split():
        columns += [part[k:k + per_column] for k in range(0, len(part), per_column)]
    return columns or [""]


def _draw_bubbles(canvas: Image.Image, story: Story, bubbles: list[Bubble], texts: list[TextRun] | None) -> None:
    draw = ImageDraw.Draw(canvas)
    line_w = max(2, round(story.dpi / 100))
    for bubble in bubbles:
        x0, y0, x1, y1 = bubble.rect
        radius = min((y1 - y0) / 2, bubble.pad * 1.6)
        draw.rounded_rectangle(bubble.rect, radius=radius, fill=PAPER, outline=INK, width=line_w)
        if bubble.tail is not None:
            base_a, base_b, tip = bubble.tail
            draw.polygon([base_a, base_b, tip], fill=PAPER)
            draw.line([base_a, tip], fill=INK, width=line_w)
            draw.line([base_b, tip], fill=INK, width=line_w)
        font = load_font(bubble.font_px, False, font_chain(story))
        if bubble.vertical:  # columns from the right edge leftwards, each from the top down
            for k, column in enumerate(bubble.lines):
                x = x1 - bubble.pad - (k + 0.5) * bubble.line_height
                drawn = font.draw_column(draw, (x, y0 + bubble.pad), column)
                if texts is not None:
                    texts.extend(drawn)
            continue
        for k, t in enumerate(bubble.lines):
            _text(draw, texts, ((x0 + x1) / 2, y0 + bubble.pad + k * bubble.line_height), t, font, "ma")


def _tail(rect, anchor, panel_side: float, radius: float, font_px: float = 12.0, box=None):
    """The tail triangle (two base points on the bubble's bottom or top edge, inside its outline, and the tip),
    at most TAIL_SHARE of `panel_side` (and 3.5 lines) long; None when the anchor is under the bubble.

    It aims at `anchor` (the speaker's head) when that is clearly above or below the bubble; a head beside the
    bubble gets a tail going down into the speaker's `box` instead (a flat tail would be a sideways needle)."""
    x0, y0, x1, y1 = rect
    tx, ty = anchor
    if x0 <= tx <= x1 and y0 <= ty <= y1:
        return None  # the speaker's head is under the bubble: no tail
    longest = max(font_px * 0.8, min(panel_side * TAIL_SHARE, font_px * 3.5))
    below = ty > y0 + (y1 - y0) * 0.25  # a head level with the bubble counts as below: the tail goes down
    edge, inset = (y1, -3.0) if below else (y0, 3.0)
    half = max(font_px * 0.45, min((x1 - x0) * 0.18, (y1 - y0) * 0.4))
    half = min(half, max(1.0, (x1 - x0) / 2 - radius))
    if box is not None and below:
        margin = min((box[2] - box[0]) * 0.2, font_px)
        tx = min(max(tx, box[0] + margin), box[2] - margin)
    bx = min(max(tx, x0 + radius + half), x1 - radius - half)
    dx, dy = tx - bx, ty - edge
    if below and box is not None and dy < 0.8 * abs(dx):  # beside, or just below: go down into the speaker's box
        ty = max(ty, min(edge + longest * 0.9, box[3]))
        dx, dy = tx - bx, ty - edge
        if dy < 0.8 * abs(dx):
            dx = 1.25 * dy * (1 if dx > 0 else -1)
    base_a, base_b = (bx - half, edge + inset), (bx + half, edge + inset)
    length = (dx * dx + dy * dy) ** 0.5
    if length > longest:  # a long tail still points at the speaker but stops short of them
        dx, dy = dx * longest / length, dy * longest / length
    elif length < font_px * 0.6:  # right next to the head: a short stub in the same direction
        scale = font_px * 0.6 / max(length, 1e-6)
        dx, dy = dx * scale, dy * scale
    return base_a, base_b, (bx + dx, edge + dy)

"""Page geometry of a rendered story, without drawing: page and layout specs, cells on pages, panel sizes.

Four layouts: ``grid RxC`` (equal cells), ``strip`` (four panels a page: a column on portrait pages, a row on
landscape ones), ``comic`` (rows of one to three panels with varied sizes, chosen from the story seed so the
same story always gives the same pages) and ``webtoon`` (one vertical strip of full-width panels, sliced at export).
Pages are sized in millimetres and placed at the story's DPI; a right-to-left story's pages are mirrored.
`core.story.drawing` draws what is planned here.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.limits import (
    MAX_EXPORT_PIXELS,
    MAX_IMAGE_PIXELS,
    MAX_OUTPUT_PIXELS,
    MAX_PAGES,
    MAX_SIDE,
    MIN_SIDE,
    LimitError,
)

if TYPE_CHECKING:
    from core.story.model import Story

MM_PER_INCH = 25.4
PAGE_SIZES_MM = {
    "A3": (297.0, 420.0),
    "A4": (210.0, 297.0),
    "A5": (148.0, 210.0),
    "Letter": (215.9, 279.4),
    "Legal": (215.9, 355.6),
}
_UNITS_MM = {"mm": 1.0, "cm": 10.0, "in": MM_PER_INCH, "pt": MM_PER_INCH / 72}


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
    title_height = round(title_font_px(story.dpi) * 1.8) if story.title else 0
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
    y = margin + (round(title_font_px(dpi) * 1.8) if titled else 0)
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
    title_height = round(title_font_px(dpi) * 1.8) if titled else 0
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


def pt_to_px(points: float, dpi: int) -> int:
    """A type size in points as pixels at `dpi` (at least 8)."""
    return max(8, round(points / 72 * dpi))


def title_font_px(dpi: int) -> int:
    """The size in pixels of a story title at `dpi` (20 pt)."""
    return pt_to_px(20, dpi)

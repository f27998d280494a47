"""Drawing a story's pages with PIL: pictures pasted into their cells, borders, captions, speech bubbles and titles.

The cells come from `core.story.geometry`; text is drawn in any script through `core.story.typeset` with the
story's font chain (`core.story.fonts`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from core.story.fonts import MISSING_FONT_FIX, FontChain, FontFace, describe_characters
from core.story.geometry import MM_PER_INCH, WEBTOON, Cell, PageLayout, plan_pages, pt_to_px, title_font_px
from core.story.regions import region_box
from core.story.typeset import ChainFont, TextRun

if TYPE_CHECKING:
    from core.story.model import Panel, Story

INK = (20, 20, 20)
PAPER = (255, 255, 255)
CAPTION_FILL = (255, 249, 225)
MISSING_FILL = (226, 226, 226)
PRESET_HEADROOM = 0.3  # fraction of a preset region above the character's head, where bubbles may go


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
        font = load_font(title_font_px(story.dpi), True, font_chain(story))
        title = _fit_lines(wrap_text(page.title, font, page.width - 2 * margin), font, page.width - 2 * margin, 1)[0]
        _text(draw, texts, (page.width / 2, margin + page.title_height / 2), title, font, "mm")
    footer = load_font(pt_to_px(7, story.dpi))
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
    font = load_font(pt_to_px(9, story.dpi), False, font_chain(story))
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
            font = load_font(pt_to_px(10, story.dpi))
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
        font = load_font(pt_to_px(points, dpi), False, chain)
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
        font = load_font(pt_to_px(points, dpi), False, chain)
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

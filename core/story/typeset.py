"""Shaped text in any script, drawn with the font chain of `core.story.fonts`.

`ChainFont` is what the page layout measures and draws with: it answers Pillow's font questions (``getlength``,
``getmetrics``, ``size``) for text that may need several fonts, and draws a line segment by segment, each in the
first font of the chain that has its characters. Pillow's Raqm layout (HarfBuzz and FriBiDi) shapes each segment:
Arabic joins, right-to-left lines run right to left, combining marks sit on their letters, and vertical columns
(``direction="ttb"``) take the fonts' vertical forms. Line heights come from the shipped font, so a line is as tall
whatever script it holds.

Every line drawn is also returned as `TextRun`s (one per font segment), which the PDF writes as its invisible,
selectable text layer at the same place.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

from PIL import ImageDraw, ImageFont, features

from core.story.fonts import BUNDLED, BUNDLED_BOLD, FontChain, FontFace

INK = (20, 20, 20)
# Punctuation the shipped (horizontal) font has, in the vertical forms CJK fonts draw down a column; the CJK
# fonts turn their own punctuation (、。「」ー...) through their "vert" feature.
VERTICAL_FORMS = str.maketrans({"…": "︙", "‥": "︰", "—": "︱", "–": "︲", "(": "︵", ")": "︶", "[": "﹇",
                                "]": "﹈", "{": "︷", "}": "︸"})
LAYOUT_ENGINE = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC


@dataclass(frozen=True)
class TextRun:
    """One segment of a line of text on a page, drawn in one font: for a horizontal run, its left end and
    baseline in page pixels and its width; for a vertical one (`vertical`), the top centre of its column and its
    length down the column. `size_px` is the font size in pixels."""

    x: float
    baseline: float
    text: str
    size_px: int
    width: float
    bold: bool = False
    face: FontFace = BUNDLED
    vertical: bool = False


@functools.lru_cache(maxsize=128)
def load_face(face: FontFace, size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """`face` at `size_px` pixels, shaped with Raqm when Pillow has it; Pillow's built-in font when the file
    cannot be read."""
    try:
        return ImageFont.truetype(str(face.path), size_px, index=face.index, layout_engine=LAYOUT_ENGINE)
    except OSError:
        return ImageFont.load_default(size_px)


def _direction(vertical: bool) -> str | None:
    # Pillow's basic layout knows no directions: it then draws columns character by character (see draw_column)
    return "ttb" if vertical and LAYOUT_ENGINE == ImageFont.Layout.RAQM else None


class ChainFont:
    """Text at `size` pixels in a `FontChain`, with the part of Pillow's font interface the layout uses."""

    def __init__(self, chain: FontChain, size: int, bold: bool = False):
        self.chain, self.size, self.bold = chain, int(size), bold
        self.base = load_face(BUNDLED_BOLD if bold else BUNDLED, self.size)

    def getmetrics(self) -> tuple[int, int]:
        """``(ascent, descent)`` of the shipped font: every line is this tall, whatever script it holds."""
        return self.base.getmetrics() if hasattr(self.base, "getmetrics") else (self.size, 0)

    def segments(self, text: str) -> list[tuple[str, ImageFont.FreeTypeFont]]:
        return [(part, load_face(face, self.size)) for part, face in self.chain.segments(text, self.bold)]

    def getlength(self, text: str) -> float:
        """The width of `text` as one line, in pixels."""
        return sum(font.getlength(part) for part, font in self.segments(text))

    def column_length(self, text: str) -> float:
        """The length of `text` set as one vertical column, in pixels."""
        if _direction(True) is None:
            return self.column_advance * len(text)
        return sum(font.getlength(part, direction="ttb")
                   for part, font in self.segments(text.translate(VERTICAL_FORMS)))

    @property
    def column_advance(self) -> float:
        """The advance of one full-width character down a column (one em)."""
        return float(self.size)

    def draw_line(self, draw: ImageDraw.ImageDraw, xy, text: str, anchor: str = "la", fill=INK) -> list[TextRun]:
        """Draw `text` as one line at `xy` with Pillow's `anchor` (``la``, ``ma`` or ``mm``); returns its runs.

        Segments in different fonts are placed in reading order: right to left when the line starts with a
        right-to-left letter (Raqm orders the characters inside each segment)."""
        ascent, descent = self.getmetrics()
        parts = self.segments(text)
        widths = [font.getlength(part) for part, font in parts]
        total = sum(widths)
        x = xy[0] - (total / 2 if anchor[0] == "m" else 0)
        baseline = xy[1] + (ascent if anchor[1] == "a" else (ascent - descent) / 2)
        order = list(zip(parts, widths, self.chain.segments(text, self.bold), strict=True))
        if starts_right_to_left(text):
            order.reverse()
        runs = []
        for ((part, font), width, (_, face)) in order:
            draw.text((x, baseline), part, font=font, fill=fill, anchor="ls")
            runs.append(TextRun(x, baseline, part, self.size, width, self.bold, face))
            x += width
        return runs

    def draw_column(self, draw: ImageDraw.ImageDraw, top_center, text: str, fill=INK) -> list[TextRun]:
        """Draw `text` as one vertical column, top to bottom, centred on ``top_center[0]``; returns its runs (with
        the characters as written: "…" drawn as "︙" is still "…" in the text layer)."""
        x, y = top_center
        runs = []
        shown = text.translate(VERTICAL_FORMS)  # one character for one: positions stay the same
        start = 0
        for (part, font), (_, face) in zip(self.segments(shown), self.chain.segments(shown, self.bold), strict=True):
            written = text[start:start + len(part)]
            start += len(part)
            if _direction(True) is None:
                length = 0.0
                for char in part:
                    draw.text((x, y + length), char, font=font, fill=fill, anchor="mt")
                    length += self.column_advance
            else:
                draw.text((x, y), part, font=font, fill=fill, anchor="mt", direction="ttb")
                length = font.getlength(part, direction="ttb")
            runs.append(TextRun(x, y, written, self.size, length, self.bold, face, vertical=True))
            y += length
        return runs


def starts_right_to_left(text: str) -> bool:
    """Whether the first strong character of `text` is right to left (the Unicode paragraph direction)."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False

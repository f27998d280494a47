"""The story PDF, written with fpdf2: each page's picture at the story's dpi, with its words as a text layer.

The page pictures are the page PNGs themselves (words drawn, in any script, by `core.story.typeset`); on top of
each, every line of the title, captions and speech is written as invisible PDF text (render mode 3) at the place
and width the picture shows it, in the font that drew it, embedded as a subset with a Unicode map. So the words
can be selected, searched and copied in every script, and the page looks exactly like the PNG.

Text is stored in visual order, as PDF readers expect (a right-to-left line is written left to right as it
appears; readers turn it back into reading order). Fonts with PostScript (CFF) outlines, such as Noto CJK, are
embedded with their outlines converted to TrueType, which every PDF reader maps back to Unicode the same way.
Pages print at the story's size: ``points = pixels * 72 / dpi``.
"""

from __future__ import annotations

import calendar
import datetime
import io
import logging
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from fpdf import FPDF
from fpdf.bidi import BidiParagraph
from fpdf.enums import TextDirection, TextMode
from PIL import Image

from core.story.fonts import FontFace
from core.story.typeset import TextRun, starts_right_to_left

JPEG_QUALITY = 92
CREATOR = "InstantCharacter Studio"


def visual_order(text: str) -> str:
    """`text` (one line, in reading order) in the order its characters appear left to right on the page."""
    if not any(_is_right_to_left(char) for char in text):
        return text
    base = TextDirection.RTL if starts_right_to_left(text) else TextDirection.LTR
    fragments = BidiParagraph(text=text, base_direction=base).get_bidi_fragments()
    parts = [part[::-1] if direction == TextDirection.RTL else part for part, direction in fragments]
    return "".join(reversed(parts) if base == TextDirection.RTL else parts)


def _is_right_to_left(char: str) -> bool:
    return unicodedata.bidirectional(char) in ("R", "AL")


def embeddable_font(face: FontFace, chars: str, folder: Path) -> Path:
    """A TrueType file in `folder` with the glyphs of `chars` from `face` (a subset; CFF outlines converted to
    TrueType ones), for fpdf2 to embed."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(str(face.path), fontNumber=face.index, lazy=True)
    # Unread tables the text layer has no use for are dropped before the subsetter would parse them (CJK fonts'
    # layout tables and seldom-used character maps take most of the time)
    for tag in ("GSUB", "GPOS", "GDEF", "BASE", "JSTF", "MATH", "VORG", "vhea", "vmtx", "DSIG"):
        if tag in font:
            del font[tag]
    cmap = font["cmap"]
    best = [t for t in cmap.tables if (t.platformID, t.platEncID) in ((3, 10), (0, 4))][:1] or \
        [t for t in cmap.tables if (t.platformID, t.platEncID) in ((3, 1), (0, 3))][:1]
    if best:
        cmap.tables = best
    options = subset.Options()
    options.layout_features = []  # the text layer is not shaped: its glyphs only need their Unicode
    options.name_IDs = ["*"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes={ord(c) for c in chars})
    quiet = logging.getLogger("fontTools.subset")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "FFTM NOT subset" and the like: tables a text layer does not need
    try:
        subsetter.subset(font)
    finally:
        quiet.setLevel(level)
    if "CFF " in font:
        _cff_to_truetype(font)
    path = folder / f"font-{len(list(folder.iterdir()))}.ttf"
    font.save(str(path))
    return path


def _cff_to_truetype(font) -> None:
    """Replace `font`'s CFF outlines with quadratic TrueType ones (``glyf``), in place."""
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import newTable

    order = font.getGlyphOrder()
    glyph_set = font.getGlyphSet()
    glyf = newTable("glyf")
    glyf.glyphOrder = order
    glyf.glyphs = {}
    for name in order:
        pen = TTGlyphPen(glyph_set)
        # 1 font unit of error at the usual 1000-2048 units per em: invisible at any print size
        glyph_set[name].draw(Cu2QuPen(pen, max_err=1.0, reverse_direction=True))
        glyf[name] = pen.glyph()
    font["glyf"] = glyf
    font["loca"] = newTable("loca")
    del font["CFF "]
    for table in ("VORG", "vmtx", "vhea"):
        if table in font:
            del font[table]
    maxp = font["maxp"]
    maxp.tableVersion = 0x00010000
    for field in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs", "maxInstructionDefs",
                  "maxStackElements", "maxSizeOfInstructions", "maxComponentElements", "maxPoints", "maxContours",
                  "maxCompositePoints", "maxCompositeContours", "maxComponentDepth"):
        setattr(maxp, field, 1 if field == "maxZones" else 0)
    font["head"].glyphDataFormat = 0
    font["post"].formatType = 3.0  # no glyph names: CID fonts have none worth keeping
    font.sfntVersion = "\x00\x01\x00\x00"


def story_pdf(pages: Sequence[Image.Image], texts: Sequence[Sequence[TextRun]] | None, dpi: int, title: str = "",
              when: time.struct_time | None = None) -> bytes:
    """The bytes of a PDF of `pages` (pictures with their words drawn) with `texts` (one list of runs per page,
    in the pages' pixels) as their invisible text layer."""
    if not pages:
        raise ValueError("story_pdf: no pages")
    texts = list(texts) if texts is not None else [[] for _ in pages]
    scale = 72.0 / dpi
    pdf = FPDF(unit="pt")
    pdf.set_auto_page_break(False)
    pdf.set_margin(0)
    pdf.set_title(title or "Story")
    pdf.set_creator(CREATOR)
    pdf.set_producer(CREATOR)
    stamp = calendar.timegm(when) if when is not None else int(time.time())
    pdf.set_creation_date(datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc))
    used: dict[FontFace, set[str]] = {}
    for runs in texts:
        for run in runs:
            used.setdefault(run.face, set()).update(run.text)
    with tempfile.TemporaryDirectory(prefix="story-pdf-") as folder:
        families = {}
        for number, (face, chars) in enumerate(sorted(used.items(), key=lambda item: item[0].name)):
            families[face] = f"F{number}"
            pdf.add_font(families[face], "", str(embeddable_font(face, "".join(sorted(chars)), Path(folder))))
        for image, runs in zip(pages, texts, strict=True):
            width_pt, height_pt = image.width * scale, image.height * scale
            pdf.add_page(format=(width_pt, height_pt))
            jpeg = io.BytesIO()
            image.convert("RGB").save(jpeg, format="JPEG", quality=JPEG_QUALITY, subsampling=0, dpi=(dpi, dpi))
            jpeg.seek(0)
            pdf.image(jpeg, x=0, y=0, w=width_pt, h=height_pt)
            pdf.text_mode = TextMode.INVISIBLE
            for run in runs:
                _write_run(pdf, run, families[run.face], scale)
            pdf.text_mode = TextMode.FILL
        # fpdf2 logs each character a font lacks; the story check has warned about them already
        logger = logging.getLogger("fpdf")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return bytes(pdf.output())
        finally:
            logger.setLevel(level)


def _write_run(pdf: FPDF, run: TextRun, family: str, scale: float) -> None:
    """One run as invisible text, stretched to the width the picture gives it."""
    text = visual_order(run.text) if not run.vertical else run.text
    if not text.strip():
        return
    pdf.set_font(family, size=run.size_px * scale)
    natural = pdf.get_string_width(text)
    pdf.set_stretching(100.0 * run.width * scale / natural if natural > 0 else 100.0)
    x, y = run.x * scale, run.baseline * scale
    if run.vertical:  # down the column: the line turned a quarter clockwise about the column's top
        with pdf.rotation(-90, x, y):
            pdf.text(x, y + run.size_px * scale * 0.35, text)
    else:
        pdf.text(x, y, text)
    pdf.set_stretching(100.0)

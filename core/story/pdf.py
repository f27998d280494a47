"""A small PDF writer for story pages: each page's picture as one image, its words as real text on top.

Pillow writes a PDF of rasters only; here the title, captions and speech (the `layout.TextRun` lines of
`layout.compose_pages(..., texts=...)`) are PDF text in the shipped DejaVu Sans, embedded as a TrueType font with
its own glyph widths, so the words print sharp at any size, can be selected and searched, and sit exactly where
the page PNGs draw them. Characters outside Windows-1252 (the font's PDF encoding here) are written as "?".
Pages print at the story's size: ``points = pixels * 72 / dpi``.
"""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFont

from core.story.layout import FONT_DIR, TextRun

ENCODING = "cp1252"  # the PDF's WinAnsiEncoding
JPEG_QUALITY = 92
_FONTS = {False: ("F1", "DejaVuSans", "DejaVuSans.ttf"), True: ("F2", "DejaVuSans-Bold", "DejaVuSans-Bold.ttf")}


def _pdf_string(text: str) -> bytes:
    data = text.encode(ENCODING, "replace")
    return b"(" + data.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _info_string(text: str) -> bytes:
    """A text string of the document information (UTF-16 with its byte-order mark)."""
    data = "\ufeff".encode("utf-16-be") + text.encode("utf-16-be")
    return b"<" + data.hex().encode() + b">"


def _widths(path: Path) -> list[int]:
    """Glyph widths (1/1000 em) of codes 32..255 in Windows-1252, as the font draws them."""
    font = ImageFont.truetype(str(path), 1000)
    widths = []
    for code in range(32, 256):
        try:
            char = bytes([code]).decode(ENCODING)
        except UnicodeDecodeError:
            char = "?"
        widths.append(round(font.getlength(char)))
    return widths


class _Writer:
    def __init__(self):
        self.objects: list[bytes | None] = []

    def reserve(self) -> int:
        self.objects.append(None)
        return len(self.objects)

    def put(self, number: int, body: bytes) -> int:
        self.objects[number - 1] = body
        return number

    def add(self, body: bytes) -> int:
        return self.put(self.reserve(), body)

    def stream(self, meta: bytes, data: bytes, number: int | None = None) -> int:
        body = b"<< " + meta + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
        return self.put(number, body) if number is not None else self.add(body)

    def bytes(self, root: int, info: int) -> bytes:
        out = io.BytesIO()
        out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(self.objects, start=1):
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
        xref = out.tell()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(self.objects) + 1))
        for offset in offsets:
            out.write(b"%010d 00000 n \n" % offset)
        out.write(b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
                  % (len(self.objects) + 1, root, info, xref))
        return out.getvalue()


def _font_objects(writer: _Writer, bold: bool) -> int:
    name, base, file = _FONTS[bold]
    path = FONT_DIR / file
    data = path.read_bytes()
    font_file = writer.stream(b"/Filter /FlateDecode /Length1 %d" % len(data), zlib.compress(data, 9))
    pil = ImageFont.truetype(str(path), 1000)
    ascent, descent = pil.getmetrics()
    descriptor = writer.add(
        b"<< /Type /FontDescriptor /FontName /%s /Flags 32 /FontBBox [-1021 -463 1793 1232] /ItalicAngle 0 "
        b"/Ascent %d /Descent %d /CapHeight 729 /StemV %d /FontFile2 %d 0 R >>"
        % (base.encode(), ascent, -descent, 120 if bold else 80, font_file))
    widths = b" ".join(b"%d" % w for w in _widths(path))
    return writer.add(b"<< /Type /Font /Subtype /TrueType /BaseFont /%s /FirstChar 32 /LastChar 255 "
                      b"/Widths [%s] /Encoding /WinAnsiEncoding /FontDescriptor %d 0 R >>"
                      % (base.encode(), widths, descriptor))


def _page_text(runs: Sequence[TextRun], height_pt: float, scale: float) -> bytes:
    out = [b"BT 0 g"]
    for run in runs:
        name = _FONTS[run.bold][0].encode()
        out.append(b"/%s %.3f Tf 1 0 0 1 %.3f %.3f Tm %s Tj" % (
            name, run.size_px * scale, run.x * scale, height_pt - run.baseline * scale, _pdf_string(run.text)))
    out.append(b"ET")
    return b"\n".join(out)


def pdf_date(when: time.struct_time) -> bytes:
    return time.strftime("D:%Y%m%d%H%M%SZ", when).encode()


def story_pdf(pages: Sequence[Image.Image], texts: Sequence[Sequence[TextRun]] | None, dpi: int, title: str = "",
              when: time.struct_time | None = None) -> bytes:
    """The bytes of a PDF of `pages` (pictures without their words) with `texts` (one list of runs per page) as
    real text on them."""
    if not pages:
        raise ValueError("story_pdf: no pages")
    texts = list(texts) if texts is not None else [[] for _ in pages]
    writer = _Writer()
    catalog, tree = writer.reserve(), writer.reserve()
    used = {run.bold for runs in texts for run in runs}
    fonts = {bold: _font_objects(writer, bold) for bold in sorted(used)} if (FONT_DIR / _FONTS[False][2]).is_file() \
        else {}
    if used and not fonts:  # the fonts are not installed: the words go unembedded, in the standard Helvetica
        fonts = {bold: writer.add(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
                                  % (b"Helvetica-Bold" if bold else b"Helvetica")) for bold in used}
    font_dict = b" ".join(b"/%s %d 0 R" % (_FONTS[bold][0].encode(), number) for bold, number in fonts.items())
    scale = 72.0 / dpi
    kids = []
    for image, runs in zip(pages, texts, strict=True):
        rgb = image.convert("RGB")
        jpeg = io.BytesIO()
        rgb.save(jpeg, format="JPEG", quality=JPEG_QUALITY, subsampling=0, dpi=(dpi, dpi))
        picture = writer.stream(b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                                b"/BitsPerComponent 8 /Filter /DCTDecode" % rgb.size, jpeg.getvalue())
        width_pt, height_pt = rgb.width * scale, rgb.height * scale
        content = b"q %.3f 0 0 %.3f 0 0 cm /Im0 Do Q\n" % (width_pt, height_pt) + _page_text(runs, height_pt, scale)
        contents = writer.stream(b"/Filter /FlateDecode", zlib.compress(content, 9))
        kids.append(writer.add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.3f %.3f] /Contents %d 0 R "
            b"/Resources << /XObject << /Im0 %d 0 R >> /Font << %s >> >> >>"
            % (tree, width_pt, height_pt, contents, picture, font_dict)))
    writer.put(tree, b"<< /Type /Pages /Kids [%s] /Count %d >>"
               % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    writer.put(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % tree)
    date = pdf_date(when or time.gmtime())
    info = writer.add(b"<< /Title %s /Creator %s /Producer %s /CreationDate (%s) /ModDate (%s) >>"
                      % (_info_string(title or "Story"), _info_string("InstantCharacter Studio"),
                         _info_string("InstantCharacter Studio"), date, date))
    return writer.bytes(catalog, info)

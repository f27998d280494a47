"""Fonts for any script: which font draws each character of a story's text.

The chain, first match wins, character by character: the shipped DejaVu Sans (Latin, Greek, Cyrillic, Arabic,
Hebrew...), then fonts the system has for the characters DejaVu lacks (found through fontconfig's ``fc-list``
where it exists, else by reading the fonts in the usual font folders of Linux, Windows and macOS), then the
story's own ``font:`` file. Coverage is read from each font's cmap (fontTools), never guessed from its name, so a
character no font of the chain has is known before anything is drawn: `missing_characters` names it, and the
story check turns that into a warning with the fix.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

FONT_DIR = Path(__file__).resolve().parents[2] / "assets" / "fonts"
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
MISSING_FONT_FIX = ("install a font for that script (on Debian: fonts-noto-core, fonts-noto-cjk) or name one in "
                    "the header with 'font: path/to/font.ttf'")


@dataclass(frozen=True)
class FontFace:
    """One face of a font file: `index` picks it in a collection (``.ttc``)."""

    path: Path
    index: int = 0

    @property
    def name(self) -> str:
        return self.path.name if not self.index else f"{self.path.name}#{self.index}"


BUNDLED = FontFace(FONT_DIR / "DejaVuSans.ttf")
BUNDLED_BOLD = FontFace(FONT_DIR / "DejaVuSans-Bold.ttf")


@functools.lru_cache(maxsize=64)
def coverage(face: FontFace) -> frozenset[int]:
    """The code points `face` has a glyph for (its cmap); empty when the file is no font fontTools reads."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(str(face.path), fontNumber=face.index, lazy=True) as font:
            return frozenset((font.getBestCmap() or {}).keys())
    except (OSError, TTLibError, AssertionError, KeyError, ValueError, IndexError, EOFError):
        return frozenset()


def needs_glyph(char: str) -> bool:
    """False for characters drawn as nothing (spaces, controls, joiners, variation selectors)."""
    category = unicodedata.category(char)
    return not (char.isspace() or category in ("Cc", "Cf", "Zs", "Zl", "Zp") or 0xFE00 <= ord(char) <= 0xFE0F)


def language_of(text: str) -> str | None:
    """A fontconfig language for CJK text, so Han characters take the right regional forms: ``ja`` with kana,
    ``ko`` with Hangul, ``zh-cn`` for Han alone; None otherwise (any font with the glyphs will do)."""
    kana = hangul = han = False
    for char in text:
        code = ord(char)
        kana |= 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F
        hangul |= 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F
        han |= 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF
    if kana:
        return "ja"
    if hangul:
        return "ko"
    return "zh-cn" if han else None


# --- finding system fonts ------------------------------------------------------------------------------------
# The region a CJK family is made for, as its name says (Noto Sans CJK JP, Source Han Sans KR...).
_REGION_WORDS = {"ja": ("jp", "japan"), "ko": ("kr", "korea"), "zh-cn": ("sc", "cn", "gb")}


def _style_rank(family: str, style: str, bold: bool, lang: str | None = None) -> tuple:
    """Sort key for fontconfig candidates: the wanted weight, the text's region, sans before serif,
    proportional before mono."""
    style, family = style.lower(), family.lower()
    weight_ok = ("bold" in style) == bold and "italic" not in style and "oblique" not in style
    region = not any(word in family.split() for word in _REGION_WORDS.get(lang or "", ()))
    return (not weight_ok, "sans" not in family, "mono" in family, region, "serif" in family,
            "condensed" in style, family)


def _fc_list(codes: list[int], lang: str | None) -> list[tuple[FontFace, str, str]]:
    """Faces fontconfig says have every one of `codes` (and `lang`'s orthography when given)."""
    pattern = ":charset=" + " ".join(f"{c:x}" for c in codes) + (f":lang={lang}" if lang else "")
    try:
        result = subprocess.run(["fc-list", "-f", "%{file}|%{index}|%{family[0]}|%{style[0]}\n", pattern],
                                capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    faces = []
    for line in result.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0].lower().endswith(FONT_SUFFIXES) and parts[1].isdigit():
            faces.append((FontFace(Path(parts[0]), int(parts[1])), parts[2], parts[3]))
    return faces


def font_folders() -> list[Path]:
    """The usual font folders of this system (for systems without fontconfig)."""
    home = Path.home()
    if sys.platform == "win32":
        windir = Path(os.environ.get("WINDIR", r"C:\Windows"))
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local"))
        return [windir / "Fonts", local / "Microsoft" / "Windows" / "Fonts"]
    if sys.platform == "darwin":
        return [Path("/System/Library/Fonts"), Path("/System/Library/Fonts/Supplemental"), Path("/Library/Fonts"),
                home / "Library" / "Fonts"]
    return [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), home / ".local" / "share" / "fonts",
            home / ".fonts"]


@functools.lru_cache(maxsize=1)
def _folder_fonts() -> tuple[Path, ...]:
    found = []
    for folder in font_folders():
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file()]
    # sans faces first, as fontconfig's ranking does
    return tuple(sorted(found, key=lambda p: ("sans" not in p.name.lower(), "mono" in p.name.lower(), p.name)))


def _collection_size(path: Path) -> int:
    if path.suffix.lower() not in (".ttc", ".otc"):
        return 1
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
        return int.from_bytes(head[8:12], "big") if head[:4] == b"ttcf" else 1
    except OSError:
        return 1


# Faces found so far, by (language, bold): a later text in the same script is served from them without asking
# fontconfig again (a long story has as many distinct lines as panels).
_FOUND: dict[tuple[str | None, bool], list[FontFace]] = {}
_UNDRAWABLE: set[int] = set()  # code points no system font has: not looked for again


@functools.lru_cache(maxsize=256)
def system_faces(codes: frozenset[int], lang: str | None, bold: bool = False) -> tuple[FontFace, ...]:
    """System faces that together have as many of `codes` as the system can draw, best first."""
    left = set(codes)
    chosen: list[FontFace] = []
    found = _FOUND.setdefault((lang, bold), [])
    for face in found:
        got = left & coverage(face)
        if got:
            chosen.append(face)
            left -= got
    left -= _UNDRAWABLE
    if not left:
        return tuple(chosen)
    before = len(chosen)
    chosen += _search_system(left, lang, bold)
    found += [face for face in chosen[before:] if face not in found]
    _UNDRAWABLE.update(left)
    return tuple(chosen)


def _search_system(left: set[int], lang: str | None, bold: bool) -> list[FontFace]:
    """Faces for the code points in `left` (which it empties as it finds them): fontconfig's best, or the font
    folders' fonts in order."""
    chosen: list[FontFace] = []
    if shutil.which("fc-list"):
        for attempt_lang in ((lang, None) if lang else (None,)):
            while left:
                def rank(found):
                    return _style_rank(found[1], found[2], bold, lang)

                ranked = sorted(_fc_list(sorted(left)[:64], attempt_lang), key=rank)
                if not ranked:  # no one face has them all: ask for the first one alone, and go on
                    ranked = sorted(_fc_list([min(left)], attempt_lang), key=rank)
                    if not ranked:
                        break
                face = ranked[0][0]
                got = left & coverage(face)
                if not got:
                    break
                chosen.append(face)
                left -= got
        return chosen
    for path in _folder_fonts():
        if not left:
            break
        for index in range(_collection_size(path)):
            face = FontFace(path, index)
            got = left & coverage(face)
            if got:
                chosen.append(face)
                left -= got
    return chosen


# --- the chain -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FontChain:
    """The fonts that draw a story's text: DejaVu Sans, system fonts for what it lacks, then `story_font`."""

    story_font: FontFace | None = None

    def faces(self, text: str, bold: bool = False) -> tuple[FontFace, ...]:
        """The faces that may draw `text`, in order of preference."""
        first = BUNDLED_BOLD if bold else BUNDLED
        base = coverage(first) or coverage(BUNDLED)
        lacking = frozenset(ord(c) for c in text if needs_glyph(c) and ord(c) not in base)
        extra = system_faces(lacking, language_of(text), bold) if lacking else ()
        return (first, *extra, *((self.story_font,) if self.story_font is not None else ()))

    def segments(self, text: str, bold: bool = False) -> list[tuple[str, FontFace]]:
        """`text` cut into runs of one face each (the first of `faces` that has the character; a space or a
        combining mark stays with the character before it). A character no face has goes to the first face,
        whose .notdef box shows it: `missing_characters` reports it beforehand."""
        faces = self.faces(text, bold)
        segments: list[tuple[str, FontFace]] = []
        for char in text:
            if segments and (not needs_glyph(char) or unicodedata.combining(char)):
                face = segments[-1][1]
            else:
                face = next((f for f in faces if ord(char) in coverage(f)), faces[0])
            if segments and segments[-1][1] == face:
                segments[-1] = (segments[-1][0] + char, face)
            else:
                segments.append((char, face))
        return segments

    def missing_characters(self, text: str, bold: bool = False) -> str:
        """The distinct characters of `text` that no face of the chain has, in order of first appearance."""
        faces = self.faces(text, bold)
        missing = []
        for char in text:
            if needs_glyph(char) and char not in missing and not any(ord(char) in coverage(f) for f in faces):
                missing.append(char)
        return "".join(missing)


def describe_characters(chars: str) -> str:
    """``'ᚠ' (U+16A0 RUNIC LETTER FEHU FEOH FE F), ...`` for a message."""
    return ", ".join(f"'{c}' (U+{ord(c):04X} {unicodedata.name(c, 'unnamed')})" for c in chars[:8]) + (
        f" and {len(chars) - 8} more" if len(chars) > 8 else "")

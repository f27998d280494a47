"""The checks both story parsers make (the text form, `core.story.parse_text`, and the JSON form,
`core.story.parse_json`): the problem list, values against their limits, and the files a story names.

Every check adds a problem (line, message) to a `Problems` list instead of raising, so one parse reports every
problem of a story (the first MAX_PROBLEMS).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path
from typing import Any

from core.conditioning.control import DEFAULT_SCALE, MAX_CONTROLS, ControlError, check_kind, check_scale
from core.io.cache import FileTooLargeError, cached_sha256
from core.io.path_policy import PathNotAllowedError, PathPolicy
from core.limits import (
    MAX_CAPTION_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_NAME_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SCALE,
    LimitError,
    check_int,
    check_seed,
    check_text,
)
from core.story.fonts import FontFace, coverage
from core.story.geometry import PANEL_HEIGHTS, WEBTOON
from core.story.model import NO_CHARACTER_TAG, PanelControl, StoryCharacter, StoryError, engine_prompt
from core.story.regions import canonical_region, format_number

MAX_PROBLEMS = 50  # a story with more problems lists these and stops: the output stays short
MAX_PATH_CHARS = 4096  # a character image path as written (the usual PATH_MAX)
_NAME = r"[^\W\d_][\w\-]*"  # a letter of any script, then letters, digits, "_" or "-"
_NAME_RE = re.compile(rf"^{_NAME}$")


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to `limit` characters for a message (a message never echoes a whole huge line)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TooManyProblems(Exception):
    """Raised by `Problems.add` at MAX_PROBLEMS: the parse stops and reports what it found."""


class Problems:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []

    def add(self, line: int | None, message: str) -> None:
        self.items.append((line, message))
        if len(self.items) >= MAX_PROBLEMS:
            raise TooManyProblems

    @classmethod
    def run(cls, build, source: str | os.PathLike | None, *, sort: bool):
        """``build(problems)`` with a new list of problems: its result, or a `StoryError` listing the first
        MAX_PROBLEMS found (in line order when ``sort``) when ``build`` stopped at that many."""
        problems = cls()
        try:
            return build(problems)
        except TooManyProblems:
            problems.raise_if_any(source, sort=sort)
            raise  # not reached

    def raise_if_any(self, source: str | os.PathLike | None, sort: bool) -> None:
        if not self.items:
            return
        items = list(self.items)
        if sort:
            items.sort(key=lambda item: (item[0] is None, item[0] or 0))
        if len(items) >= MAX_PROBLEMS:
            items.append((None, f"stopped after {MAX_PROBLEMS} problems: fix these first"))
        raise StoryError(items, source=str(source) if source else None)


def unknown_character(name: str, known: dict[str, Any]) -> str:
    if len(name) > MAX_NAME_CHARS:
        return f"unknown character [{clip(name, 40)}]: names are at most {MAX_NAME_CHARS} characters"
    message = f"unknown character [{name}]"
    close = difflib.get_close_matches(name, list(known), n=1)
    if not close:
        close = [k for k in known if k.lower() == name.lower()]
    if close:
        message += f" (did you mean [{close[0]}]?)"
    elif known:
        message += f"; the story defines {', '.join(f'[{k}]' for k in known)}"
    else:
        message += "; define it in the header with 'character Name: image.png'"
    return message


# --- values and their limits (numbers: core.limits.check_int and check_number) --------------------------------
def required_text(value: Any, name: str, limit: int) -> str:
    """`check_text` for a required string (a missing one is empty)."""
    return check_text("" if value is None else value, name, limit, optional=False)


def parse_int(value: str, what: str) -> int:
    text = value.strip()
    if len(text) > 20:  # longer than any allowed value: no need to convert it
        raise LimitError(f"bad {what} '{clip(text, 30)}': a number that long is over the limit")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad {what} '{clip(value)}': expected a whole number") from None


def parse_float(value: str, what: str) -> float:
    try:
        return float(value.strip()) if len(value) <= 40 else float("inf")
    except ValueError:
        raise ValueError(f"bad {what} '{clip(value)}': expected a number") from None


def parse_seed(value: str) -> int:
    return check_seed(parse_int(value, "seed"))


def panel_height(value: Any, layout: str) -> int:
    """A webtoon panel's ``height:`` in strip pixels."""
    if layout != WEBTOON:
        raise ValueError("height: sets a panel's height in a webtoon strip: write 'layout: webtoon' in the header "
                         "(other layouts take the height from the page)")
    height = parse_int(value, "height") if isinstance(value, str) else value
    return check_int(height, "height", *PANEL_HEIGHTS)


def _story_file(value: str, base_dir: Path, what: str, line: int | None, where: str, problems: Problems,
                paths: PathPolicy, *, missing: str, subject: str, limit: str) -> Path | None:
    """A file a story names, relative to the story: allowed by `paths`, a regular file of at most MAX_FILE_BYTES;
    else None with one problem (``missing`` and ``subject`` word it)."""
    try:
        path = paths.resolve(value, base=base_dir, what=what)
    except PathNotAllowedError as exc:
        problems.add(line, f"{where}{exc}")
        return None
    try:
        info = path.stat()
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        problems.add(line, f"{where}{missing} (looked in {path.parent})")
        return None
    if info.st_size > MAX_FILE_BYTES:
        problems.add(line, f"{where}{subject} is {info.st_size:,} bytes: the limit is {limit}")
        return None
    return path


def font_file(value: str, base_dir: Path, line: int | None, where: str, problems: Problems,
              paths: PathPolicy) -> Path | None:
    """The story's ``font:`` file, relative to the story and allowed by `paths`: a font file of at most
    MAX_FILE_BYTES that has glyphs (read through fontTools)."""
    if len(value) > MAX_PATH_CHARS:
        problems.add(line, f"{where}the font path is {len(value):,} characters long: the limit is {MAX_PATH_CHARS:,}")
        return None
    path = _story_file(value, base_dir, "font", line, where, problems, paths, missing=f"missing font file: {value}",
                       subject="the font file", limit=f"{MAX_FILE_BYTES:,}")
    if path is None:
        return None
    if not coverage(FontFace(path)):
        problems.add(line, f"{where}{value} is not a font file with a character map (TrueType or OpenType: "
                           ".ttf, .otf, .ttc)")
        return None
    return path


def check_character(name: str, image: str, scale: float, description: str, base_dir: Path, line: int | None,
                    where: str, problems: Problems, paths: PathPolicy) -> StoryCharacter | None:
    """The character with its image checked: allowed by `paths` first (so a refusal reads the same whether the
    file exists), then a regular file of at most MAX_FILE_BYTES, an image header of at most MAX_IMAGE_PIXELS,
    and only then hashed."""
    if len(name) > MAX_NAME_CHARS:
        problems.add(line, f"{where}character name '{clip(name, 40)}' is {len(name):,} characters long: "
                           f"the limit is {MAX_NAME_CHARS}")
        return None
    if not _NAME_RE.match(name) or name == NO_CHARACTER_TAG:
        problems.add(line, f"{where}bad character name '{name}': use letters, digits, '_' or '-', "
                           f"starting with a letter (and not NC)")
        return None
    if not image:
        problems.add(line, f"{where}character [{name}] has no image: write 'character {name}: path/to/image.png'")
        return None
    if len(image) > MAX_PATH_CHARS:
        problems.add(line, f"{where}the image path of [{name}] is {len(image):,} characters long: "
                           f"the limit is {MAX_PATH_CHARS:,}")
        return None
    if not 0.0 <= scale <= MAX_SCALE:
        problems.add(line, f"{where}bad scale {format_number(scale)} for [{name}]: expected 0..{MAX_SCALE:g}")
        return None
    if len(description) > MAX_DESCRIPTION_CHARS:
        problems.add(line, f"{where}the description of [{name}] is {len(description):,} characters long: "
                           f"the limit is {MAX_DESCRIPTION_CHARS}")
        return None
    path = _story_file(image, base_dir, f"image of [{name}]", line, where, problems, paths,
                       missing=f"missing image for [{name}]: {image}", subject=f"the image of [{name}]",
                       limit=f"{MAX_FILE_BYTES:,} ({MAX_FILE_BYTES // 2**20} MB)")
    if path is None:
        return None
    message = _image_header_problem(path)
    if message:
        problems.add(line, f"{where}the image of [{name}] {message}")
        return None
    try:
        digest = cached_sha256(path, max_bytes=MAX_FILE_BYTES)
    except (OSError, FileTooLargeError) as exc:
        problems.add(line, f"{where}cannot read the image of [{name}]: {getattr(exc, 'strerror', None) or exc}")
        return None
    return StoryCharacter(name=name, image=path, scale=scale, description=description, image_sha256=digest)


def _image_header_problem(path: Path) -> str | None:
    """Why the image at `path` cannot be used, from its header alone (nothing is decoded); None when it can."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only (Pillow may warn about a huge one: it is refused below)
            width, height = img.size
    except Image.DecompressionBombError:
        return f"has more than {MAX_IMAGE_PIXELS:,} pixels: the limit is {MAX_IMAGE_PIXELS:,}"
    except Exception:  # noqa: BLE001 - any header Pillow cannot read means the file is no usable image
        return "is not an image Pillow can read (PNG, JPEG, WebP...)"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"is {width}x{height} pixels ({width * height / 1e6:.1f} million): the limit is "
                f"{MAX_IMAGE_PIXELS / 1e6:g} million")
    return None


def check_panel_texts(prompt: str, caption: str, style: str, line: int | None, where: str,
                      problems: Problems) -> bool:
    """Checks a panel's prompt (with the style, as the engine gets it) and caption against their limits."""
    ok = True
    for check in (lambda: required_text(prompt, "the prompt", MAX_PROMPT_CHARS),
                  lambda: required_text(engine_prompt(prompt, style), "the prompt with the style", MAX_PROMPT_CHARS),
                  lambda: required_text(caption, "the caption", MAX_CAPTION_CHARS)):
        try:
            check()
        except LimitError as exc:
            problems.add(line, f"{where}{exc}")
            ok = False
            break
    return ok


def panel_control(value: str, base_dir: Path, paths: PathPolicy, line: int | None, where: str,
                  problems: Problems, count: int, scale=None) -> PanelControl | None:
    """A ``control: KIND PATH [SCALE]`` value (the path relative to the story, through `paths`), checked."""
    if count >= MAX_CONTROLS:
        problems.add(line, f"{where}a panel has at most {MAX_CONTROLS} control images")
        return None
    parts = value.split()
    if scale is None and len(parts) >= 3 and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", parts[-1]):
        scale, parts = parts[-1], parts[:-1]
    if len(parts) < 2:
        problems.add(line, f"{where}bad control '{clip(value)}': expected 'control: KIND path/to/image.png [SCALE]'")
        return None
    kind, image = parts[0], " ".join(parts[1:])
    try:
        kind = check_kind(kind)
        scale = check_scale(DEFAULT_SCALE if scale is None else scale)
    except ControlError as exc:
        problems.add(line, f"{where}{exc}")
        return None
    if len(image) > MAX_PATH_CHARS:
        problems.add(line, f"{where}the control image path is {len(image):,} characters long: the limit is "
                           f"{MAX_PATH_CHARS:,}")
        return None
    try:
        path = paths.resolve(image, base=base_dir, what=f"{kind} control image")
    except PathNotAllowedError as exc:
        problems.add(line, f"{where}{exc}")
        return None
    if not path.is_file():
        problems.add(line, f"{where}missing {kind} control image: {image} (looked in {path.parent})")
        return None
    message = _image_header_problem(path)
    try:
        digest = None if message else cached_sha256(path, max_bytes=MAX_FILE_BYTES)
    except (OSError, FileTooLargeError) as exc:
        message = f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if message:
        problems.add(line, f"{where}the {kind} control image {message}")
        return None
    return PanelControl(kind, path, scale, digest)


def set_region(regions: dict[str, str], name: str, region: str, line: int | None, problems: Problems) -> bool:
    try:
        canonical = canonical_region(region[:200])
    except ValueError as exc:
        problems.add(line, f"{exc} for [{name}]")
        return False
    if name in regions and regions[name] != canonical:
        problems.add(line, f"[{name}] has two regions in one panel: {regions[name]} and {canonical}")
        return False
    regions[name] = canonical
    return True

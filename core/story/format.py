"""The story format: a plain-text file a person writes by hand, parsed into `Story` dataclasses.

The syntax is documented in `core/story/FORMAT.md`. In short::

    title: Red and Blue Go Fishing
    style: flat colour picture-book illustration
    size: 1024x768
    seed: 7
    character Red: characters/red.png
        scale: 0.85
    character Blue: characters/blue.png
    ---
    [Red@left] and [Blue@right] sit on a pier at dawn  # The first morning of summer.
      > Red: Do you think they'll bite today?
    An empty pier under the moon [NC]  # Later.
      seed: 1234

A parsed story saves as JSON (`Story.save_json`) and `load_story` reads either form. Every engine input of a
panel goes into its settings hash (`panel_settings_hash`), which the render manifest uses to resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io.cache import FileTooLargeError, cached_sha256
from core.conditioning.control import DEFAULT_SCALE, MAX_CONTROLS, ControlError, check_kind, check_scale
from core.conditioning.layouts import GRID_PATTERN, NAMED_LAYOUTS, parse_layout
from core.conditioning.regional_text import RegionalText
from core.limits import (
    MAX_BUBBLES_PER_PANEL,
    MAX_CAPTION_CHARS,
    MAX_CHARACTERS,
    MAX_DESCRIPTION_CHARS,
    MAX_DIALOGUE_CHARS,
    MAX_DPI,
    MAX_FILE_BYTES,
    MAX_GUIDANCE,
    MAX_IMAGE_PIXELS,
    MAX_NAME_CHARS,
    MAX_OUTPUT_PIXELS,
    MAX_PANELS,
    MAX_PROMPT_CHARS,
    MAX_SCALE,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_STORY_BYTES,
    MAX_TRUE_CFG,
    MIN_DPI,
    MIN_SIDE,
    LimitError,
    check_int,
    check_text,
)
from core.io.path_policy import UNRESTRICTED, PathNotAllowedError, PathPolicy
from core.story.fonts import FontFace, coverage
from core.story.layout import (
    PANEL_HEIGHTS,
    WEBTOON,
    WEBTOON_SLICE,
    WEBTOON_WIDTH,
    check_page_limits,
    count_pages,
    parse_bubbles,
    parse_layout_spec,
    parse_length_mm,
    parse_page_spec,
    parse_reading,
    parse_webtoon_spec,
    webtoon_cells,
)
from core.errors import UserError

FORMAT_VERSION = 1

# Where a character stands in a panel: the engine's layouts (core.conditioning.layouts), as normalized boxes. Bubble placement
# uses the boxes; the engine receives the region string itself.
REGION_PRESETS = NAMED_LAYOUTS

NO_CHARACTER_TAG = "NC"
_NAME = r"[^\W\d_][\w\-]*"  # a letter of any script, then letters, digits, "_" or "-"
_NAME_RE = re.compile(rf"^{_NAME}$")
# [Name] or [Name@region]; a region may hold commas and dots ("box:0,0,0.5,1") but no "]".
_TAG_RE = re.compile(r"\[([^\[\]@]*?)(?:@([^\[\]]*))?\]")
_HEADER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_ ]*?)\s*:\s*(.*)$")
_CHARACTER_RE = re.compile(r"^character\s+(\S+?)\s*:\s*(.*)$")
_PANEL_OPTION_RE = re.compile(r"^(seed|caption|height|control)\s*:\s*(.*)$")
_GRID_RE = GRID_PATTERN
_SIZE_RE = re.compile(r"^(\d+)\s*[xX×]\s*(\d+)$")

HEADER_KEYS = (
    "title", "style", "negative", "size", "seed", "layout", "page", "dpi", "margin", "gutter",
    "steps", "guidance", "true_cfg", "reading", "bubbles", "webtoon", "font",
)
MAX_PROBLEMS = 50  # a story with more problems lists these and stops: the output stays short
MAX_PATH_CHARS = 4096  # a character image path as written (the usual PATH_MAX)


class StoryError(UserError, ValueError):
    """A story that cannot be used. `problems` lists every (line, message) found; line is None for JSON stories.

    `str(error)` reads like ``line 12: unknown character [Bob]``, one problem per line.
    """

    def __init__(self, problems: list[tuple[int | None, str]] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [(None, problems)]
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(_format_problem(line, message) for line, message in self.problems))

    @property
    def line(self) -> int | None:
        """The line of the first problem."""
        return self.problems[0][0]


def _format_problem(line: int | None, message: str) -> str:
    return f"line {line}: {message}" if line is not None else message


@dataclass(frozen=True)
class StoryCharacter:
    """A character of the story: `image` is an absolute path; `image_sha256` identifies its content."""

    name: str
    image: Path
    scale: float = 0.9
    description: str = ""
    image_sha256: str = ""


@dataclass(frozen=True)
class Dialogue:
    """One speech bubble: `speaker` is a character name of the story (it may be off-panel)."""

    speaker: str
    text: str


@dataclass(frozen=True)
class PanelControl:
    """A panel's control image (``control: pose poses/p3.png 0.6``): `image` is an absolute path, `image_sha256`
    its content; `kind` and `scale` as `core.conditioning.control.ControlImage` takes them."""

    kind: str
    image: Path
    scale: float
    image_sha256: str


@dataclass(frozen=True)
class Panel:
    """One panel. `prompt` is as written (tags included, caption removed); `characters` in order of appearance.

    `regions` maps a character name to a region spec: a preset name (``left``), ``box:x0,y0,x1,y1`` with
    normalized coordinates, or ``grid:RxC:N`` (cell N, 1-based, row-major). `seed` is always set: given
    (`seed_pinned`) or derived.
    `line` is the source line in the story text (0 when unknown); it is not part of the settings hash.
    """

    index: int
    prompt: str
    characters: tuple[str, ...] = ()
    regions: dict[str, str] = field(default_factory=dict)
    caption: str = ""
    dialogue: tuple[Dialogue, ...] = ()
    seed: int = 0
    seed_pinned: bool = False
    line: int = 0
    height: int | None = None
    controls: tuple[PanelControl, ...] = ()

    @property
    def number(self) -> int:
        """1-based panel number, as people count."""
        return self.index + 1


@dataclass(frozen=True)
class Story:
    """A parsed story. Lengths are in millimetres, sizes in pixels; `layout` and `page` are canonical specs."""

    title: str = ""
    style: str = ""
    negative: str = ""
    width: int = 1024
    height: int = 1024
    seed: int = 0
    layout: str = "comic"
    page: str = "A4 portrait"
    dpi: int = 150
    margin_mm: float = 10.0
    gutter_mm: float = 4.0
    steps: int = 28
    guidance: float = 3.5
    true_cfg: float = 1.0
    reading: str = "left-to-right"
    bubbles: str = "horizontal"
    webtoon_width: int = WEBTOON_WIDTH
    webtoon_slice: int = WEBTOON_SLICE
    font: Path | None = None
    characters: dict[str, StoryCharacter] = field(default_factory=dict)
    panels: tuple[Panel, ...] = ()
    source: Path | None = None

    # --- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """A JSON-ready dict; image paths are made relative to `relative_to` when given."""

        def image_path(path: Path) -> str:
            if relative_to is None:
                return str(path)
            return Path(os.path.relpath(path, Path(relative_to).resolve())).as_posix()

        return {
            "format": "instantcharacter-story",
            "version": FORMAT_VERSION,
            "title": self.title,
            "style": self.style,
            "negative": self.negative,
            "size": [self.width, self.height],
            "seed": self.seed,
            "layout": self.layout,
            "page": self.page,
            "dpi": self.dpi,
            "margin_mm": self.margin_mm,
            "gutter_mm": self.gutter_mm,
            "steps": self.steps,
            "guidance": self.guidance,
            "true_cfg": self.true_cfg,
            "reading": self.reading,
            "bubbles": self.bubbles,
            "webtoon": [self.webtoon_width, self.webtoon_slice],
            "font": image_path(self.font) if self.font is not None else None,
            "characters": [
                {
                    "name": c.name,
                    "image": image_path(c.image),
                    "scale": c.scale,
                    "description": c.description,
                    "image_sha256": c.image_sha256,
                }
                for c in self.characters.values()
            ],
            "panels": [
                {
                    "prompt": p.prompt,
                    "characters": list(p.characters),
                    "regions": dict(p.regions),
                    "caption": p.caption,
                    "dialogue": [{"speaker": d.speaker, "text": d.text} for d in p.dialogue],
                    "seed": p.seed,
                    "seed_pinned": p.seed_pinned,
                    "line": p.line,
                    "height": p.height,
                    **({"controls": [{"kind": c.kind, "image": image_path(c.image), "scale": c.scale,
                                      "image_sha256": c.image_sha256} for c in p.controls]} if p.controls else {}),
                }
                for p in self.panels
            ],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the story as JSON (atomically), image paths relative to the JSON file's folder."""
        from core.story.manifest import write_json_atomic

        path = Path(path)
        write_json_atomic(self.to_dict(relative_to=path.parent), path)
        return path

    def engine_prompt(self, panel: Panel) -> str:
        """The prompt sent to the engine: `[Name@region]` becomes `[Name]`, `[NC]` goes, the style is appended."""
        return _engine_prompt(panel.prompt, self.style)

    def panel_size(self, panel: Panel) -> tuple[int, int]:
        """``(width, height)`` the panel is rendered at: its page cell's shape at about ``size``'s pixel count
        (multiples of 16), see `core.story.layout.panel_sizes`."""
        from core.story.layout import panel_sizes

        return panel_sizes(self).get(panel.index, (self.width, self.height))

    def with_panel_seed(self, index: int, seed: int) -> Story:
        """A copy with panel `index` pinned to `seed` (e.g. "regenerate this panel with a new seed")."""
        panels = list(self.panels)
        panels[index] = dataclasses.replace(panels[index], seed=int(seed), seed_pinned=True)
        return dataclasses.replace(self, panels=tuple(panels))


# --- seeds and settings hashes -------------------------------------------------------------------------------
def derive_panel_seed(story_seed: int, index: int) -> int:
    """The seed of panel `index` (0-based) of a story with `story_seed`: stable across runs, machines and ranks."""
    digest = hashlib.sha256(f"instantcharacter-story:{int(story_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def region_box(spec: str) -> tuple[float, float, float, float]:
    """The normalized box (x0, y0, x1, y1) of a region spec; raises ValueError with a readable reason."""
    return parse_layout(spec)


def canonical_region(spec: str) -> str:
    """Validate a region spec and write it one way (so equal regions hash equal)."""
    spec = re.sub(r"\s+", "", spec).lower()
    box = region_box(spec)
    if spec.startswith("box:"):
        return "box:" + ",".join(_fmt_number(v) for v in box)
    match = _GRID_RE.match(spec)
    if match:
        return "grid:{}x{}:{}".format(*(int(v) for v in match.groups()))
    return spec


def engine_mask(spec: str | None) -> str | tuple[float, float, float, float] | None:
    """What `core.conditioning.character.Character(mask=...)` receives: preset strings pass through, boxes become tuples."""
    if spec is None:
        return None
    if spec.startswith("box:"):
        return region_box(spec)
    return spec


def panel_settings(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every input that changes a panel's pixels (captions and dialogue do not)."""
    return {
        "version": FORMAT_VERSION,
        "prompt": story.engine_prompt(panel),
        "negative": story.negative,
        "seed": panel.seed,
        "size": list(story.panel_size(panel)),
        "steps": story.steps,
        "guidance": story.guidance,
        "true_cfg": story.true_cfg,
        "characters": [
            {
                "name": name,
                "image_sha256": story.characters[name].image_sha256,
                "scale": story.characters[name].scale,
                "region": panel.regions.get(name),
                # keys only when they reach the model, so panels made before they did keep their hashes
                **({"description": story.characters[name].description}
                   if story.characters[name].description else {}),
            }
            for name in panel.characters
        ],
        "options": {k: options[k] for k in sorted(options or {})},
        # only with control images: the hashes of the panels of before stay as they were
        **({"controls": [{"kind": c.kind, "image_sha256": c.image_sha256, "scale": c.scale} for c in panel.controls]}
           if panel.controls else {}),
        # two or more characters are placed in regions (theirs or the automatic layout): regional text's default
        **({"regional_text": RegionalText().to_json()} if len(panel.characters) >= 2 else {}),
    }


def panel_settings_hash(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> str:
    """A hex digest of `panel_settings`: equal digests mean the same render."""
    blob = json.dumps(panel_settings(story, panel, options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- parsing -------------------------------------------------------------------------------------------------
def check_story_text(text: Any) -> str:
    """``text`` when it is a string of at most MAX_STORY_BYTES (UTF-8); `StoryError` otherwise. Checked before any
    parsing, so nothing ever splits or scans a huge text."""
    if not isinstance(text, str):
        raise StoryError(f"a story must be text, got {type(text).__name__}")
    if len(text) > MAX_STORY_BYTES:
        raise StoryError(f"the story is {len(text):,} characters long: the limit is {MAX_STORY_BYTES:,} bytes")
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_STORY_BYTES:
        raise StoryError(f"the story is {size:,} bytes: the limit is {MAX_STORY_BYTES:,} bytes")
    return text


def load_story(path: str | os.PathLike, paths: PathPolicy = UNRESTRICTED) -> Story:
    """Read a story file: JSON (``.json``) or the text format. Image paths are relative to the file.

    The file and its character images must be allowed by `paths`; a file over MAX_STORY_BYTES is not read.
    """
    try:
        path = paths.resolve(path, what="story")
    except PathNotAllowedError as exc:
        raise StoryError(str(exc), source=str(path)) from None
    try:
        size = path.stat().st_size
        if size > MAX_STORY_BYTES:
            raise StoryError(f"story {path} is {size:,} bytes: the limit is {MAX_STORY_BYTES:,} bytes",
                             source=str(path))
        with open(path, "rb") as handle:
            data = handle.read(MAX_STORY_BYTES + 1)
    except OSError as exc:
        raise StoryError(f"cannot read story {path}: {exc.strerror or exc}", source=str(path)) from None
    if len(data) > MAX_STORY_BYTES:  # it grew after the stat
        raise StoryError(f"story {path} is over the limit of {MAX_STORY_BYTES:,} bytes", source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoryError(f"story {path} is not UTF-8 text (byte {exc.start})", source=str(path)) from None
    if path.suffix.lower() == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoryError([(exc.lineno, f"bad JSON: {exc.msg}")], source=str(path)) from None
        except (ValueError, RecursionError) as exc:  # a number too long to convert, or nesting too deep
            raise StoryError(f"bad JSON: {_clip(str(exc) or type(exc).__name__)}", source=str(path)) from None
        return story_from_dict(loaded, base_dir=path.parent, source=path, paths=paths)
    return parse_story(text, base_dir=path.parent, source=path, paths=paths)


def _fmt_number(value: float) -> str:
    return f"{value:.6g}"


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut to `limit` characters for a message (a message never echoes a whole huge line)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    try:
        return _clip(repr(value))
    except ValueError:  # an int too long for repr
        return f"a {type(value).__name__} too long to show"


class _TooManyProblems(Exception):
    """Raised by `_Problems.add` at MAX_PROBLEMS: the parse stops and reports what it found."""


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []

    def add(self, line: int | None, message: str) -> None:
        self.items.append((line, message))
        if len(self.items) >= MAX_PROBLEMS:
            raise _TooManyProblems

    def raise_if_any(self, source: str | os.PathLike | None, sort: bool) -> None:
        if not self.items:
            return
        items = list(self.items)
        if sort:
            items.sort(key=lambda item: (item[0] is None, item[0] or 0))
        if len(items) >= MAX_PROBLEMS:
            items.append((None, f"stopped after {MAX_PROBLEMS} problems: fix these first"))
        raise StoryError(items, source=str(source) if source else None)


def _unknown_character(name: str, known: dict[str, Any]) -> str:
    if len(name) > MAX_NAME_CHARS:
        return f"unknown character [{_clip(name, 40)}]: names are at most {MAX_NAME_CHARS} characters"
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


def _split_caption(text: str) -> tuple[str, str]:
    """Split "prompt # caption" at the first unescaped '#'; '\\#' stays a literal '#'."""
    match = re.search(r"(?<!\\)#", text)
    if match is None:
        return text.replace("\\#", "#").strip(), ""
    prompt, caption = text[: match.start()], text[match.end():]
    return prompt.replace("\\#", "#").strip(), caption.replace("\\#", "#").strip()


# --- values and their limits ----------------------------------------------------------------------------------
def _whole(value: Any, name: str, low: int, high: int) -> int:
    """`check_int`, with a short message for ints too long to print."""
    if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
        raise LimitError(f"{name} must be from {low} to {high}, got {_show(value)}")
    return check_int(value, name, low, high)


def _number(value: Any, name: str, low: float, high: float) -> float:
    """A finite number (int or float, not bool) in ``low..high``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int):
        ok = low <= value <= high
    elif ok:
        ok = math.isfinite(value) and low <= value <= high
    if not ok:
        raise LimitError(f"{name} must be a number from {low:g} to {high:g}, got {_show(value)}")
    return float(value)


def _text(value: Any, name: str, limit: int) -> str:
    """`check_text` for a required string (a missing one is empty)."""
    return check_text("" if value is None else value, name, limit, optional=False)


def _size(width: Any, height: Any, shown: str) -> tuple[int, int]:
    for side in (width, height):
        if isinstance(side, bool) or not isinstance(side, int) or side % 16 or not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"bad size '{_clip(shown)}': width and height must be multiples of 16 "
                             f"between {MIN_SIDE} and {MAX_SIDE}")
    if width * height > MAX_OUTPUT_PIXELS:
        raise LimitError(f"bad size '{shown}': {width * height:,} pixels, the limit is {MAX_OUTPUT_PIXELS:,}")
    return width, height


def _parse_int(value: str, what: str) -> int:
    text = value.strip()
    if len(text) > 20:  # longer than any allowed value: no need to convert it
        raise LimitError(f"bad {what} '{_clip(text, 30)}': a number that long is over the limit")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad {what} '{_clip(value)}': expected a whole number") from None


def _parse_float(value: str, what: str) -> float:
    try:
        return float(value.strip()) if len(value) <= 40 else float("inf")
    except ValueError:
        raise ValueError(f"bad {what} '{_clip(value)}': expected a number") from None


def _parse_seed(value: str) -> int:
    return _whole(_parse_int(value, "seed"), "seed", 0, MAX_SEED)


def _panel_height(value: Any, layout: str) -> int:
    """A webtoon panel's ``height:`` in strip pixels."""
    if layout != WEBTOON:
        raise ValueError("height: sets a panel's height in a webtoon strip: write 'layout: webtoon' in the header "
                         "(other layouts take the height from the page)")
    height = _parse_int(value, "height") if isinstance(value, str) else value
    return _whole(height, "height", *PANEL_HEIGHTS)


_HEADER_LIMITS = {"title": MAX_CAPTION_CHARS, "style": MAX_PROMPT_CHARS, "negative": MAX_PROMPT_CHARS}
_NUMBER_LIMITS = {"guidance": (0.0, MAX_GUIDANCE), "true_cfg": (1.0, MAX_TRUE_CFG)}
_NUMBER_DEFAULTS = {"guidance": 3.5, "true_cfg": 1.0}


def _header_value(key: str, value: str, line: int, fields: dict[str, Any], problems: _Problems) -> None:
    try:
        if key in _HEADER_LIMITS:
            fields[key] = _text(value, key, _HEADER_LIMITS[key])
        elif key == "size":
            match = _SIZE_RE.match(value) if len(value) <= 40 else None
            if not match:
                raise ValueError(f"bad size '{_clip(value)}': expected WIDTHxHEIGHT, e.g. 1024x768")
            fields["width"], fields["height"] = _size(int(match.group(1)), int(match.group(2)), value)
        elif key == "seed":
            fields["seed"] = _parse_seed(value)
        elif key == "layout":
            fields["layout"] = parse_layout_spec(value[:80])
        elif key == "page":
            fields["page"] = parse_page_spec(value[:80]).spec
        elif key == "dpi":
            fields["dpi"] = _whole(_parse_int(value, "dpi"), "dpi", MIN_DPI, MAX_DPI)
        elif key in ("margin", "gutter"):
            fields[f"{key}_mm"] = parse_length_mm(value[:80])
        elif key == "steps":
            fields["steps"] = _whole(_parse_int(value, "steps"), "steps", 1, MAX_STEPS)
        elif key in _NUMBER_LIMITS:
            fields[key] = _number(_parse_float(value, key), key, *_NUMBER_LIMITS[key])
        elif key == "reading":
            fields["reading"] = parse_reading(value[:80])
        elif key == "bubbles":
            fields["bubbles"] = parse_bubbles(value[:80])
        elif key == "webtoon":
            fields["webtoon_width"], fields["webtoon_slice"] = parse_webtoon_spec(value[:80])
    except ValueError as exc:
        problems.add(line, str(exc))


def _story_file(value: str, base_dir: Path, what: str, line: int | None, where: str, problems: _Problems,
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


def _font_file(value: str, base_dir: Path, line: int | None, where: str, problems: _Problems,
               paths: PathPolicy) -> Path | None:
    """The story's ``font:`` file, relative to the story and allowed by `paths`: a font file of at most
    MAX_FILE_BYTES that has glyphs (read through fontTools)."""
    from core.story.fonts import FontFace, coverage

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


def _webtoon_problems(fields: dict[str, Any], heights: list[int | None], line: int | None,
                      problems: _Problems) -> None:
    """A webtoon strip over the pixel limit, as a problem on the layout line."""
    try:
        webtoon_cells(fields.get("webtoon_width", WEBTOON_WIDTH), fields.get("height", 1024) /
                      fields.get("width", 1024), tuple(heights), fields.get("dpi", 150),
                      fields.get("margin_mm", 10.0), fields.get("gutter_mm", 4.0), bool(fields.get("title")))
    except LimitError as exc:
        problems.add(line, str(exc))


def _page_problems(fields: dict[str, Any], lines: dict[str, int | None], panel_count: int,
                   problems: _Problems) -> None:
    """Limits that depend on several header values: page pixels at the dpi, margins, the number of pages."""
    page = parse_page_spec(fields.get("page", "A4 portrait"))
    dpi = fields.get("dpi", 150)
    try:
        check_page_limits(page, dpi)
    except LimitError as exc:
        problems.add(lines.get("dpi") or lines.get("page"), str(exc))
        return
    room = min(page.width_mm, page.height_mm) / 4
    for key, default in (("margin", 10.0), ("gutter", 4.0)):
        value = fields.get(f"{key}_mm", default)
        if value > room:
            problems.add(lines.get(key), f"{key} {_fmt_number(value)} mm is more than a quarter of the "
                                         f"{page.spec} page's shorter side: the limit is {room:g} mm")
    if panel_count:
        try:
            check_page_limits(page, dpi, count_pages(fields.get("layout", "comic"), page.spec,
                                                     fields.get("seed", 0), panel_count))
        except LimitError as exc:
            problems.add(lines.get("layout"), f"{exc} with layout {fields.get('layout', 'comic')}")


def _character(name: str, image: str, scale: float, description: str, base_dir: Path, line: int | None,
               where: str, problems: _Problems, paths: PathPolicy) -> StoryCharacter | None:
    """The character with its image checked: allowed by `paths` first (so a refusal reads the same whether the
    file exists), then a regular file of at most MAX_FILE_BYTES, an image header of at most MAX_IMAGE_PIXELS,
    and only then hashed."""
    if len(name) > MAX_NAME_CHARS:
        problems.add(line, f"{where}character name '{_clip(name, 40)}' is {len(name):,} characters long: "
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
        problems.add(line, f"{where}bad scale {_fmt_number(scale)} for [{name}]: expected 0..{MAX_SCALE:g}")
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


def _engine_prompt(prompt: str, style: str) -> str:
    prompt = _TAG_RE.sub(lambda m: "" if m.group(1).strip() == NO_CHARACTER_TAG else f"[{m.group(1).strip()}]",
                         prompt)
    prompt = re.sub(r"\s+", " ", prompt).strip().strip(",").strip()
    if style:
        prompt = f"{prompt}, {style}" if prompt else style
    return prompt


def _panel_texts(prompt: str, caption: str, style: str, line: int | None, where: str,
                 problems: _Problems) -> bool:
    """Checks a panel's prompt (with the style, as the engine gets it) and caption against their limits."""
    ok = True
    for check in (lambda: _text(prompt, "the prompt", MAX_PROMPT_CHARS),
                  lambda: _text(_engine_prompt(prompt, style), "the prompt with the style", MAX_PROMPT_CHARS),
                  lambda: _text(caption, "the caption", MAX_CAPTION_CHARS)):
        try:
            check()
        except LimitError as exc:
            problems.add(line, f"{where}{exc}")
            ok = False
            break
    return ok


# --- the text form ---------------------------------------------------------------------------------------------
def parse_story(text: str, base_dir: str | os.PathLike = ".", source: str | os.PathLike | None = None,
                paths: PathPolicy = UNRESTRICTED) -> Story:
    """Parse the text format. Image paths are relative to `base_dir` and must be allowed by `paths`.

    Raises `StoryError` listing every problem (the first MAX_PROBLEMS); the text size is checked first.
    """
    check_story_text(text)
    problems = _Problems()
    try:
        return _parse_story(text, Path(base_dir), source, paths, problems)
    except _TooManyProblems:
        problems.raise_if_any(source, sort=True)
        raise  # not reached


def _parse_story(text: str, base_dir: Path, source, paths: PathPolicy, problems: _Problems) -> Story:
    lines = text.splitlines()
    fields: dict[str, Any] = {}
    header_lines: dict[str, int | None] = {}
    bad_keys: set[str] = set()
    # name -> [line, image, scale, description]
    char_specs: dict[str, list[Any]] = {}
    over_limit: set[str] = set()  # characters past MAX_CHARACTERS or misspelt: known by name, never resolved
    current_char: str | None = None
    broken_line = False  # the last header line was not understood: the indented lines under it are skipped
    font_spec: tuple[int, str] | None = None

    i = 0
    in_header = True
    while i < len(lines) and in_header:
        number, raw = i + 1, lines[i]
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("//"):
            continue
        if stripped == "---":
            in_header = False
            break
        indented = raw[:1].isspace()
        if indented and broken_line:
            continue  # the lines under a broken header line belong to it: its one message says what is wrong
        broken_line = False
        if indented and current_char is not None:
            match = _HEADER_RE.match(stripped)
            key = match.group(1).strip().lower() if match else ""
            if key == "scale":
                try:
                    char_specs[current_char][2] = _parse_float(match.group(2), "scale")
                except ValueError:
                    problems.add(number, f"bad scale '{_clip(match.group(2))}' for [{current_char}]: "
                                         f"expected a number")
            elif key == "description":
                char_specs[current_char][3] = match.group(2).strip()
            else:
                problems.add(number, f"expected 'scale: NUMBER' or 'description: TEXT' under "
                                     f"character [{current_char}], got '{_clip(stripped)}'")
            continue
        current_char = None
        match = _CHARACTER_RE.match(stripped)
        if match:
            name, image = match.group(1), match.group(2).strip()
            if name in char_specs or name in over_limit:
                first = char_specs[name][0] if name in char_specs else None
                problems.add(number, f"character [{_clip(name, 40)}] is defined twice"
                                     + (f" (first on line {first})" if first else ""))
                continue
            if len(char_specs) >= MAX_CHARACTERS:
                problems.add(number, f"character [{_clip(name, 40)}] is number {len(char_specs) + len(over_limit) + 1}"
                                     f": a story has at most {MAX_CHARACTERS} characters")
                over_limit.add(name)
                continue
            char_specs[name] = [number, image, 0.9, ""]
            current_char = name
            continue
        match = _HEADER_RE.match(stripped)
        if not match:
            problems.add(number, f"expected 'key: value' in the header, got '{_clip(stripped)}' "
                                 f"(panels start after a line '---')")
            continue
        key = match.group(1).strip().lower().replace(" ", "_")
        if key not in HEADER_KEYS:
            written = match.group(1).strip()
            word, _, name = written.partition(" ")
            if name and " " not in name and difflib.get_close_matches(word.lower(), ["character"], cutoff=0.7):
                # a misspelt 'character Name: image': its name is still known, so its [Name] tags add no errors
                problems.add(number, f"unknown header key '{_clip(written, 40)}': did you mean "
                                     f"'character {_clip(name, 40)}: {_clip(match.group(2).strip(), 40)}'?")
                over_limit.add(name)
            else:
                problems.add(number, f"unknown header key '{_clip(written, 40)}': expected one of "
                                     f"{', '.join(HEADER_KEYS)} or 'character Name: image' (panels start after '---')")
            broken_line = True
            continue
        header_lines[key] = number
        before = len(problems.items)
        if key == "font":
            font_spec = (number, match.group(2).strip())
            continue
        _header_value(key, match.group(2).strip(), number, fields, problems)
        if len(problems.items) > before:
            bad_keys.add(key)

    characters: dict[str, StoryCharacter] = {}
    for name, (line, image, scale, description) in char_specs.items():
        character = _character(name, image, scale, description, base_dir, line, "", problems, paths)
        if character is not None:
            characters[name] = character
    # unknown-name checks use what was written, even if broken or over the limit
    known = {name: None for name in [*char_specs, *over_limit]}
    if font_spec is not None:
        font = _font_file(font_spec[1], base_dir, font_spec[0], "", problems, paths)
        if font is not None:
            fields["font"] = font

    panels: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for j in range(i, len(lines)):
        number, raw = j + 1, lines[j]
        stripped = raw.strip()
        if not stripped or stripped.startswith("//"):
            continue
        if stripped == "---":
            problems.add(number, "a second '---': the header ends at the first one")
            continue
        if stripped.startswith(">") or stripped.startswith("@"):
            if current is None:
                problems.add(number, f"'{stripped[0]}' line before any panel")
                continue
            body = stripped[1:].strip()
            who, sep, rest = body.partition(":")
            who, rest = who.strip(), rest.strip()
            if stripped[0] == ">":
                if not sep or not who or not rest:
                    problems.add(number, f"bad dialogue '{_clip(stripped)}': expected '> Name: text'")
                elif who not in known:
                    problems.add(number, _unknown_character(who, known))
                elif len(current["dialogue"]) >= MAX_BUBBLES_PER_PANEL:
                    problems.add(number, f"speech bubble {len(current['dialogue']) + 1} of the panel on line "
                                         f"{current['line']}: a panel has at most {MAX_BUBBLES_PER_PANEL}")
                elif len(rest) > MAX_DIALOGUE_CHARS:
                    problems.add(number, f"the speech bubble is {len(rest):,} characters long: the limit is "
                                         f"{MAX_DIALOGUE_CHARS}")
                else:
                    current["dialogue"].append(Dialogue(who, rest))
            else:
                if not sep or not who or not rest:
                    problems.add(number, f"bad region '{_clip(stripped)}': expected '@ Name: left' or "
                                         f"'@ Name: box:x0,y0,x1,y1'")
                elif who not in known:
                    problems.add(number, _unknown_character(who, known))
                elif len(current["pending_regions"]) >= MAX_CHARACTERS:
                    problems.add(number, f"more than {MAX_CHARACTERS} regions for the panel on line "
                                         f"{current['line']}: a panel has at most {MAX_CHARACTERS} characters")
                else:
                    current["pending_regions"].append((number, who, rest[:200]))
            continue
        match = _PANEL_OPTION_RE.match(stripped)
        if match:
            if current is None:
                problems.add(number, f"'{match.group(1)}:' line before any panel (header keys go before '---')")
                continue
            key, value = match.group(1), match.group(2).strip()
            if key == "seed":
                try:
                    current["seed"] = _parse_seed(value)
                except ValueError as exc:
                    problems.add(number, str(exc))
            elif key == "height":
                try:
                    current["height"] = _panel_height(value, fields.get("layout", "comic"))
                except ValueError as exc:
                    problems.add(number, str(exc))
            elif key == "control":
                control = _panel_control(value, base_dir, paths, number, "", problems, len(current["controls"]))
                if control is not None:
                    current["controls"].append(control)
            elif current["caption"]:
                problems.add(number, "this panel already has a caption (after '#')")
            else:
                current["caption"] = value
            continue
        if raw[:1].isspace() and current is not None:
            problems.add(number, f"indented line '{_clip(stripped)}' in a panel: expected '> Name: text', "
                                 f"'@ Name: region', 'seed: N', 'caption: text', 'height: N' or "
                                 f"'control: KIND path' (a new panel starts "
                                 "unindented)")
            continue
        if len(panels) >= MAX_PANELS:
            problems.add(number, f"panel {len(panels) + 1}: a story has at most {MAX_PANELS} panels")
            break  # nothing after it is read
        prompt, caption = _split_caption(stripped)
        current = {"line": number, "prompt": prompt, "caption": caption, "dialogue": [], "pending_regions": [],
                   "seed": None, "height": None, "controls": []}
        panels.append(current)

    if not panels and not problems.items:
        where = "after '---'" if not in_header else "(write the header, a line '---', then one panel per line)"
        problems.add(None, f"empty story: no panels {where}")

    parsed: list[Panel] = []
    story_seed = fields.get("seed", 0)
    for index, spec in enumerate(panels):
        panel = _build_panel(index, spec, known, story_seed, fields.get("style", ""), problems)
        if panel is not None:
            parsed.append(panel)
    if not bad_keys & {"page", "dpi", "margin", "gutter", "layout", "seed"}:
        _page_problems(fields, header_lines, len(panels), problems)
    if fields.get("layout") == WEBTOON and not bad_keys & {"dpi", "margin", "gutter", "webtoon", "size"}:
        _webtoon_problems(fields, [p["height"] for p in panels], header_lines.get("layout"), problems)

    problems.raise_if_any(source, sort=True)
    return Story(**fields, characters=characters, panels=tuple(parsed), source=Path(source) if source else None)


def _build_panel(index: int, spec: dict[str, Any], known: dict[str, Any], story_seed: int, style: str,
                 problems: _Problems) -> Panel | None:
    line = spec["line"]
    if not _panel_texts(spec["prompt"], spec["caption"], style, line, "", problems):
        return None
    names: list[str] = []
    regions: dict[str, str] = {}
    no_character = False
    ok = True
    for match in _TAG_RE.finditer(spec["prompt"]):
        name, region = match.group(1).strip(), match.group(2)
        if name == NO_CHARACTER_TAG:
            no_character = True
            if region is not None:
                problems.add(line, "[NC] takes no region")
                ok = False
            continue
        if name not in known:
            problems.add(line, _unknown_character(name, known))
            ok = False
            continue
        if name not in names:
            names.append(name)
        if region is not None:
            ok &= _set_region(regions, name, region, line, problems)
    for region_line, name, region in spec["pending_regions"]:
        if name not in names:
            problems.add(region_line, f"[{name}] has a region but is not in this panel's prompt "
                                      f"(line {line})")
            ok = False
            continue
        ok &= _set_region(regions, name, region, region_line, problems)
    if len(names) > MAX_CHARACTERS:
        problems.add(line, f"the panel names {len(names)} characters: the limit is {MAX_CHARACTERS}")
        ok = False
    if no_character and names:
        problems.add(line, f"[NC] (no character) together with {', '.join(f'[{n}]' for n in names)}")
        ok = False
    elif not no_character and not names and ok:
        problems.add(line, "panel names no character: tag one with [Name], or write [NC] for a panel without "
                           "characters")
        ok = False
    if not ok:
        return None
    seed = spec["seed"]
    return Panel(
        index=index,
        prompt=spec["prompt"],
        characters=tuple(names),
        regions=regions,
        caption=spec["caption"],
        dialogue=tuple(spec["dialogue"]),
        seed=seed if seed is not None else derive_panel_seed(story_seed, index),
        seed_pinned=seed is not None,
        line=line,
        height=spec["height"],
        controls=tuple(spec["controls"]),
    )


def _panel_control(value: str, base_dir: Path, paths: PathPolicy, line: int | None, where: str,
                   problems: _Problems, count: int, scale=None) -> PanelControl | None:
    """A ``control: KIND PATH [SCALE]`` value (the path relative to the story, through `paths`), checked."""
    if count >= MAX_CONTROLS:
        problems.add(line, f"{where}a panel has at most {MAX_CONTROLS} control images")
        return None
    parts = value.split()
    if scale is None and len(parts) >= 3 and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", parts[-1]):
        scale, parts = parts[-1], parts[:-1]
    if len(parts) < 2:
        problems.add(line, f"{where}bad control '{_clip(value)}': expected 'control: KIND path/to/image.png [SCALE]'")
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


def _set_region(regions: dict[str, str], name: str, region: str, line: int | None, problems: _Problems) -> bool:
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


# --- the JSON form ---------------------------------------------------------------------------------------------
def story_from_dict(data: dict[str, Any], base_dir: str | os.PathLike = ".",
                    source: str | os.PathLike | None = None, paths: PathPolicy = UNRESTRICTED) -> Story:
    """Build a `Story` from its JSON form (as `Story.to_dict` writes it), validating it like the text form:
    the same limits, image paths through `paths`, and a problem (never a TypeError) for a value of the wrong type.
    """
    if not isinstance(data, dict) or data.get("format") != "instantcharacter-story":
        raise StoryError("not a story JSON: expected an object with \"format\": \"instantcharacter-story\"",
                         source=str(source) if source else None)
    problems = _Problems()
    try:
        return _story_from_dict(data, Path(base_dir), source, paths, problems)
    except _TooManyProblems:
        problems.raise_if_any(source, sort=False)
        raise  # not reached


def _check(problems: _Problems, where: str, check) -> Any:
    """``check()``, or None with its ValueError (a LimitError included) added as a problem."""
    try:
        return check()
    except ValueError as exc:
        problems.add(None, f"{where}{exc}")
        return None


def _list(value: Any, name: str, limit: int) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LimitError(f"{name} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise LimitError(f"{name} has {len(value):,} entries: the limit is {limit}")
    return value


def _object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise LimitError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _story_from_dict(data: dict[str, Any], base_dir: Path, source, paths: PathPolicy,
                     problems: _Problems) -> Story:
    fields: dict[str, Any] = {}
    bad = False

    def header(key: str, check) -> None:
        nonlocal bad
        value = _check(problems, "", check)
        if value is None:
            bad = True
        else:
            fields[key] = value

    for key, limit in _HEADER_LIMITS.items():
        header(key, lambda key=key, limit=limit: _text(data.get(key, ""), key, limit))
    size = data.get("size", [1024, 1024])
    if isinstance(size, (list, tuple)) and len(size) == 2:
        sides = _check(problems, "", lambda: _size(size[0], size[1], f"{_show(size[0])}x{_show(size[1])}"))
        if sides is not None:
            fields["width"], fields["height"] = sides
    else:
        problems.add(None, f"size must be [WIDTH, HEIGHT], got {_show(size)}")
    header("seed", lambda: _whole(data.get("seed", 0), "seed", 0, MAX_SEED))
    header("layout", lambda: parse_layout_spec(_text(data.get("layout", "comic"), "layout", 80)))
    header("page", lambda: parse_page_spec(_text(data.get("page", "A4 portrait"), "page", 80)).spec)
    header("dpi", lambda: _whole(data.get("dpi", 150), "dpi", MIN_DPI, MAX_DPI))
    header("margin_mm", lambda: _number(data.get("margin_mm", 10.0), "margin_mm", 0, 2000))
    header("gutter_mm", lambda: _number(data.get("gutter_mm", 4.0), "gutter_mm", 0, 2000))
    header("steps", lambda: _whole(data.get("steps", 28), "steps", 1, MAX_STEPS))
    for key, (low, high) in _NUMBER_LIMITS.items():
        header(key, lambda key=key, low=low, high=high: _number(data.get(key, _NUMBER_DEFAULTS[key]), key, low,
                                                                            high))
    header("reading", lambda: parse_reading(_text(data.get("reading", "left-to-right"), "reading", 80)))
    header("bubbles", lambda: parse_bubbles(_text(data.get("bubbles", "horizontal"), "bubbles", 80)))
    webtoon = data.get("webtoon", [WEBTOON_WIDTH, WEBTOON_SLICE])
    if isinstance(webtoon, list) and len(webtoon) == 2 and all(type(v) is int for v in webtoon):
        sides = _check(problems, "", lambda: parse_webtoon_spec(f"{webtoon[0]}x{webtoon[1]}"))
        if sides is not None:
            fields["webtoon_width"], fields["webtoon_slice"] = sides
    else:
        problems.add(None, f"webtoon must be [WIDTH, SLICE] in pixels, got {_show(webtoon)}")
    if data.get("font") is not None:
        font = _check(problems, "", lambda: _text(data.get("font"), "font", MAX_PATH_CHARS))
        if font:
            font_path = _font_file(font, base_dir, None, "", problems, paths)
            if font_path is not None:
                fields["font"] = font_path

    characters: dict[str, StoryCharacter] = {}
    known: dict[str, None] = {}
    entries = _check(problems, "", lambda: _list(data.get("characters"), "characters", MAX_CHARACTERS)) or []
    for k, raw in enumerate(entries):
        where = f"characters[{k}]: "
        entry = _check(problems, where, lambda raw=raw: _object(raw, "a character"))
        if entry is None:
            continue
        name = _check(problems, where, lambda: _text(entry.get("name"), "name", MAX_NAME_CHARS))
        image = _check(problems, where, lambda: _text(entry.get("image"), "image", MAX_PATH_CHARS))
        scale = _check(problems, where, lambda: _number(entry.get("scale", 0.9), "scale", 0.0, MAX_SCALE))
        description = _check(problems, where, lambda: _text(entry.get("description"), "description",
                                                            MAX_DESCRIPTION_CHARS))
        if name is None:
            continue
        if name in known:
            problems.add(None, f"{where}character [{name}] is defined twice")
            continue
        known[name] = None
        if image is None or scale is None or description is None:
            continue
        character = _character(name, image, scale, description, base_dir, None, where, problems, paths)
        if character is not None:
            characters[name] = character

    panels: list[Panel] = []
    raw_panels = _check(problems, "", lambda: _list(data.get("panels"), "panels", MAX_PANELS))
    if raw_panels == []:
        problems.add(None, "empty story: no panels")
    for index, raw in enumerate(raw_panels or []):
        panel = _panel_from_dict(index, raw, known, fields, problems, base_dir, paths)
        if panel is not None:
            panels.append(panel)
    if not bad:
        _page_problems(fields, {}, len(raw_panels or []), problems)
        if fields.get("layout") == WEBTOON:
            _webtoon_problems(fields, [p.height for p in panels], None, problems)
    problems.raise_if_any(source, sort=False)
    return Story(**fields, characters=characters, panels=tuple(panels), source=Path(source) if source else None)


def _panel_from_dict(index: int, raw: Any, known: dict[str, None], fields: dict[str, Any],
                     problems: _Problems, base_dir: Path = Path("."), paths: PathPolicy = UNRESTRICTED
                     ) -> Panel | None:
    where = f"panels[{index}]: "
    before = len(problems.items)
    entry = _check(problems, where, lambda: _object(raw, "a panel"))
    if entry is None:
        return None
    prompt = _check(problems, where, lambda: _text(entry.get("prompt"), "prompt", MAX_PROMPT_CHARS))
    caption = _check(problems, where, lambda: _text(entry.get("caption"), "caption", MAX_CAPTION_CHARS))
    if prompt is not None and caption is not None:
        _panel_texts(prompt, caption, fields.get("style", ""), None, where, problems)
    names = _check(problems, where, lambda: _list(entry.get("characters"), "characters", MAX_CHARACTERS)) or []
    for name in names:
        if not isinstance(name, str):
            problems.add(None, f"{where}a character name must be text, got {type(name).__name__}")
        elif name not in known:
            problems.add(None, f"{where}{_unknown_character(name, known)}")
    regions: dict[str, str] = {}
    raw_regions = _check(problems, where, lambda: _object(entry.get("regions", {}), "regions")) or {}
    if len(raw_regions) > MAX_CHARACTERS:
        problems.add(None, f"{where}regions has {len(raw_regions):,} entries: the limit is {MAX_CHARACTERS}")
        raw_regions = {}
    for name, region in raw_regions.items():
        if name not in names:
            problems.add(None, f"{where}[{_clip(str(name), 40)}] has a region but is not in the panel")
        elif not isinstance(region, str):
            problems.add(None, f"{where}the region of [{name}] must be text, got {type(region).__name__}")
        else:
            try:
                regions[name] = canonical_region(region[:200])
            except ValueError as exc:
                problems.add(None, f"{where}{exc} for [{name}]")
    dialogue = []
    bubbles = _check(problems, where, lambda: _list(entry.get("dialogue"), "dialogue", MAX_BUBBLES_PER_PANEL)) or []
    for d, item in enumerate(bubbles):
        bubble = _check(problems, f"{where}dialogue[{d}]: ", lambda item=item: _object(item, "a speech bubble"))
        if bubble is None:
            continue
        speaker = _check(problems, f"{where}dialogue[{d}]: ",
                         lambda: _text(bubble.get("speaker"), "speaker", MAX_NAME_CHARS))
        text = _check(problems, f"{where}dialogue[{d}]: ",
                      lambda: _text(bubble.get("text"), "the speech bubble", MAX_DIALOGUE_CHARS))
        if speaker is not None and speaker not in known:
            problems.add(None, f"{where}{_unknown_character(speaker, known)}")
        if speaker is not None and text is not None:
            dialogue.append(Dialogue(speaker, text))
    pinned = entry.get("seed_pinned", False)
    if not isinstance(pinned, bool):
        problems.add(None, f"{where}seed_pinned must be true or false, got {_show(pinned)}")
        pinned = False
    if pinned:
        seed = _check(problems, where, lambda: _whole(entry.get("seed"), "seed", 0, MAX_SEED))
    else:
        seed = derive_panel_seed(fields.get("seed", 0), index)
    line = _check(problems, where, lambda: _whole(entry.get("line", 0) or 0, "line", 0, MAX_STORY_BYTES))
    height = None
    if entry.get("height") is not None:
        height = _check(problems, where, lambda: _panel_height(entry.get("height"), fields.get("layout", "comic")))
    controls = []
    for c, item in enumerate(_check(problems, where, lambda: _list(entry.get("controls"), "controls", 4)) or []):
        spec = _check(problems, f"{where}controls[{c}]: ", lambda item=item: _object(item, "a control"))
        if spec is None:
            continue
        kind, image = spec.get("kind"), spec.get("image")
        if not isinstance(kind, str) or not isinstance(image, str) or not image.strip():
            problems.add(None, f"{where}controls[{c}]: needs a kind and an image path")
            continue
        control = _panel_control(f"{kind} {image}", base_dir, paths, None, f"{where}controls[{c}]: ", problems,
                                 len(controls), scale=spec.get("scale", 0.7))
        if control is not None:
            controls.append(control)
    if len(problems.items) > before:
        return None
    return Panel(index=index, prompt=prompt, characters=tuple(names), regions=regions, caption=caption,
                 dialogue=tuple(dialogue), seed=seed, seed_pinned=pinned, line=line, height=height,
                 controls=tuple(controls))


_OPTION_LINE = re.compile(r"^\s*(?:>|@|(?:seed|caption|height|control)\s*:|//)")
_SEED_LINE = re.compile(r"^(\s*)seed\s*:")


def pin_seed(text: str, story: Story, index: int, seed: int) -> str:
    """``text`` with panel ``index``'s seed set to ``seed``: its ``seed:`` line replaced, or one added under the
    panel's prompt line, so the text keeps the seed for later renders. The story must come from ``text``."""
    panel = story.panels[index]
    if not panel.line:
        raise StoryError("this story has no line numbers (JSON): edit the panel's seed in the file instead")
    lines = text.splitlines()
    start = panel.line - 1
    end = start + 1
    while end < len(lines) and _OPTION_LINE.match(lines[end]):
        end += 1
    for k in range(start + 1, end):
        match = _SEED_LINE.match(lines[k])
        if match:
            lines[k] = f"{match.group(1)}seed: {seed}"
            break
    else:
        lines.insert(start + 1, f"  seed: {seed}")
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")

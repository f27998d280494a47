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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.layouts import GRID_PATTERN, PRESETS, parse_layout
from core.paths import sha256_file
from core.story.layout import parse_layout_spec, parse_length_mm, parse_page_spec

FORMAT_VERSION = 1

# Where a character stands in a panel: the engine's layouts (core.layouts), as normalized boxes. Bubble placement
# uses the boxes; the engine receives the region string itself.
REGION_PRESETS = PRESETS

NO_CHARACTER_TAG = "NC"
_NAME = r"[A-Za-z][A-Za-z0-9_\-]*"
_NAME_RE = re.compile(rf"^{_NAME}$")
# [Name] or [Name@region]; a region may hold commas and dots ("box:0,0,0.5,1") but no "]".
_TAG_RE = re.compile(r"\[([^\[\]@]*?)(?:@([^\[\]]*))?\]")
_HEADER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_ ]*?)\s*:\s*(.*)$")
_CHARACTER_RE = re.compile(r"^character\s+(\S+?)\s*:\s*(.*)$")
_PANEL_OPTION_RE = re.compile(r"^(seed|caption)\s*:\s*(.*)$")
_GRID_RE = GRID_PATTERN
_SIZE_RE = re.compile(r"^(\d+)\s*[xX×]\s*(\d+)$")

HEADER_KEYS = (
    "title", "style", "negative", "size", "seed", "layout", "page", "dpi", "margin", "gutter",
    "steps", "guidance", "true_cfg",
)
MAX_SIDE = 4096


class StoryError(ValueError):
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
        prompt = _TAG_RE.sub(lambda m: "" if m.group(1).strip() == NO_CHARACTER_TAG else f"[{m.group(1).strip()}]",
                             panel.prompt)
        prompt = re.sub(r"\s+", " ", prompt).strip().strip(",").strip()
        if self.style:
            prompt = f"{prompt}, {self.style}" if prompt else self.style
        return prompt

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
    """What `core.character.Character(mask=...)` receives: preset strings pass through, boxes become tuples."""
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
        "size": [story.width, story.height],
        "steps": story.steps,
        "guidance": story.guidance,
        "true_cfg": story.true_cfg,
        "characters": [
            {
                "name": name,
                "image_sha256": story.characters[name].image_sha256,
                "scale": story.characters[name].scale,
                "region": panel.regions.get(name),
            }
            for name in panel.characters
        ],
        "options": {k: options[k] for k in sorted(options or {})},
    }


def panel_settings_hash(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> str:
    """A hex digest of `panel_settings`: equal digests mean the same render."""
    blob = json.dumps(panel_settings(story, panel, options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- parsing -------------------------------------------------------------------------------------------------
def load_story(path: str | os.PathLike) -> Story:
    """Read a story file: JSON (``.json``) or the text format. Image paths are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoryError(f"cannot read story {path}: {exc.strerror or exc}", source=str(path)) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoryError([(exc.lineno, f"bad JSON: {exc.msg}")], source=str(path)) from None
        return story_from_dict(data, base_dir=path.parent, source=path)
    return parse_story(text, base_dir=path.parent, source=path)


def _fmt_number(value: float) -> str:
    return f"{value:.6g}"


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []

    def add(self, line: int | None, message: str) -> None:
        self.items.append((line, message))


def _unknown_character(name: str, known: dict[str, Any]) -> str:
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


def _header_value(key: str, value: str, line: int, fields: dict[str, Any], problems: _Problems) -> None:
    try:
        if key in ("title", "style", "negative"):
            fields[key] = value
        elif key == "size":
            match = _SIZE_RE.match(value)
            if not match:
                raise ValueError(f"bad size '{value}': expected WIDTHxHEIGHT, e.g. 1024x768")
            width, height = int(match.group(1)), int(match.group(2))
            for side in (width, height):
                if side % 16 or not 16 <= side <= MAX_SIDE:
                    raise ValueError(f"bad size '{value}': width and height must be multiples of 16 "
                                     f"between 16 and {MAX_SIDE}")
            fields["width"], fields["height"] = width, height
        elif key == "seed":
            fields["seed"] = _parse_seed(value)
        elif key == "layout":
            fields["layout"] = parse_layout_spec(value)
        elif key == "page":
            fields["page"] = parse_page_spec(value).spec
        elif key == "dpi":
            dpi = _parse_int(value, "dpi")
            if not 36 <= dpi <= 1200:
                raise ValueError(f"bad dpi {dpi}: expected 36..1200")
            fields["dpi"] = dpi
        elif key in ("margin", "gutter"):
            fields[f"{key}_mm"] = parse_length_mm(value)
        elif key == "steps":
            steps = _parse_int(value, "steps")
            if steps < 1:
                raise ValueError(f"bad steps {steps}: must be at least 1")
            fields["steps"] = steps
        elif key in ("guidance", "true_cfg"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise ValueError(f"bad {key} '{value}': expected a number") from None
    except ValueError as exc:
        problems.add(line, str(exc))


def _parse_int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"bad {what} '{value}': expected a whole number") from None


def _parse_seed(value: str) -> int:
    seed = _parse_int(value, "seed")
    if not 0 <= seed < 2**63:
        raise ValueError(f"bad seed {seed}: expected 0 or more")
    return seed


def _character(name: str, image: str, scale: float, description: str, base_dir: Path, line: int | None,
               where: str, problems: _Problems) -> StoryCharacter | None:
    if not _NAME_RE.match(name) or name == NO_CHARACTER_TAG:
        problems.add(line, f"{where}bad character name '{name}': use letters, digits, '_' or '-', "
                           f"starting with a letter (and not NC)")
        return None
    if not image:
        problems.add(line, f"{where}character [{name}] has no image: write 'character {name}: path/to/image.png'")
        return None
    path = (base_dir / image).resolve()
    if not path.is_file():
        problems.add(line, f"{where}missing image for [{name}]: {image} (looked in {path.parent})")
        return None
    if not 0.0 <= scale <= 2.0:
        problems.add(line, f"{where}bad scale {scale} for [{name}]: expected 0..2")
        return None
    return StoryCharacter(name=name, image=path, scale=scale, description=description,
                          image_sha256=sha256_file(path))


def parse_story(text: str, base_dir: str | os.PathLike = ".", source: str | os.PathLike | None = None) -> Story:
    """Parse the text format. Image paths are relative to `base_dir`. Raises `StoryError` listing every problem."""
    base_dir = Path(base_dir)
    problems = _Problems()
    lines = text.splitlines()
    fields: dict[str, Any] = {}
    # name -> [line, image, scale, description]
    char_specs: dict[str, list[Any]] = {}
    current_char: str | None = None

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
        if indented and current_char is not None:
            match = _HEADER_RE.match(stripped)
            key = match.group(1).strip().lower() if match else ""
            if key == "scale":
                try:
                    char_specs[current_char][2] = float(match.group(2))
                except ValueError:
                    problems.add(number, f"bad scale '{match.group(2)}' for [{current_char}]: expected a number")
            elif key == "description":
                char_specs[current_char][3] = match.group(2).strip()
            else:
                problems.add(number, f"expected 'scale: NUMBER' or 'description: TEXT' under "
                                     f"character [{current_char}], got '{stripped}'")
            continue
        current_char = None
        match = _CHARACTER_RE.match(stripped)
        if match:
            name, image = match.group(1), match.group(2).strip()
            if name in char_specs:
                problems.add(number, f"character [{name}] is defined twice (first on line {char_specs[name][0]})")
                continue
            char_specs[name] = [number, image, 0.9, ""]
            current_char = name
            continue
        match = _HEADER_RE.match(stripped)
        if not match:
            problems.add(number, f"expected 'key: value' in the header, got '{stripped}' "
                                 f"(panels start after a line '---')")
            continue
        key = match.group(1).strip().lower().replace(" ", "_")
        if key not in HEADER_KEYS:
            problems.add(number, f"unknown header key '{match.group(1).strip()}': expected one of "
                                 f"{', '.join(HEADER_KEYS)} or 'character Name: image' (panels start after '---')")
            continue
        _header_value(key, match.group(2).strip(), number, fields, problems)

    characters: dict[str, StoryCharacter] = {}
    for name, (line, image, scale, description) in char_specs.items():
        character = _character(name, image, scale, description, base_dir, line, "", problems)
        if character is not None:
            characters[name] = character
    known = {name: None for name in char_specs}  # unknown-name checks use what was written, even if broken

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
                    problems.add(number, f"bad dialogue '{stripped}': expected '> Name: text'")
                elif who not in known:
                    problems.add(number, _unknown_character(who, known))
                else:
                    current["dialogue"].append(Dialogue(who, rest))
            else:
                if not sep or not who or not rest:
                    problems.add(number, f"bad region '{stripped}': expected '@ Name: left' or "
                                         f"'@ Name: box:x0,y0,x1,y1'")
                elif who not in known:
                    problems.add(number, _unknown_character(who, known))
                else:
                    current["pending_regions"].append((number, who, rest))
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
            elif current["caption"]:
                problems.add(number, "this panel already has a caption (after '#')")
            else:
                current["caption"] = value
            continue
        if raw[:1].isspace() and current is not None:
            problems.add(number, f"indented line '{stripped}' in a panel: expected '> Name: text', "
                                 f"'@ Name: region', 'seed: N' or 'caption: text' (a new panel starts unindented)")
            continue
        prompt, caption = _split_caption(stripped)
        current = {"line": number, "prompt": prompt, "caption": caption, "dialogue": [], "pending_regions": [],
                   "seed": None}
        panels.append(current)

    if not panels and not problems.items:
        where = "after '---'" if not in_header else "(write the header, a line '---', then one panel per line)"
        problems.add(None, f"empty story: no panels {where}")

    parsed: list[Panel] = []
    story_seed = fields.get("seed", 0)
    for index, spec in enumerate(panels):
        panel = _build_panel(index, spec, known, story_seed, problems)
        if panel is not None:
            parsed.append(panel)

    if problems.items:
        problems.items.sort(key=lambda item: (item[0] is None, item[0] or 0))
        raise StoryError(problems.items, source=str(source) if source else None)
    return Story(**fields, characters=characters, panels=tuple(parsed), source=Path(source) if source else None)


def _build_panel(index: int, spec: dict[str, Any], known: dict[str, Any], story_seed: int,
                 problems: _Problems) -> Panel | None:
    line = spec["line"]
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
    )


def _set_region(regions: dict[str, str], name: str, region: str, line: int, problems: _Problems) -> bool:
    try:
        canonical = canonical_region(region)
    except ValueError as exc:
        problems.add(line, f"{exc} for [{name}]")
        return False
    if name in regions and regions[name] != canonical:
        problems.add(line, f"[{name}] has two regions in one panel: {regions[name]} and {canonical}")
        return False
    regions[name] = canonical
    return True


def story_from_dict(data: dict[str, Any], base_dir: str | os.PathLike = ".",
                    source: str | os.PathLike | None = None) -> Story:
    """Build a `Story` from its JSON form (as `Story.to_dict` writes it), validating it like the text form."""
    base_dir = Path(base_dir)
    problems = _Problems()
    if not isinstance(data, dict) or data.get("format") != "instantcharacter-story":
        raise StoryError("not a story JSON: expected an object with \"format\": \"instantcharacter-story\"",
                         source=str(source) if source else None)
    fields: dict[str, Any] = {}
    for key in ("title", "style", "negative"):
        fields[key] = str(data.get(key, ""))
    size = data.get("size", [1024, 1024])
    simple = {
        "size": f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2 else str(size),
        "seed": str(data.get("seed", 0)),
        "layout": str(data.get("layout", "comic")),
        "page": str(data.get("page", "A4 portrait")),
        "dpi": str(data.get("dpi", 150)),
        "margin": f"{data.get('margin_mm', 10.0)}mm",
        "gutter": f"{data.get('gutter_mm', 4.0)}mm",
        "steps": str(data.get("steps", 28)),
        "guidance": str(data.get("guidance", 3.5)),
        "true_cfg": str(data.get("true_cfg", 1.0)),
    }
    field_problems = _Problems()
    for key, value in simple.items():
        _header_value(key, value, None, fields, field_problems)
    for _, message in field_problems.items:
        problems.add(None, message)

    characters: dict[str, StoryCharacter] = {}
    for k, entry in enumerate(data.get("characters", [])):
        name = str(entry.get("name", ""))
        if name in characters:
            problems.add(None, f"characters[{k}]: character [{name}] is defined twice")
            continue
        try:
            scale = float(entry.get("scale", 0.9))
        except (TypeError, ValueError):
            problems.add(None, f"characters[{k}]: bad scale {entry.get('scale')!r} for [{name}]")
            continue
        character = _character(name, str(entry.get("image", "")), scale, str(entry.get("description", "")),
                               base_dir, None, f"characters[{k}]: ", problems)
        if character is not None:
            characters[name] = character
    known = {str(entry.get("name", "")): None for entry in data.get("characters", [])}

    panels: list[Panel] = []
    raw_panels = data.get("panels", [])
    if not raw_panels:
        problems.add(None, "empty story: no panels")
    for index, entry in enumerate(raw_panels):
        before = len(problems.items)
        names = [str(n) for n in entry.get("characters", [])]
        for name in names:
            if name not in known:
                problems.add(None, f"panels[{index}]: {_unknown_character(name, known)}")
        regions: dict[str, str] = {}
        for name, region in dict(entry.get("regions", {})).items():
            if name not in names:
                problems.add(None, f"panels[{index}]: [{name}] has a region but is not in the panel")
                continue
            try:
                regions[name] = canonical_region(str(region))
            except ValueError as exc:
                problems.add(None, f"panels[{index}]: {exc} for [{name}]")
        dialogue = []
        for d in entry.get("dialogue", []):
            speaker = str(d.get("speaker", ""))
            if speaker not in known:
                problems.add(None, f"panels[{index}]: {_unknown_character(speaker, known)}")
            dialogue.append(Dialogue(speaker, str(d.get("text", ""))))
        pinned = bool(entry.get("seed_pinned", False))
        try:
            seed = _parse_seed(str(entry["seed"])) if pinned else derive_panel_seed(fields.get("seed", 0), index)
        except (KeyError, ValueError) as exc:
            problems.add(None, f"panels[{index}]: {exc}")
            seed = 0
        if len(problems.items) == before:
            panels.append(Panel(index=index, prompt=str(entry.get("prompt", "")), characters=tuple(names),
                                regions=regions, caption=str(entry.get("caption", "")), dialogue=tuple(dialogue),
                                seed=seed, seed_pinned=pinned, line=int(entry.get("line", 0) or 0)))
    if problems.items:
        raise StoryError(problems.items, source=str(source) if source else None)
    return Story(**fields, characters=characters, panels=tuple(panels), source=Path(source) if source else None)

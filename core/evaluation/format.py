"""The benchmark folder format, in the spirit of the paper's Character350 (35 characters x 10 prompts).

::

    BENCH/
      characters/          one image per character (png, jpg, jpeg, webp)
      characters.json      optional: {"Ruby": {"image": "ruby.png", "description": "a round red creature"}, ...}
                           (a bare string value is the description); without it, each image's file stem is a name
      cases.jsonl          one JSON object per line; blank lines and lines starting with # are ignored
      masks/               optional mask images that cases refer to

A case line::

    {"id": "ruby-beach", "characters": ["Ruby"], "prompt": "[Ruby] on a beach at sunset", "seed": 7}
    {"characters": ["Ruby", "Sky"], "prompt": "[Ruby] and [Sky] share a sandwich", "masks": ["left", "right"]}

- ``characters`` (required): names of the characters in the image, each defined in ``characters/``.
- ``prompt`` (required): the prompt, naming characters with ``[Name]`` tags (case-insensitive, as in the engine).
- ``masks`` (optional): one per character: ``null`` (anywhere), a layout preset (``"left"``, ``"grid:2x2:1"``,
  see :mod:`core.conditioning.masks`), a normalized box ``[x0, y0, x1, y1]``, or a mask image path relative to ``BENCH``.
- ``seed`` (optional, default 0): the generator seed.
- ``id`` (optional, default ``case-NNN`` from the case's position): unique; runs are compared case by case by id.

Errors name the file and line: ``cases.jsonl line 4: unknown character 'Bob' (known: Leaf, Ruby, Sky)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.conditioning.layouts import MaskError, parse_layout
from core.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "BenchmarkFormatError",
    "BenchmarkCharacter",
    "BenchmarkCase",
    "Benchmark",
    "load_benchmark",
    "prompt_for_text_metric",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CASE_KEYS = ("id", "characters", "prompt", "masks", "seed")
_TAG = re.compile(r"\[([^\[\]\n]+)\]")  # the engine's [Name] tag syntax (core.conditioning.prompt.TAG)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # ids become file names


class BenchmarkFormatError(UserError, ValueError):
    """A benchmark folder that cannot be used; the one-line message names the file and line."""


@dataclass(frozen=True)
class BenchmarkCharacter:
    """A character of the benchmark: its name (as tagged in prompts), image file and optional description."""

    name: str
    image_path: Path
    description: str | None = None

    @property
    def words(self) -> str:
        """The words standing for the character in text metrics."""
        return self.description or self.name


@dataclass(frozen=True)
class BenchmarkCase:
    """One line of ``cases.jsonl``. ``masks`` holds layout strings, box tuples, mask image paths or ``None``."""

    id: str
    line: int
    characters: tuple[str, ...]
    prompt: str
    seed: int = 0
    masks: tuple[object, ...] | None = None

    def as_json(self) -> dict:
        """The case as written in ``cases.jsonl`` (mask paths as strings), for manifests and reports."""
        masks = None
        if self.masks is not None:
            masks = [str(mask) if isinstance(mask, Path) else (list(mask) if isinstance(mask, tuple) else mask)
                     for mask in self.masks]
        return {"id": self.id, "characters": list(self.characters), "prompt": self.prompt, "seed": self.seed,
                "masks": masks}


@dataclass
class Benchmark:
    """A loaded benchmark folder."""

    root: Path
    characters: dict[str, BenchmarkCharacter]
    cases: list[BenchmarkCase] = field(default_factory=list)

    def character(self, name: str) -> BenchmarkCharacter:
        return self.characters[name]

    def text_prompt(self, case: BenchmarkCase) -> str:
        """The case's prompt with tags replaced by descriptions, as CLIP-T and ImageReward should read it."""
        return prompt_for_text_metric(case.prompt, {name: self.characters[name].words for name in case.characters})


def prompt_for_text_metric(prompt: str, words: dict[str, str]) -> str:
    """Replace each ``[Name]`` tag by ``words[Name]`` (names matched case-insensitively; unknown tags keep their
    bare name), so text metrics read ``a round red creature on a beach`` rather than ``[Ruby] on a beach``."""
    lowered = {name.lower(): text for name, text in words.items()}
    return _TAG.sub(lambda match: lowered.get(match.group(1).strip().lower(), match.group(1).strip()), prompt)


def _check_image(path: Path, what: str) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BenchmarkFormatError(f"{what} {path} is not a readable image ({error})".splitlines()[0]) from None


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _load_characters(root: Path) -> dict[str, BenchmarkCharacter]:
    folder = root / "characters"
    if not folder.is_dir():
        raise BenchmarkFormatError(f"{root}: no characters/ folder (one image per character)")
    index = root / "characters.json"
    characters: dict[str, BenchmarkCharacter] = {}
    if index.is_file():
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"characters.json line {error.lineno}: invalid JSON ({error.msg})") from None
        if not isinstance(entries, dict) or not entries:
            raise BenchmarkFormatError("characters.json must be a non-empty object mapping names to entries")
        for name, entry in entries.items():
            if isinstance(entry, str):
                entry = {"description": entry}
            if not isinstance(entry, dict) or set(entry) - {"image", "description"}:
                raise BenchmarkFormatError(
                    f"characters.json: entry {name!r} must be a description or an object with image and description"
                )
            if not name.strip() or "[" in name or "]" in name:
                raise BenchmarkFormatError(f"characters.json: bad character name {name!r} (no brackets, not empty)")
            image = folder / entry["image"] if "image" in entry else _find_image(folder, name)
            if image is None or not image.is_file():
                raise BenchmarkFormatError(
                    f"characters.json: no image for {name!r} in characters/ "
                    f"({entry.get('image') or name + '.png/.jpg/.webp'})"
                )
            description = entry.get("description")
            if description is not None and not isinstance(description, str):
                raise BenchmarkFormatError(f"characters.json: description of {name!r} must be a string")
            characters[name] = BenchmarkCharacter(name, image, description or None)
    else:
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                characters[image.stem] = BenchmarkCharacter(image.stem, image)
    if not characters:
        raise BenchmarkFormatError(f"{folder}: no character images ({', '.join(IMAGE_SUFFIXES)})")
    lowered: dict[str, str] = {}
    for name, character in characters.items():
        if name.lower() in lowered:
            raise BenchmarkFormatError(f"characters {lowered[name.lower()]!r} and {name!r} differ only in case")
        lowered[name.lower()] = name
        _check_image(character.image_path, f"character {name!r}:")
    return characters


def _parse_mask(root: Path, value: object, where: str) -> object:
    if value is None:
        return None
    if isinstance(value, str):
        if Path(value).suffix.lower() in IMAGE_SUFFIXES:
            path = (root / value).resolve()
            if not path.is_file():
                raise BenchmarkFormatError(f"{where}: mask image {value} not found")
            _check_image(path, f"{where}: mask")
            return path
        try:
            parse_layout(value)
        except MaskError as error:
            raise BenchmarkFormatError(f"{where}: {error}") from None
        return value
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        x0, y0, x1, y1 = (float(v) for v in value)
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise BenchmarkFormatError(f"{where}: box {value} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return (x0, y0, x1, y1)
    raise BenchmarkFormatError(f"{where}: a mask is null, a layout name, a box [x0, y0, x1, y1] or an image path")


def _parse_case(root: Path, row: object, line: int, number: int, characters: dict) -> BenchmarkCase:
    where = f"cases.jsonl line {line}"
    if not isinstance(row, dict):
        raise BenchmarkFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(CASE_KEYS))
    if unknown:
        raise BenchmarkFormatError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(CASE_KEYS)})")
    names = row.get("characters")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise BenchmarkFormatError(f"{where}: 'characters' must be a non-empty list of names")
    by_lower = {name.lower(): name for name in characters}
    resolved = []
    for name in names:
        if name.strip().lower() not in by_lower:
            raise BenchmarkFormatError(f"{where}: unknown character {name!r} (known: {', '.join(sorted(characters))})")
        resolved.append(by_lower[name.strip().lower()])
    if len(set(resolved)) != len(resolved):
        raise BenchmarkFormatError(f"{where}: a character is listed twice in {names}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BenchmarkFormatError(f"{where}: 'prompt' must be a non-empty string")
    in_case = {name.lower() for name in resolved}
    for match in _TAG.finditer(prompt):
        tag = match.group(1).strip()
        if tag.lower() not in in_case:
            raise BenchmarkFormatError(f"{where}: the prompt names [{tag}], which is not in this case's characters")
    seed = row.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise BenchmarkFormatError(f"{where}: 'seed' must be a non-negative integer, got {seed!r}")
    masks = row.get("masks")
    if masks is not None:
        if not isinstance(masks, list) or len(masks) != len(resolved):
            raise BenchmarkFormatError(f"{where}: 'masks' must be a list with one entry per character ({len(resolved)})")
        masks = tuple(_parse_mask(root, mask, f"{where}, mask {i + 1}") for i, mask in enumerate(masks))
    case_id = row.get("id", f"case-{number:03d}")
    if not isinstance(case_id, str) or not _ID.match(case_id):
        raise BenchmarkFormatError(f"{where}: 'id' must be 1-64 letters, digits, '.', '_' or '-', got {case_id!r}")
    return BenchmarkCase(case_id, line, tuple(resolved), prompt, seed, masks)


def load_benchmark(bench_dir: str | Path) -> Benchmark:
    """Load and check a benchmark folder; raises :class:`BenchmarkFormatError` with the file and line at fault."""
    root = Path(bench_dir).expanduser()
    if not root.is_dir():
        raise BenchmarkFormatError(f"benchmark folder not found: {root}")
    characters = _load_characters(root)
    cases_file = root / "cases.jsonl"
    if not cases_file.is_file():
        raise BenchmarkFormatError(f"{root}: no cases.jsonl (one JSON case per line)")
    cases: list[BenchmarkCase] = []
    ids: dict[str, int] = {}
    for line_number, text in enumerate(cases_file.read_text(encoding="utf-8").splitlines(), start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"cases.jsonl line {line_number}: invalid JSON ({error.msg})") from None
        case = _parse_case(root, row, line_number, len(cases) + 1, characters)
        if case.id in ids:
            raise BenchmarkFormatError(f"cases.jsonl line {line_number}: id {case.id!r} already used on line {ids[case.id]}")
        ids[case.id] = line_number
        cases.append(case)
    if not cases:
        raise BenchmarkFormatError(f"{cases_file}: no cases")
    return Benchmark(root, characters, cases)

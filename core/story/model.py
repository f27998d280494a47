"""The story model: a story, its characters and panels, as the parsers build them (`core.story.parse_text`,
`core.story.parse_json`) and every later step reads them.

A parsed story saves as JSON (`Story.save_json`); `core.story.load.load_story` reads either form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.story.geometry import WEBTOON_SLICE, WEBTOON_WIDTH, panel_sizes
from core.story.manifest import write_json_atomic

FORMAT_VERSION = 1

NO_CHARACTER_TAG = "NC"
CHARACTER_SCALE = 0.9  # a character's strength when its story gives none (the released default)
# [Name] or [Name@region]; a region may hold commas and dots ("box:0,0,0.5,1") but no "]".
TAG_RE = re.compile(r"\[([^\[\]@]*?)(?:@([^\[\]]*))?\]")


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
    scale: float = CHARACTER_SCALE
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
        path = Path(path)
        write_json_atomic(self.to_dict(relative_to=path.parent), path)
        return path

    def engine_prompt(self, panel: Panel) -> str:
        """The prompt sent to the engine: `[Name@region]` becomes `[Name]`, `[NC]` goes, the style is appended."""
        return engine_prompt(panel.prompt, self.style)

    def panel_size(self, panel: Panel) -> tuple[int, int]:
        """``(width, height)`` the panel is rendered at: its page cell's shape at about ``size``'s pixel count
        (multiples of 16), see `core.story.geometry.panel_sizes`."""
        return panel_sizes(self).get(panel.index, (self.width, self.height))

    def with_panel_seed(self, index: int, seed: int) -> Story:
        """A copy with panel `index` pinned to `seed` (e.g. "regenerate this panel with a new seed")."""
        panels = list(self.panels)
        panels[index] = dataclasses.replace(panels[index], seed=int(seed), seed_pinned=True)
        return dataclasses.replace(self, panels=tuple(panels))


def derive_panel_seed(story_seed: int, index: int) -> int:
    """The seed of panel `index` (0-based) of a story with `story_seed`: stable across runs, machines and ranks."""
    digest = hashlib.sha256(f"instantcharacter-story:{int(story_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def engine_prompt(prompt: str, style: str) -> str:
    """A panel's prompt as the engine gets it: `[Name@region]` becomes `[Name]`, `[NC]` goes, `style` is appended."""
    prompt = TAG_RE.sub(lambda m: "" if m.group(1).strip() == NO_CHARACTER_TAG else f"[{m.group(1).strip()}]",
                        prompt)
    prompt = re.sub(r"\s+", " ", prompt).strip().strip(",").strip()
    if style:
        prompt = f"{prompt}, {style}" if prompt else style
    return prompt

"""The story's JSON form (as `Story.to_dict` writes it), parsed into a `Story` with the checks of the text form.

The header goes through the validator the text form uses too (`core.story.parse_header`); a value of the wrong
type is a problem, never a TypeError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.conditioning.control import DEFAULT_SCALE
from core.io.path_policy import UNRESTRICTED, PathPolicy
from core.limits import (
    MAX_BUBBLES_PER_PANEL,
    MAX_CAPTION_CHARS,
    MAX_CHARACTERS,
    MAX_DESCRIPTION_CHARS,
    MAX_DIALOGUE_CHARS,
    MAX_NAME_CHARS,
    MAX_PANELS,
    MAX_PROMPT_CHARS,
    MAX_SCALE,
    MAX_STORY_BYTES,
    LimitError,
    check_int,
    check_number,
    check_seed,
    short_repr,
)
from core.story.model import CHARACTER_SCALE, Dialogue, Panel, Story, StoryCharacter, StoryError, derive_panel_seed
from core.story.parse_checks import (
    MAX_PATH_CHARS,
    Problems,
    check_character,
    check_panel_texts,
    clip,
    font_file,
    panel_control,
    panel_height,
    required_text,
    unknown_character,
)
from core.story.parse_header import HEADER, header_problems, header_value, read_header_value
from core.story.regions import canonical_region


def story_from_dict(data: dict[str, Any], base_dir: str | os.PathLike = ".",
                    source: str | os.PathLike | None = None, paths: PathPolicy = UNRESTRICTED) -> Story:
    """Build a `Story` from its JSON form (as `Story.to_dict` writes it), validating it like the text form:
    the same limits, image paths through `paths`, and a problem (never a TypeError) for a value of the wrong type.
    """
    if not isinstance(data, dict) or data.get("format") != "instantcharacter-story":
        raise StoryError("not a story JSON: expected an object with \"format\": \"instantcharacter-story\"",
                         source=str(source) if source else None)
    return Problems.run(lambda problems: _story_from_dict(data, Path(base_dir), source, paths, problems), source,
                        sort=False)



def _check(problems: Problems, where: str, check) -> Any:
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
                     problems: Problems) -> Story:
    fields: dict[str, Any] = {}
    bad_keys: set[str] = set()
    for header in HEADER:
        if header.json_key in data and not read_header_value(header, data[header.json_key], fields, problems):
            bad_keys.add(header.key)
    if data.get("font") is not None:
        font = _check(problems, "", lambda: required_text(data.get("font"), "font", MAX_PATH_CHARS))
        if font:
            font_path = font_file(font, base_dir, None, "", problems, paths)
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
        name = _check(problems, where, lambda: required_text(entry.get("name"), "name", MAX_NAME_CHARS))
        image = _check(problems, where, lambda: required_text(entry.get("image"), "image", MAX_PATH_CHARS))
        scale = _check(problems, where,
                       lambda: check_number(entry.get("scale", CHARACTER_SCALE), "scale", 0.0, MAX_SCALE))
        description = _check(problems, where, lambda: required_text(entry.get("description"), "description",
                                                                    MAX_DESCRIPTION_CHARS))
        if name is None:
            continue
        if name in known:
            problems.add(None, f"{where}character [{name}] is defined twice")
            continue
        known[name] = None
        if image is None or scale is None or description is None:
            continue
        character = check_character(name, image, scale, description, base_dir, None, where, problems, paths)
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
    header_problems(fields, {}, bad_keys, len(raw_panels or []), [p.height for p in panels], problems)
    problems.raise_if_any(source, sort=False)
    return Story(**fields, characters=characters, panels=tuple(panels), source=Path(source) if source else None)


def _panel_from_dict(index: int, raw: Any, known: dict[str, None], fields: dict[str, Any],
                     problems: Problems, base_dir: Path = Path("."), paths: PathPolicy = UNRESTRICTED
                     ) -> Panel | None:
    where = f"panels[{index}]: "
    before = len(problems.items)
    entry = _check(problems, where, lambda: _object(raw, "a panel"))
    if entry is None:
        return None
    prompt = _check(problems, where, lambda: required_text(entry.get("prompt"), "prompt", MAX_PROMPT_CHARS))
    caption = _check(problems, where, lambda: required_text(entry.get("caption"), "caption", MAX_CAPTION_CHARS))
    if prompt is not None and caption is not None:
        check_panel_texts(prompt, caption, header_value(fields, "style"), None, where, problems)
    names = _check(problems, where, lambda: _list(entry.get("characters"), "characters", MAX_CHARACTERS)) or []
    for name in names:
        if not isinstance(name, str):
            problems.add(None, f"{where}a character name must be text, got {type(name).__name__}")
        elif name not in known:
            problems.add(None, f"{where}{unknown_character(name, known)}")
    regions: dict[str, str] = {}
    raw_regions = _check(problems, where, lambda: _object(entry.get("regions", {}), "regions")) or {}
    if len(raw_regions) > MAX_CHARACTERS:
        problems.add(None, f"{where}regions has {len(raw_regions):,} entries: the limit is {MAX_CHARACTERS}")
        raw_regions = {}
    for name, region in raw_regions.items():
        if name not in names:
            problems.add(None, f"{where}[{clip(str(name), 40)}] has a region but is not in the panel")
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
                         lambda: required_text(bubble.get("speaker"), "speaker", MAX_NAME_CHARS))
        text = _check(problems, f"{where}dialogue[{d}]: ",
                      lambda: required_text(bubble.get("text"), "the speech bubble", MAX_DIALOGUE_CHARS))
        if speaker is not None and speaker not in known:
            problems.add(None, f"{where}{unknown_character(speaker, known)}")
        if speaker is not None and text is not None:
            dialogue.append(Dialogue(speaker, text))
    pinned = entry.get("seed_pinned", False)
    if not isinstance(pinned, bool):
        problems.add(None, f"{where}seed_pinned must be true or false, got {short_repr(pinned)}")
        pinned = False
    if pinned:
        seed = _check(problems, where, lambda: check_seed(entry.get("seed")))
    else:
        seed = derive_panel_seed(header_value(fields, "seed"), index)
    line = _check(problems, where, lambda: check_int(entry.get("line", 0) or 0, "line", 0, MAX_STORY_BYTES))
    height = None
    if entry.get("height") is not None:
        height = _check(problems, where, lambda: panel_height(entry.get("height"), header_value(fields, "layout")))
    controls = []
    for c, item in enumerate(_check(problems, where, lambda: _list(entry.get("controls"), "controls", 4)) or []):
        spec = _check(problems, f"{where}controls[{c}]: ", lambda item=item: _object(item, "a control"))
        if spec is None:
            continue
        kind, image = spec.get("kind"), spec.get("image")
        if not isinstance(kind, str) or not isinstance(image, str) or not image.strip():
            problems.add(None, f"{where}controls[{c}]: needs a kind and an image path")
            continue
        control = panel_control(f"{kind} {image}", base_dir, paths, None, f"{where}controls[{c}]: ", problems,
                                len(controls), scale=spec.get("scale", DEFAULT_SCALE))
        if control is not None:
            controls.append(control)
    if len(problems.items) > before:
        return None
    return Panel(index=index, prompt=prompt, characters=tuple(names), regions=regions, caption=caption,
                 dialogue=tuple(dialogue), seed=seed, seed_pinned=pinned, line=line, height=height,
                 controls=tuple(controls))

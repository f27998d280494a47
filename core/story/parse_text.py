"""The story's text form: a plain-text file a person writes by hand, parsed into a `Story`.

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

The header goes through the validator the JSON form uses too (`core.story.parse_header`).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from core.io.path_policy import UNRESTRICTED, PathPolicy
from core.limits import MAX_BUBBLES_PER_PANEL, MAX_CHARACTERS, MAX_DIALOGUE_CHARS, MAX_PANELS, MAX_STORY_BYTES
from core.story.model import (
    CHARACTER_SCALE,
    NO_CHARACTER_TAG,
    TAG_RE,
    Dialogue,
    Panel,
    Story,
    StoryCharacter,
    StoryError,
    derive_panel_seed,
)
from core.story.parse_checks import (
    Problems,
    check_character,
    check_panel_texts,
    clip,
    font_file,
    panel_control,
    panel_height,
    parse_float,
    parse_seed,
    set_region,
    unknown_character,
)
from core.story.parse_header import HEADER_BY_KEY, HEADER_KEYS, header_problems, header_value, read_header_value

_HEADER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_ ]*?)\s*:\s*(.*)$")
_CHARACTER_RE = re.compile(r"^character\s+(\S+?)\s*:\s*(.*)$")
_PANEL_OPTION_RE = re.compile(r"^(seed|caption|height|control)\s*:\s*(.*)$")


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


def _split_caption(text: str) -> tuple[str, str]:
    """Split "prompt # caption" at the first unescaped '#'; '\\#' stays a literal '#'."""
    match = re.search(r"(?<!\\)#", text)
    if match is None:
        return text.replace("\\#", "#").strip(), ""
    prompt, caption = text[: match.start()], text[match.end():]
    return prompt.replace("\\#", "#").strip(), caption.replace("\\#", "#").strip()


def parse_story(text: str, base_dir: str | os.PathLike = ".", source: str | os.PathLike | None = None,
                paths: PathPolicy = UNRESTRICTED) -> Story:
    """Parse the text format. Image paths are relative to `base_dir` and must be allowed by `paths`.

    Raises `StoryError` listing every problem (the first MAX_PROBLEMS); the text size is checked first.
    """
    check_story_text(text)
    return Problems.run(lambda problems: _parse_story(text, Path(base_dir), source, paths, problems), source,
                        sort=True)


def _parse_story(text: str, base_dir: Path, source, paths: PathPolicy, problems: Problems) -> Story:
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
                    char_specs[current_char][2] = parse_float(match.group(2), "scale")
                except ValueError:
                    problems.add(number, f"bad scale '{clip(match.group(2))}' for [{current_char}]: "
                                         f"expected a number")
            elif key == "description":
                char_specs[current_char][3] = match.group(2).strip()
            else:
                problems.add(number, f"expected 'scale: NUMBER' or 'description: TEXT' under "
                                     f"character [{current_char}], got '{clip(stripped)}'")
            continue
        current_char = None
        match = _CHARACTER_RE.match(stripped)
        if match:
            name, image = match.group(1), match.group(2).strip()
            if name in char_specs or name in over_limit:
                first = char_specs[name][0] if name in char_specs else None
                problems.add(number, f"character [{clip(name, 40)}] is defined twice"
                                     + (f" (first on line {first})" if first else ""))
                continue
            if len(char_specs) >= MAX_CHARACTERS:
                problems.add(number, f"character [{clip(name, 40)}] is number {len(char_specs) + len(over_limit) + 1}"
                                     f": a story has at most {MAX_CHARACTERS} characters")
                over_limit.add(name)
                continue
            char_specs[name] = [number, image, CHARACTER_SCALE, ""]
            current_char = name
            continue
        match = _HEADER_RE.match(stripped)
        if not match:
            problems.add(number, f"expected 'key: value' in the header, got '{clip(stripped)}' "
                                 f"(panels start after a line '---')")
            continue
        key = match.group(1).strip().lower().replace(" ", "_")
        if key not in HEADER_KEYS:
            written = match.group(1).strip()
            word, _, name = written.partition(" ")
            if name and " " not in name and difflib.get_close_matches(word.lower(), ["character"], cutoff=0.7):
                # a misspelt 'character Name: image': its name is still known, so its [Name] tags add no errors
                problems.add(number, f"unknown header key '{clip(written, 40)}': did you mean "
                                     f"'character {clip(name, 40)}: {clip(match.group(2).strip(), 40)}'?")
                over_limit.add(name)
            else:
                problems.add(number, f"unknown header key '{clip(written, 40)}': expected one of "
                                     f"{', '.join(HEADER_KEYS)} or 'character Name: image' (panels start after '---')")
            broken_line = True
            continue
        header_lines[key] = number
        if key == "font":
            font_spec = (number, match.group(2).strip())
            continue
        if not read_header_value(HEADER_BY_KEY[key], match.group(2).strip(), fields, problems, number, text=True):
            bad_keys.add(key)

    characters: dict[str, StoryCharacter] = {}
    for name, (line, image, scale, description) in char_specs.items():
        character = check_character(name, image, scale, description, base_dir, line, "", problems, paths)
        if character is not None:
            characters[name] = character
    # unknown-name checks use what was written, even if broken or over the limit
    known = {name: None for name in [*char_specs, *over_limit]}
    if font_spec is not None:
        font = font_file(font_spec[1], base_dir, font_spec[0], "", problems, paths)
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
                    problems.add(number, f"bad dialogue '{clip(stripped)}': expected '> Name: text'")
                elif who not in known:
                    problems.add(number, unknown_character(who, known))
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
                    problems.add(number, f"bad region '{clip(stripped)}': expected '@ Name: left' or "
                                         f"'@ Name: box:x0,y0,x1,y1'")
                elif who not in known:
                    problems.add(number, unknown_character(who, known))
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
                    current["seed"] = parse_seed(value)
                except ValueError as exc:
                    problems.add(number, str(exc))
            elif key == "height":
                try:
                    current["height"] = panel_height(value, header_value(fields, "layout"))
                except ValueError as exc:
                    problems.add(number, str(exc))
            elif key == "control":
                control = panel_control(value, base_dir, paths, number, "", problems, len(current["controls"]))
                if control is not None:
                    current["controls"].append(control)
            elif current["caption"]:
                problems.add(number, "this panel already has a caption (after '#')")
            else:
                current["caption"] = value
            continue
        if raw[:1].isspace() and current is not None:
            problems.add(number, f"indented line '{clip(stripped)}' in a panel: expected '> Name: text', "
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
    story_seed = header_value(fields, "seed")
    for index, spec in enumerate(panels):
        panel = _build_panel(index, spec, known, story_seed, header_value(fields, "style"), problems)
        if panel is not None:
            parsed.append(panel)
    header_problems(fields, header_lines, bad_keys, len(panels), [p["height"] for p in panels], problems)

    problems.raise_if_any(source, sort=True)
    return Story(**fields, characters=characters, panels=tuple(parsed), source=Path(source) if source else None)


def _build_panel(index: int, spec: dict[str, Any], known: dict[str, Any], story_seed: int, style: str,
                 problems: Problems) -> Panel | None:
    line = spec["line"]
    if not check_panel_texts(spec["prompt"], spec["caption"], style, line, "", problems):
        return None
    names: list[str] = []
    regions: dict[str, str] = {}
    no_character = False
    ok = True
    for match in TAG_RE.finditer(spec["prompt"]):
        name, region = match.group(1).strip(), match.group(2)
        if name == NO_CHARACTER_TAG:
            no_character = True
            if region is not None:
                problems.add(line, "[NC] takes no region")
                ok = False
            continue
        if name not in known:
            problems.add(line, unknown_character(name, known))
            ok = False
            continue
        if name not in names:
            names.append(name)
        if region is not None:
            ok &= set_region(regions, name, region, line, problems)
    for region_line, name, region in spec["pending_regions"]:
        if name not in names:
            problems.add(region_line, f"[{name}] has a region but is not in this panel's prompt "
                                      f"(line {line})")
            ok = False
            continue
        ok &= set_region(regions, name, region, region_line, problems)
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

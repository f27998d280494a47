"""A story's header (title, size, seed, layout, page...): one validator for the text form and the JSON form.

Each key is checked by one rule whatever form wrote it (`HEADER`); the text form first reads its words into the
value the JSON form holds (`HeaderKey.read_text`). A key left out takes the `Story` field's default, stated once in
`core.story.model.Story`. `header_problems` then checks what depends on several keys (page pixels, margins, the
number of pages, a webtoon strip's height).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.limits import (
    MAX_CAPTION_CHARS,
    MAX_DPI,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_STEPS,
    MAX_TRUE_CFG,
    MIN_DPI,
    LimitError,
    check_int,
    check_number,
    check_seed,
    check_size,
    read_size,
    short_repr,
)
from core.story.geometry import (
    WEBTOON,
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
from core.story.model import Story
from core.story.parse_checks import (
    Problems,
    parse_float,
    parse_int,
    required_text,
)
from core.story.regions import format_number

# Every header field's default, as `Story` states it.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Story)
                            if f.default is not dataclasses.MISSING}


def _size(value: Any, name: str) -> tuple[int, int]:
    """``[WIDTH, HEIGHT]`` checked by `core.limits.check_size` (the one size rule)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be [WIDTH, HEIGHT], got {short_repr(value)}")
    try:
        return check_size(*value)
    except LimitError as exc:
        raise LimitError(f"bad {name} '{short_repr(value[0])}x{short_repr(value[1])}': {exc}") from None


def _webtoon(value: Any, name: str) -> tuple[int, int]:
    """``[WIDTH, SLICE]`` in pixels, checked as `parse_webtoon_spec` checks ``WIDTHxSLICE``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value)):
        raise ValueError(f"{name} must be [WIDTH, SLICE] in pixels, got {short_repr(value)}")
    return parse_webtoon_spec(f"{value[0]}x{value[1]}")


def _spec(parse: Callable[[str], Any]) -> Callable[[Any, str], Any]:
    """A rule for a key written as words (``layout: grid 2x3``): text of at most 80 characters, then `parse`."""
    return lambda value, name: parse(required_text(value, name, 80))


@dataclass(frozen=True)
class HeaderKey:
    """One header key: `key` as the text form writes it, `json_key` as the JSON form does, the `Story` `fields` it
    sets, its `check` (a value as JSON holds it and the name the story used -> the field values) and `read_text`,
    which reads the text form's words into such a value (raising ValueError with a message when it cannot)."""

    key: str
    json_key: str
    fields: tuple[str, ...]
    check: Callable[[Any, str], Any]
    read_text: Callable[[str, str], Any] = lambda text, name: text  # noqa: E731 - words as they are

    def read(self, value: Any, name: str) -> dict[str, Any]:
        """The `Story` fields of ``value`` (a JSON value); raises ValueError (a LimitError included)."""
        checked = self.check(value, name)
        return dict(zip(self.fields, checked if len(self.fields) > 1 else (checked,), strict=True))


def _words(text: str, name: str) -> str:
    return text[:80]


HEADER: tuple[HeaderKey, ...] = (
    HeaderKey("title", "title", ("title",), lambda v, name: required_text(v, name, MAX_CAPTION_CHARS)),
    HeaderKey("style", "style", ("style",), lambda v, name: required_text(v, name, MAX_PROMPT_CHARS)),
    HeaderKey("negative", "negative", ("negative",), lambda v, name: required_text(v, name, MAX_PROMPT_CHARS)),
    HeaderKey("size", "size", ("width", "height"), _size, lambda text, name: list(read_size(text))),
    HeaderKey("seed", "seed", ("seed",), check_seed, parse_int),
    HeaderKey("layout", "layout", ("layout",), _spec(parse_layout_spec), _words),
    HeaderKey("page", "page", ("page",), _spec(lambda text: parse_page_spec(text).spec), _words),
    HeaderKey("dpi", "dpi", ("dpi",), lambda v, name: check_int(v, name, MIN_DPI, MAX_DPI), parse_int),
    HeaderKey("margin", "margin_mm", ("margin_mm",), lambda v, name: check_number(v, name, 0, 2000),
              lambda text, name: parse_length_mm(text[:80])),
    HeaderKey("gutter", "gutter_mm", ("gutter_mm",), lambda v, name: check_number(v, name, 0, 2000),
              lambda text, name: parse_length_mm(text[:80])),
    HeaderKey("steps", "steps", ("steps",), lambda v, name: check_int(v, name, 1, MAX_STEPS), parse_int),
    HeaderKey("guidance", "guidance", ("guidance",), lambda v, name: check_number(v, name, 0.0, MAX_GUIDANCE),
              parse_float),
    HeaderKey("true_cfg", "true_cfg", ("true_cfg",), lambda v, name: check_number(v, name, 1.0, MAX_TRUE_CFG),
              parse_float),
    HeaderKey("reading", "reading", ("reading",), _spec(parse_reading), _words),
    HeaderKey("bubbles", "bubbles", ("bubbles",), _spec(parse_bubbles), _words),
    HeaderKey("webtoon", "webtoon", ("webtoon_width", "webtoon_slice"), _webtoon,
              lambda text, name: parse_webtoon_spec(text[:80])),
)
HEADER_BY_KEY = {h.key: h for h in HEADER}
# The keys of the text form, in the order the format describes them ("font" names a file: each parser reads it).
HEADER_KEYS = (*HEADER_BY_KEY, "font")


def read_header_value(header: HeaderKey, value: Any, fields: dict[str, Any], problems: Problems,
                      line: int | None = None, *, text: bool = False) -> bool:
    """Check one header value (the text form's words with ``text``, else a JSON value) and put its `Story` fields
    into ``fields``; False, with the problem added at ``line``, when it is bad."""
    name = header.key if text else header.json_key
    try:
        fields.update(header.read(header.read_text(value, name) if text else value, name))
    except ValueError as exc:
        problems.add(line, str(exc))
        return False
    return True


def header_problems(fields: dict[str, Any], lines: dict[str, int | None], bad_keys: set[str], panel_count: int,
                    heights: list[int | None], problems: Problems) -> None:
    """The limits that depend on several header keys, checked when those keys are good (``bad_keys``: the text
    form's keys that were not). ``lines``: the line of each key (the text form)."""
    if not bad_keys & {"page", "dpi", "margin", "gutter", "layout", "seed"}:
        _page_problems(fields, lines, panel_count, problems)
    if fields.get("layout") == WEBTOON and not bad_keys & {"dpi", "margin", "gutter", "webtoon", "size"}:
        _webtoon_problems(fields, heights, lines.get("layout"), problems)


def header_value(fields: dict[str, Any], name: str) -> Any:
    """The `Story` field ``name`` as read so far into ``fields``, else its default."""
    return fields.get(name, DEFAULTS[name])


def _webtoon_problems(fields: dict[str, Any], heights: list[int | None], line: int | None,
                      problems: Problems) -> None:
    """A webtoon strip over the pixel limit, as a problem on the layout line."""
    value = {name: header_value(fields, name) for name in DEFAULTS}
    try:
        webtoon_cells(value["webtoon_width"], value["height"] / value["width"], tuple(heights), value["dpi"],
                      value["margin_mm"], value["gutter_mm"], bool(value["title"]))
    except LimitError as exc:
        problems.add(line, str(exc))


def _page_problems(fields: dict[str, Any], lines: dict[str, int | None], panel_count: int,
                   problems: Problems) -> None:
    """Limits that depend on several header values: page pixels at the dpi, margins, the number of pages."""
    page = parse_page_spec(header_value(fields, "page"))
    dpi = header_value(fields, "dpi")
    try:
        check_page_limits(page, dpi)
    except LimitError as exc:
        problems.add(lines.get("dpi") or lines.get("page"), str(exc))
        return
    room = min(page.width_mm, page.height_mm) / 4
    for key in ("margin", "gutter"):
        value = header_value(fields, f"{key}_mm")
        if value > room:
            problems.add(lines.get(key), f"{key} {format_number(value)} mm is more than a quarter of the "
                                         f"{page.spec} page's shorter side: the limit is {room:g} mm")
    if panel_count:
        layout = header_value(fields, "layout")
        try:
            check_page_limits(page, dpi, count_pages(layout, page.spec, header_value(fields, "seed"), panel_count))
        except LimitError as exc:
            problems.add(lines.get("layout"), f"{exc} with layout {layout}")

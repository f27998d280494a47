"""Where a character stands in a panel: region specs, as a story writes them and as the engine takes them.

A region is a preset name of the engine's layouts (``left``, see `core.conditioning.layouts`), ``box:x0,y0,x1,y1``
with normalized coordinates, or ``grid:RxC:N`` (cell N, 1-based, row-major). Bubble placement uses the boxes; the
engine receives the preset string itself.
"""

from __future__ import annotations

import re

from core.conditioning.layouts import GRID_PATTERN, NAMED_LAYOUTS, parse_layout

REGION_PRESETS = NAMED_LAYOUTS


def format_number(value: float) -> str:
    """A number as a story writes it back (six significant digits)."""
    return f"{value:.6g}"


def region_box(spec: str) -> tuple[float, float, float, float]:
    """The normalized box (x0, y0, x1, y1) of a region spec; raises ValueError with a readable reason."""
    return parse_layout(spec)


def canonical_region(spec: str) -> str:
    """Validate a region spec and write it one way (so equal regions hash equal)."""
    spec = re.sub(r"\s+", "", spec).lower()
    box = region_box(spec)
    if spec.startswith("box:"):
        return "box:" + ",".join(format_number(v) for v in box)
    match = GRID_PATTERN.match(spec)
    if match:
        return "grid:{}x{}:{}".format(*(int(v) for v in match.groups()))
    return spec


def engine_mask(spec: str | None) -> str | tuple[float, float, float, float] | None:
    """What `core.conditioning.character.Character(mask=...)` receives: preset strings pass through, boxes become
    tuples."""
    if spec is None:
        return None
    if spec.startswith("box:"):
        return region_box(spec)
    return spec

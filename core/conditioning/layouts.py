"""Named regions of an image as normalized boxes (x0, y0, x1, y1), origin top-left.

Torch-free, so parsers (stories, benchmarks) can check layouts without loading the engine. Layouts:
``whole``, ``left``, ``right``, ``top``, ``bottom``, ``left-third``, ``center-third``, ``right-third``,
``grid:RxC:N`` (cell N, 1-based, row-major, of an R-row C-column grid) and ``box:x0,y0,x1,y1``.
"""

from __future__ import annotations

import re
from core.errors import UserError

NAMED_LAYOUTS = {
    "whole": (0.0, 0.0, 1.0, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "left-third": (0.0, 0.0, 1 / 3, 1.0),
    "center-third": (1 / 3, 0.0, 2 / 3, 1.0),
    "right-third": (2 / 3, 0.0, 1.0, 1.0),
}
GRID_PATTERN = re.compile(r"^grid:(\d+)x(\d+):(\d+)$")


class MaskError(UserError, ValueError):
    """A mask that cannot be used; the message says why in one line."""


def parse_box(values) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise MaskError(f"a box needs four numbers x0,y0,x1,y1, got {values!r}") from None
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise MaskError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside [0, 1]: use fractions of the image size")
    if x1 <= x0 or y1 <= y0:
        raise MaskError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is empty: x1 must exceed x0 and y1 exceed y0")
    return x0, y0, x1, y1


def parse_layout(spec: str) -> tuple[float, float, float, float]:
    """The normalized box of a layout preset string (see module docstring)."""
    spec = spec.strip().lower()
    if spec in NAMED_LAYOUTS:
        return NAMED_LAYOUTS[spec]
    if spec.startswith("box:"):
        return parse_box(spec[4:].split(","))
    if m := GRID_PATTERN.match(spec):
        rows, cols, n = (int(g) for g in m.groups())
        if rows < 1 or cols < 1 or not 1 <= n <= rows * cols:
            raise MaskError(f"grid cell {spec!r} does not exist: N must be between 1 and {rows * cols}")
        r, c = divmod(n - 1, cols)
        return c / cols, r / rows, (c + 1) / cols, (r + 1) / rows
    raise MaskError(
        f"unknown layout {spec!r}: use one of {', '.join(NAMED_LAYOUTS)}, grid:RxC:N or box:x0,y0,x1,y1"
    )

"""Where each character acts: one rule set for the engine and the trainer (paper Eq. 3).

:func:`route_characters` turns the characters' routing masks into weights over FLUX's packed latent tokens:

* ``None``: the whole image. Its weights are ``None`` (the attention adds the character everywhere, exactly as
  an all-ones mask would, without the multiply). Exception: when *several* characters all have ``None``, they get
  the automatic layout: equal vertical stripes, left to right in the order the prompt names them (characters it
  never names follow, in their given order).
* a box or layout preset (a :class:`~core.conditioning.masks.RoutingMask` with ``box``): each token's exact share of its cell
  that the box covers (never rasterized).
* an image mask (soft values kept): the area average of the mask, stretched over the image, on each cell.

The conditions are applied in :attr:`Routing.order`. A ``window`` (normalized ``x0, y0, x1, y1``) routes on that
part of the image only, as the trainer sees a centre crop of its target: boxes stay exact, image masks are area
averaged over the window. The automatic layout is always in the routed image's own coordinates.

:func:`tag_weights` gives a character's weights over the T5 tokens of its ``[Name]`` tag (paper Eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from core.conditioning.masks import RoutingMask, auto_layout
from core.conditioning.prompt import token_indices

WHOLE = (0.0, 0.0, 1.0, 1.0)
AUTO_LAYOUT_NOTE = "no masks given: characters placed left to right in the order the prompt names them"


@dataclass
class Routing:
    """Where the characters act on a token grid.

    Attributes:
        order: indices of the given characters, in the order their conditions are applied.
        weights: per entry of ``order``, (N,) float32 weights over the image tokens; ``None``: the whole image.
        notes: messages for the user (automatic layout, empty masks).
    """

    order: list[int]
    weights: list[torch.Tensor | None]
    notes: list[str] = field(default_factory=list)


def token_grid(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    """(rows, cols) of FLUX's packed latent tokens for a ``height`` x ``width`` pixel image."""
    return height // (vae_scale_factor * 2), width // (vae_scale_factor * 2)


def grid_weights(mask: RoutingMask, rows: int, cols: int, window: Sequence[float] | None = None) -> torch.Tensor:
    """(rows*cols,) weights of ``mask`` on the token grid of ``window`` (normalized; ``None``: the whole image)."""
    if window is None or tuple(window) == WHOLE:
        return mask.weights(rows, cols)
    x0, y0, x1, y1 = window
    if mask.box is not None:
        bx0, by0, bx1, by1 = mask.box
        w, h = x1 - x0, y1 - y0
        return RoutingMask(box=((bx0 - x0) / w, (by0 - y0) / h, (bx1 - x0) / w, (by1 - y0) / h)).weights(rows, cols)
    h, w = mask.image.shape
    image = Image.fromarray(mask.image.astype(np.float32), mode="F")
    small = image.resize((cols, rows), Image.Resampling.BOX, box=(x0 * w, y0 * h, x1 * w, y1 * h))
    return RoutingMask(image=np.asarray(small, dtype=np.float32)).weights(rows, cols)


def route_characters(masks: Sequence[RoutingMask | None], rows: int, cols: int, prompt_order: Sequence[int] = (),
                     names: Sequence[str | None] | None = None, window: Sequence[float] | None = None) -> Routing:
    """The routing of characters with these masks on a ``rows`` x ``cols`` token grid (rules in the module doc).

    Args:
        masks: per character, its :class:`~core.conditioning.masks.RoutingMask` or ``None`` (the whole image).
        prompt_order: character indices in the order the prompt names them (``ResolvedPrompt.order``).
        names: per character, its name for the notes.
        window: the part of the image the given masks are cut to (normalized); ``None``: all of it.
    """
    masks = list(masks)
    names = list(names) if names is not None else [None] * len(masks)
    order, notes = list(range(len(masks))), []
    if len(masks) > 1 and all(m is None for m in masks):
        order = list(prompt_order) + [i for i in order if i not in prompt_order]
        placed, window = auto_layout(len(masks)), None
        notes.append(AUTO_LAYOUT_NOTE)
    else:
        placed = masks
    weights = []
    for i, mask in zip(order, placed):
        if mask is None:
            weights.append(None)
            continue
        w = grid_weights(mask, rows, cols, window)
        if float(w.max()) <= 0:
            label = f"[{names[i]}]" if names[i] else "a character"
            notes.append(f"the mask of {label} is empty: that character will not appear")
        weights.append(w)
    return Routing(order, weights, notes)


def tag_weights(tokenizer, text: str, spans, length: int) -> torch.Tensor:
    """(length,) float32 weights over the T5 tokens of ``text``: 1 on those overlapping ``spans`` (character
    offsets of a tag in ``text``), else 0; all 0 without spans."""
    weights = torch.zeros(length)
    if spans:
        weights[token_indices(tokenizer, text, list(spans), length)] = 1.0
    return weights

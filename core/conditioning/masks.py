"""Routing masks: where each character may appear (paper Eq. 3).

A mask is given as

* an image of any size (L, or the alpha of RGBA/LA; soft values are kept),
* a box ``(x0, y0, x1, y1)`` in normalized coordinates (0-1, origin top-left),
* a layout preset: ``whole``, ``left``, ``right``, ``top``, ``bottom``, ``left-third``, ``center-third``,
  ``right-third``, ``grid:RxC:N`` (cell N, 1-based, row-major, of an R-row C-column grid) or ``box:x0,y0,x1,y1``.

:meth:`RoutingMask.weights` resizes it to the latent token grid with area averaging.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile

from core.io.images import ImageInputError, decode, open_image
from core.conditioning.layouts import NAMED_LAYOUTS, MaskError, parse_box, parse_layout
from core.limits import MAX_METADATA_BYTES, MAX_SIDE, MAX_SPEC_CHARS


__all__ = ["NAMED_LAYOUTS", "MaskError", "RoutingMask", "auto_layout", "normalize_overlaps", "parse_layout"]

@dataclass
class RoutingMask:
    """A character's region: either ``box`` (normalized) or ``image`` (float array in [0, 1], H x W)."""

    box: tuple[float, float, float, float] | None = None
    image: np.ndarray | None = None
    label: str | None = None  # the preset name or "box:..." it came from, for metadata

    @classmethod
    def from_spec(cls, spec) -> "RoutingMask":
        """Builds a mask from a preset string, a box tuple, a PIL image or an array; ``None`` stays ``None``."""
        if spec is None or isinstance(spec, RoutingMask):
            return spec
        if isinstance(spec, str):
            return cls(box=parse_layout(spec), label=spec.strip().lower())
        if isinstance(spec, Image.Image):
            return cls(image=_image_weights(spec))
        if isinstance(spec, np.ndarray | torch.Tensor):
            array = np.asarray(spec, dtype=np.float32)
            if array.ndim != 2:
                raise MaskError(f"a mask array must be 2-D (H x W), got shape {array.shape}")
            if array.max(initial=0) > 1.0:
                array = array / 255.0
            return cls(image=_bounded(np.clip(array, 0.0, 1.0)))
        if isinstance(spec, list | tuple):
            box = parse_box(spec)
            return cls(box=box, label="box:" + ",".join(f"{v:g}" for v in box))
        raise MaskError(f"unsupported mask type {type(spec).__name__}: use an image, a box or a layout name")

    def weights(self, rows: int, cols: int) -> torch.Tensor:
        """Area-averaged weights on a ``rows`` x ``cols`` token grid, flattened row-major to (rows*cols,)."""
        if self.image is not None:
            image = Image.fromarray(self.image.astype(np.float32), mode="F")
            small = np.asarray(image.resize((cols, rows), Image.Resampling.BOX), dtype=np.float32)
            return _snap(small)
        x0, y0, x1, y1 = self.box
        # exact coverage of each cell by the box, so a box is the area average of its own pixel mask
        xs = np.clip(np.minimum((np.arange(cols) + 1) / cols, x1) - np.maximum(np.arange(cols) / cols, x0), 0, None)
        ys = np.clip(np.minimum((np.arange(rows) + 1) / rows, y1) - np.maximum(np.arange(rows) / rows, y0), 0, None)
        return _snap(np.outer(ys * rows, xs * cols))

    def is_empty(self, rows: int, cols: int) -> bool:
        return bool(self.weights(rows, cols).max() <= 0)

    def to_json(self):
        """A JSON-able description: the preset/box label, or the mask as a base64 PNG."""
        if self.box is not None:
            return self.label or "box:" + ",".join(f"{v:g}" for v in self.box)
        buffer = io.BytesIO()
        Image.fromarray(np.round(self.image * 255).astype(np.uint8), "L").save(buffer, format="PNG")
        return "png:" + base64.b64encode(buffer.getvalue()).decode()

    @classmethod
    def from_json(cls, value, name: str = "the mask") -> "RoutingMask | None":
        """The mask of :meth:`to_json`'s value (as read from metadata); :class:`MaskError` for anything else.

        A PNG mask is checked from its header before decoding (at most MAX_IMAGE_PIXELS) and kept at most
        MAX_SIDE x MAX_SIDE.
        """
        if value is None:
            return None
        if isinstance(value, str) and value.startswith("png:"):
            if len(value) > MAX_METADATA_BYTES:
                raise MaskError(f"{name} is larger than {MAX_METADATA_BYTES // 2**20} MB")
            try:
                data = base64.b64decode(value[4:], validate=True)
            except (binascii.Error, ValueError):
                raise MaskError(f"{name} is not a base64 PNG") from None
            try:
                return cls(image=_image_weights(open_image(data, name), name, owned=True))
            except ImageInputError as exc:
                raise MaskError(str(exc)) from None
        if isinstance(value, str):
            if len(value) > MAX_SPEC_CHARS:
                raise MaskError(f"{name} is {len(value):,} characters long: a layout name or box is at most "
                                f"{MAX_SPEC_CHARS}")
            return cls.from_spec(value)
        if isinstance(value, list | tuple):
            if len(value) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                raise MaskError(f"{name}: a box needs four numbers x0,y0,x1,y1")
            return cls.from_spec(value)
        raise MaskError(f"{name} must be a layout name, a box or a PNG, got {type(value).__name__}")


def _snap(weights: np.ndarray) -> torch.Tensor:
    """Clips to [0, 1] and snaps rounding noise to exact 0 and 1, so full cover is exactly "no mask"."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    w[np.abs(w - 1.0) < 1e-5] = 1.0
    w[w < 1e-5] = 0.0
    return torch.from_numpy(w.astype(np.float32)).flatten()


def _fit(width: int, height: int) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` mask scaled down to fit MAX_SIDE x MAX_SIDE (unchanged if it fits)."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _bounded(array: np.ndarray) -> np.ndarray:
    """A float mask array scaled down (area average) to fit MAX_SIDE x MAX_SIDE: no output needs more."""
    h, w = array.shape
    if max(w, h) <= MAX_SIDE:
        return array
    small = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F").resize(_fit(w, h),
                                                                                          Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def _image_weights(image: Image.Image, name: str = "the mask", owned: bool = False) -> np.ndarray:
    """Mask weights in [0, 1] from an image: the alpha channel if it has one, else its greyscale.

    The 8-bit channel is scaled down to fit MAX_SIDE x MAX_SIDE before it becomes a float array (4 bytes a pixel);
    an ``owned`` image (opened here, not the caller's) is closed as soon as its channel is out.
    """
    try:
        if isinstance(image, ImageFile.ImageFile):  # perhaps opened lazily: decode now, with one-line errors
            image = decode(image, name, transpose=False)
        if image.mode in ("RGBA", "LA", "PA"):
            channel = image.getchannel("A")
        elif image.mode == "P" and "transparency" in image.info:
            channel = image.convert("RGBA").getchannel("A")
        else:
            channel = image.convert("L")
    except ImageInputError as exc:
        raise MaskError(str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"{name} is truncated or corrupt ({exc})") from None
    if owned:
        image.close()  # frees its pixels now, not when the caller lets go of it
    if max(channel.size) > MAX_SIDE:
        channel = channel.resize(_fit(*channel.size), Image.Resampling.BOX)
    weights = np.asarray(channel, dtype=np.float32)
    weights /= 255.0
    return weights


def auto_layout(count: int) -> list[RoutingMask]:
    """Equal vertical stripes, left to right, for ``count`` characters without masks."""
    return [RoutingMask(box=(i / count, 0.0, (i + 1) / count, 1.0), label=f"grid:1x{count}:{i + 1}")
            for i in range(count)]


def normalize_overlaps(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Scales overlapping mask weights so that, per token, they sum to at most 1."""
    total = torch.stack(weights).sum(0).clamp(min=1.0)
    return [w / total for w in weights]

"""Editing an existing image: the source image, the inpainting region, and pasting the result back.

An edit is image-to-image (the source encoded by the VAE and noised to ``strength``: 0 keeps it, 1 ignores it)
and, with a region, inpainting: only the region is regenerated, and outside it, beyond a feathered edge of
:func:`feather_px` pixels, the result's pixels are the source's exactly (:func:`paste_back`).

The region is a :class:`~core.conditioning.masks.RoutingMask` (a painted mask with its soft values, a box or a
layout name) in the image's own coordinates, so it is stored and recalled as masks are. Each character without a
mask of its own acts in the region (:func:`character_masks`).
"""

from __future__ import annotations

import numbers

import numpy as np
from PIL import Image, ImageFilter

from core.conditioning.masks import MaskError, RoutingMask
from core.errors import UserError
from core.io.images import ImageInputError, load_image, open_image

SOURCE_NAME = "the source image"
REGION_NAME = "the inpaint mask"
PAINTED = 0.5  # a region pixel at or above this counts as "to redo"


class EditError(UserError, ValueError):
    """An edit that cannot be made (strength out of range, an empty region, a mask without a source)."""


def check_strength(value, name: str = "strength") -> float:
    """``value`` as a float in 0..1; :class:`EditError` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or not 0 <= value <= 1:
        raise EditError(f"{name}={value!r}: must be from 0 (keep the source) to 1 (ignore it)")
    return float(value)


def load_source(source, name: str = SOURCE_NAME) -> Image.Image:
    """The source image as RGB (a path, bytes or PIL image); :class:`ImageInputError` for anything not an image."""
    try:
        return load_image(source, name=name)
    except ImageInputError as exc:
        raise ImageInputError(str(exc)) from None


def load_region(source, size: tuple[int, int] | None = None,
                name: str = REGION_NAME) -> tuple[RoutingMask, list[str]]:
    """The region to redo from a mask image (white or opaque = redo) or a layout/box spec, and notes.

    ``size`` is the source's (width, height): a mask image of another size is stretched to it, with a note.
    """
    notes: list[str] = []
    if isinstance(source, RoutingMask):
        return source, notes
    if not isinstance(source, (str, bytes, bytearray, Image.Image)) and hasattr(source, "shape"):
        try:
            return RoutingMask.from_spec(source), notes  # an array: a painted mask as it is
        except MaskError as exc:
            raise EditError(f"{name}: {exc}") from None
    if isinstance(source, str) and not _looks_like_file(source):
        try:
            return RoutingMask.from_spec(source), notes
        except MaskError as exc:
            raise EditError(f"{name}: {exc}") from None
    image = source if isinstance(source, Image.Image) else open_image(source, name)
    if size is not None and tuple(image.size) != tuple(size):
        notes.append(f"{name} is {image.width}x{image.height}, the source {size[0]}x{size[1]}: "
                     "the mask was resized to the source")
    try:
        return RoutingMask.from_spec(image), notes
    except MaskError as exc:
        raise ImageInputError(f"{name}: {exc}") from None


def _looks_like_file(text: str) -> bool:
    return text.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"))


def region_pixels(region: RoutingMask, width: int, height: int) -> np.ndarray:
    """The region as a binary float (height, width) array at the output's size."""
    if region.image is not None:
        image = Image.fromarray(np.asarray(region.image, dtype=np.float32), mode="F")
        soft = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    else:
        x0, y0, x1, y1 = region.box
        soft = np.zeros((height, width), np.float32)
        soft[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = 1.0
    return (soft >= PAINTED).astype(np.float32)


def check_region(region: RoutingMask, width: int, height: int) -> None:
    """:class:`EditError` when nothing of ``region`` is left to redo at the output's size."""
    if not region_pixels(region, width, height).any():
        raise EditError(f"{REGION_NAME} is empty: paint the area to redo (white on black), or leave the mask out "
                        "to change the whole image")


def fit_source(image: Image.Image, width: int, height: int) -> tuple[Image.Image, list[str]]:
    """The source at the output's size (resized when it differs, with a note)."""
    if image.size == (width, height):
        return image, []
    note = f"{SOURCE_NAME} is {image.width}x{image.height}: resized to {width}x{height} (the output size)"
    return image.resize((width, height), Image.Resampling.LANCZOS), [note]


def output_size(image: Image.Image, multiple: int = 16, longest: int = 1024) -> tuple[int, int]:
    """An output size for editing ``image`` when none is given: its own, scaled down so the longer side is at most
    ``longest``, each side rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    scale = min(1.0, longest / max(image.size))
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in image.size)


def feather_px(width: int, height: int) -> int:
    """The feathered edge around the region, in pixels: 1/64 of the shorter side, at least 1."""
    return max(1, min(width, height) // 64)


def paste_alpha(region: RoutingMask, width: int, height: int) -> Image.Image:
    """The 'L' alpha of the generated image when pasted on the source: 255 on the region, falling to 0 over a
    feathered edge of :func:`feather_px` pixels outside it, and exactly 0 beyond ``2 * feather_px`` pixels."""
    radius = feather_px(width, height)
    binary = Image.fromarray((region_pixels(region, width, height) * 255).astype(np.uint8), "L")
    grown = binary.filter(ImageFilter.MaxFilter(2 * radius + 1))  # the edge fades outside the region, not into it
    return grown.filter(ImageFilter.BoxBlur(radius))


def outside(region: RoutingMask, width: int, height: int) -> np.ndarray:
    """A boolean (height, width) array of the pixels beyond the feathered edge: those :func:`paste_back` keeps."""
    radius = feather_px(width, height)
    binary = Image.fromarray((region_pixels(region, width, height) * 255).astype(np.uint8), "L")
    reach = binary.filter(ImageFilter.MaxFilter(4 * radius + 3))
    return np.asarray(reach) == 0


def paste_back(generated: Image.Image, source: Image.Image, region: RoutingMask) -> Image.Image:
    """``generated`` on the region (feathered), ``source`` everywhere else, pixel for pixel."""
    alpha = paste_alpha(region, *source.size)
    return Image.composite(generated.convert("RGB"), source.convert("RGB"), alpha)


def latent_region(region: RoutingMask, rows: int, cols: int, scale: int = 8):
    """(rows, cols) float32 0/1 weights of the latents to regenerate on the VAE's latent grid (``scale`` pixels a
    cell): a cell is redone when any of its pixels is in the region (the paste-back's feather hides the seam)."""
    import torch

    pixels = region_pixels(region, cols * scale, rows * scale)
    cells = pixels.reshape(rows, scale, cols, scale).max(axis=(1, 3))
    return torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float32))


def character_masks(masks: list, region: RoutingMask) -> tuple[list, list[str]]:
    """Each character's routing mask in an inpainting edit: its own when it has one, else the region. Several
    characters without masks share the region in equal vertical stripes of its bounding box, left to right."""
    missing = [i for i, m in enumerate(masks) if m is None]
    if not missing:
        return list(masks), []
    masks = list(masks)
    if len(missing) == 1:
        masks[missing[0]] = region
        return masks, ["the character acts in the inpainting region"]
    pixels = region_pixels(region, 256, 256)
    cols = np.flatnonzero(pixels.any(axis=0))
    x0, x1 = (cols[0], cols[-1] + 1) if cols.size else (0, 256)
    for k, i in enumerate(missing):
        stripe = np.zeros_like(pixels)
        a, b = x0 + (x1 - x0) * k // len(missing), x0 + (x1 - x0) * (k + 1) // len(missing)
        stripe[:, a:b] = pixels[:, a:b]
        masks[i] = RoutingMask(image=stripe)
    return masks, ["characters without masks share the inpainting region, left to right"]

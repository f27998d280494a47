"""Reading user images safely: size limits, odd modes and formats, clear one-line errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (no decompression bombs)
MIN_SIDE = 16  # the encoders see 384x384 views: anything smaller carries no usable detail
MAX_FILE_BYTES = 50 * 1024 * 1024


class ImageInputError(ValueError):
    """A user image that cannot be used; the message names the file and the problem in one line."""


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the image"


def _to_8bit(image: Image.Image) -> Image.Image:
    """Converts 16-bit and float greyscale modes to 8-bit 'L' by scaling their value range."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Converts any Pillow image to RGB: alpha composited on ``background``, CMYK and 16-bit converted."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def check_size(image: Image.Image, name: str = "the image") -> None:
    """Raises :class:`ImageInputError` for images too small or too large to use."""
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(f"{name} is {w}x{h} pixels: at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if w * h > MAX_PIXELS:
        raise ImageInputError(
            f"{name} is {w}x{h} ({w * h / 1e6:.1f} megapixels): the limit is {MAX_PIXELS / 1e6:.0f} megapixels"
        )


def load_image(source, name: str | None = None) -> Image.Image:
    """Opens a path, bytes or PIL image as an RGB image, refusing unusable input with a clear message.

    Animated images use their first frame; EXIF orientation is applied; alpha is composited on white.
    """
    name = name or _describe(source)
    if isinstance(source, Image.Image):
        check_size(source, name)
        return to_rgb(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{name}: file not found")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageInputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise ImageInputError(f"{name}: expected a file path or an image, got {type(source).__name__}")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise ImageInputError(f"{name} is not an image file Pillow can read") from None
    check_size(image, name)  # header only: nothing decoded yet
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{name} is truncated or corrupt ({exc})") from None
    except Image.DecompressionBombError:
        raise ImageInputError(f"{name} is too large to decode safely") from None
    return to_rgb(image)

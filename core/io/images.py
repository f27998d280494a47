"""Reading user images safely: size limits, odd modes and formats, clear one-line errors; and the two image hashes.

:func:`open_image` reads only an image's header and refuses anything over :data:`core.limits.MAX_IMAGE_PIXELS`
(decompression bombs included) before a pixel is decoded; :func:`load_image` then decodes it as RGB.
:func:`image_key` keys caches by an image's content; :func:`rgb_digest` is the digest PNG records give the images
saved beside them.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.limits import MAX_FILE_BYTES, MAX_IMAGE_PIXELS
from core.errors import UserError

MAX_PIXELS = MAX_IMAGE_PIXELS  # the old name, still imported elsewhere
MIN_SIDE = 16  # the encoders see 384x384 views: anything smaller carries no usable detail
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_CHUNKS = 100_000  # a 50 MB PNG written by Pillow has under a thousand; crafted millions are not read


class ImageInputError(UserError, ValueError):
    """A user image that cannot be used; the message names the file and the problem in one line."""


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the image"


def png_chunks(handle):
    """Yields ``(type, length)`` for each chunk of a PNG file object positioned after its signature.

    The caller may read up to ``length`` bytes of the chunk's data; the next step seeks past the rest and its CRC,
    so large chunks (IDAT) are never read. Stops at IEND, at the end of a truncated file or after MAX_CHUNKS.
    """
    for _ in range(MAX_CHUNKS):
        head = handle.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        start = handle.tell()
        yield kind, length
        if kind == b"IEND":
            return
        handle.seek(start + length + 4)


def without_text_chunks(data: bytes) -> bytes | None:
    """The PNG ``data`` without its text chunks (None when it is not a PNG); the pixels are untouched."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    handle = io.BytesIO(data)
    handle.seek(len(PNG_SIGNATURE))
    kept = [PNG_SIGNATURE]
    for kind, length in png_chunks(handle):
        start = handle.tell()
        if kind not in TEXT_CHUNKS:
            kept.append(data[start - 8:start + length + 4])
    return b"".join(kept)


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels): the limit is "
                              f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")


def _open_bytes(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageInputError(f"{name} is far over the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixel limit: "
                              "refused before decoding") from None
    except ValueError:
        # Pillow refuses PNG text chunks that inflate past 1 MB; the pixels do not need them
        stripped = without_text_chunks(data)
        if stripped is None or stripped == data:
            raise ImageInputError(f"{name} is not an image file Pillow can read") from None
        return _open_bytes(stripped, name)
    except (UnidentifiedImageError, OSError, SyntaxError, TypeError, struct.error, EOFError):
        raise ImageInputError(f"{name} is not an image file Pillow can read") from None


def open_image(source, name: str | None = None) -> Image.Image:
    """Opens a path, bytes or file object without decoding it, refusing non-images and images over the pixel limit.

    Only the header is read: the result is checked against :data:`core.limits.MAX_IMAGE_PIXELS` before any pixel is
    decoded. PNG text chunks too large for Pillow are dropped (the pixels never need them).
    """
    name = name or _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{name}: file not found")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageInputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ImageInputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB")
    else:
        raise ImageInputError(f"{name}: expected a file path or an image, got {type(source).__name__}")
    image = _open_bytes(data, name)
    _check_pixels(*image.size, name)
    return image


def decode(image: Image.Image, name: str, *, transpose: bool = True) -> Image.Image:
    """Decodes a lazily opened image (its first frame; EXIF orientation applied unless ``transpose`` is False).

    One-line :class:`ImageInputError` for truncated or corrupt files.
    """
    try:
        image.seek(0)
        image.load()
        return ImageOps.exif_transpose(image) if transpose else image
    except Image.DecompressionBombError:
        raise ImageInputError(f"{name} is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageInputError(f"{name} is truncated or corrupt ({exc})") from None


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
    _check_pixels(w, h, name)


def load_image(source, name: str | None = None) -> Image.Image:
    """Opens a path, bytes or PIL image as an RGB image, refusing unusable input with a clear message.

    Animated images use their first frame; EXIF orientation is applied; alpha is composited on white.
    """
    name = name or _describe(source)
    if isinstance(source, Image.Image):
        check_size(source, name)
        return to_rgb(source)
    image = open_image(source, name)
    check_size(image, name)  # header only: nothing decoded yet
    return to_rgb(decode(image, name))


# ----------------------------------------------------------------------------------------------------- hashes
def image_key(image: Image.Image) -> str:
    """The content key of an image: SHA-256 of its mode, size and pixels (not of its file encoding or metadata).

    Keys the pipeline's per-character caches (:attr:`core.conditioning.character.Character.key`) and the
    scorer's reference cache."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def rgb_digest(image: Image.Image) -> str:
    """SHA-256 of an image's size and RGB pixels: the same picture gives the same digest whatever its file or mode.

    The digest a PNG record gives an edit's source (``source_sha256``) and a control image (``sha256``) saved beside
    it, checked when the image is recalled: its formula must not change, or older PNGs no longer recall."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()

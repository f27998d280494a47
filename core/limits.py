"""Every bound on what a request may ask for, in one place.

The studio, the command line, the story format and Recall all check against these numbers, so a request that one
of them accepts is accepted by the others, and no request can make the server use unbounded time or memory.
This module imports nothing heavy: the CLI's argument parsing and the story parser use it without torch.
"""

from __future__ import annotations

import numbers
import re

from core.errors import UserError

# ---------------------------------------------------------------------------------------------- one generation
MAX_STEPS = 100  # denoising steps
MIN_SIDE = 16  # output width and height: multiples of 16 from MIN_SIDE to MAX_SIDE
MAX_SIDE = 4096
MAX_OUTPUT_PIXELS = MAX_SIDE * MAX_SIDE
MAX_IMAGES_PER_RUN = 4
MAX_CHARACTERS = 8
MAX_SCALE = 2.0  # character strength
MAX_GUIDANCE = 30.0
MAX_TRUE_CFG = 20.0
MAX_SEED = 2**32 - 1  # seeds are 0..MAX_SEED everywhere (CLI, studio, stories, metadata)
MAX_PROMPT_CHARS = 4000  # prompt and negative prompt, each
MAX_SEQUENCE_LENGTH = 512  # T5 tokens of the prompt (max_sequence_length)
MAX_NAME_CHARS = 64  # a character's name (its [Name] tag)
MAX_DESCRIPTION_CHARS = 500  # the words that replace a tag
MAX_SPEC_CHARS = 100  # a layout name or box spec (a region, as written or recorded)
MAX_LORAS = 3
MAX_LORA_WEIGHT = 2.0
MAX_LORA_DOWNLOAD_BYTES = 2 * 1024**3  # one hub LoRA file (FLUX LoRAs are 20 MB to about 1.3 GB)

# ---------------------------------------------------------------------------------------------- images and files
MAX_FILE_BYTES = 50 * 1024 * 1024  # any file read, hashed or copied on a request's behalf
MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels of any image: uploads, masks, images inside metadata
MAX_METADATA_BYTES = 64 * 1024 * 1024  # the decompressed JSON text of a PNG's settings
MAX_METADATA_DEPTH = 8  # nesting of that JSON (the real records nest 3 deep)

# ---------------------------------------------------------------------------------------------- stories
MAX_STORY_BYTES = 1024 * 1024  # story text or JSON
MAX_PANELS = 200
MAX_PAGES = 50
MAX_EXPORT_PIXELS = 600_000_000  # all pages of one export together (the PDF holds them at once): about 1.8 GB RGB
MIN_DPI = 72
MAX_DPI = 600
MAX_DIALOGUE_CHARS = 300  # one speech bubble
MAX_CAPTION_CHARS = 300
MAX_BUBBLES_PER_PANEL = 6


class LimitError(UserError, ValueError):
    """A request over one of the limits above; the message names the value, the limit and what to do."""


def check_int(value, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high`` (whole numbers only); :class:`LimitError` naming ``name`` otherwise.

    Checks the type before any arithmetic, so a 10**30 or a string never reaches code that would choke on it.
    """
    if isinstance(value, bool):
        raise LimitError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            raise LimitError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise LimitError(f"{name} must be a whole number from {low} to {high}, got {short_repr(value)}")
    if not low <= value <= high:
        raise LimitError(f"{name} must be from {low} to {high}, got {short_repr(value)}")
    return value


def check_text(value, name: str, limit: int, *, optional: bool = True) -> str | None:
    """``value`` as a string of at most ``limit`` characters (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise LimitError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise LimitError(f"{name} is {len(value):,} characters long: the limit is {limit:,}")
    return value


def check_number(value, name: str, low: float, high: float) -> float:
    """``value`` as a float in ``low..high`` (a real number, not a bool or NaN); :class:`LimitError` naming ``name``
    otherwise. Text is refused: a form or command line parses its values as numbers first."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise LimitError(f"{name} must be a number from {low:g} to {high:g}, got {short_repr(value)}")
    if not low <= value <= high:
        raise LimitError(f"{name} must be from {low:g} to {high:g}, got {short_repr(value)}")
    return float(value)


def check_prompt(value, name: str = "the prompt") -> str:
    """A prompt: text with something in it, at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(value, str) or not value.strip():
        raise LimitError("write a prompt first: describe the image to make")
    return check_text(value, name, MAX_PROMPT_CHARS, optional=False)


def check_seed(value, name: str = "seed") -> int:
    return check_int(value, name, 0, MAX_SEED)


def check_side(value, name: str = "width") -> int:
    """One output side in pixels: a whole multiple of 16 from ``MIN_SIDE`` to ``MAX_SIDE``. The one size rule: the
    pipeline, requests, PNG records, stories and every form and command line call this (or :func:`check_size`)."""
    side = check_int(value, name, MIN_SIDE, MAX_SIDE)
    if side % 16:
        low = side // 16 * 16
        raise LimitError(f"{name} {side} is not a multiple of 16: use {max(low, MIN_SIDE)} or {low + 16}")
    return side


def check_size(width, height) -> tuple[int, int]:
    """``(width, height)`` checked by :func:`check_side`, and their product against ``MAX_OUTPUT_PIXELS``."""
    width, height = check_side(width, "width"), check_side(height, "height")
    if width * height > MAX_OUTPUT_PIXELS:
        raise LimitError(f"{width}x{height} is {width * height:,} pixels: the limit is {MAX_OUTPUT_PIXELS:,}")
    return width, height


_SIZE_TEXT = re.compile(r"(\d+)\s*[xX×]\s*(\d+)")


def read_size(text: str) -> tuple[int, int]:
    """An image size written ``WIDTHxHEIGHT`` (``1024x768``; ``x``, ``X`` or ``×``, spaces around it allowed) as
    ``(width, height)``, not yet checked (:func:`check_size` does that); ValueError when it is not written so."""
    match = _SIZE_TEXT.fullmatch(text.strip()) if isinstance(text, str) and len(text) <= 40 else None
    if not match:
        raise ValueError(f"bad size {short_repr(text)}: expected WIDTHxHEIGHT, e.g. 1024x768")
    return int(match.group(1)), int(match.group(2))


def short_repr(value, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (ending ``...``): a message never echoes a huge
    value. The one such helper: every message that quotes a value it refuses uses it."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python will print
        return "a number too long to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."

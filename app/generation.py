"""One studio generation, as plain functions of values: check the inputs, run the pipeline, save the PNGs.

The Generate tab's handler gathers the page's values into :class:`CharacterSlot` and :class:`GenerationSettings`
and calls :func:`generate`; tests call it directly. Every bad input raises one of the errors in
:data:`app.errors.USER_ERRORS` with a one-line message, before any model is loaded where possible.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.conditioning.character import Character
from core.io.images import ImageInputError, load_image, open_image
from core.limits import (MAX_GUIDANCE, MAX_IMAGES_PER_RUN, MAX_OUTPUT_PIXELS, MAX_PROMPT_CHARS, MAX_SCALE, MAX_SEED,
                         MAX_SIDE, MAX_STEPS, MAX_TRUE_CFG, MIN_SIDE, check_int, check_seed, check_text)
from core.io.metadata import GenerationRecord, save_png
from core.conditioning.prompt import PromptError
from core.conditioning.segmentation import BackgroundThresholdSegmenter, isolate

from .context import MAX_STUDIO_CHARACTERS, StudioContext
from .errors import StudioInputError
from .generation_history import HistoryEntry
from core.loading.loras import StyleLora, with_triggers
from .mask_canvas import slot_masks



@dataclass
class CharacterSlot:
    """One character row of the Generate tab: ``image`` is a path, bytes, PIL image or None (empty slot)."""

    image: object = None
    name: str | None = None
    scale: float = 0.9
    remove_background: bool = False
    description: str | None = None  # the words that replace [name] in the prompt; empty: the name


@dataclass
class GenerationSettings:
    """The prompt and sampling settings of the Generate tab."""

    prompt: str
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    seed: int | None = None
    randomize_seed: bool = True
    images: int = 1
    loras: list[StyleLora] = field(default_factory=list)
    controls: list = field(default_factory=list)  # ControlImage inputs (app.tabs.control_events.parse_controls)
    regional_text: str = "auto"  # auto, on or off (core.conditioning.regional_text)


@dataclass
class EditSettings:
    """The Generate tab's edit: the edit canvas (the image to edit as its background, the region to redo painted
    on its layer; nothing painted edits the whole image) and the strength (0 keeps the image, 1 ignores it)."""

    canvas: object = None
    strength: float = 0.6


@dataclass
class GenerationResult:
    """What a run produced: saved PNG paths (one per image), their seeds, notes for the user, and whether the
    user cancelled it (the images finished before the cancel are kept)."""

    paths: list[str]
    seeds: list[int]
    notes: list[str]
    cancelled: bool = False


def _number(value, label: str, low: float, high: float) -> float:
    """A page value as a float in ``low..high`` (numbers and numeric text); one-line errors otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise StudioInputError(f"{label} must be a number from {low:g} to {high:g}, got {_brief(value)}") from None
    if not low <= number <= high:  # NaN fails too
        raise StudioInputError(f"{label} {_brief(value)} is outside {low:g} to {high:g}")
    return number


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_size(width, height) -> tuple[int, int]:
    """Integer width and height, multiples of 16 within the engine's limits; one-line errors otherwise."""
    sizes = []
    for label, value in (("Width", width), ("Height", height)):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise StudioInputError(f"{label} must be a number of pixels, got {_brief(value)}") from None
        if not MIN_SIDE <= number <= MAX_SIDE or number != int(number):  # NaN and infinities fail the range
            raise StudioInputError(f"{label} {number:g} is outside {MIN_SIDE} to {MAX_SIDE} whole pixels")
        number = int(number)
        if number % 16:
            low, high = number // 16 * 16, number // 16 * 16 + 16
            raise StudioInputError(f"{label} {number} is not a multiple of 16: use {max(low, 16)} or {high}")
        sizes.append(number)
    if sizes[0] * sizes[1] > MAX_OUTPUT_PIXELS:
        raise StudioInputError(f"{sizes[0]}x{sizes[1]} is over {MAX_OUTPUT_PIXELS / 1e6:.0f} megapixels: choose a "
                               "smaller size")
    return sizes[0], sizes[1]


def choose_seed(seed, randomize: bool) -> int:
    """A random seed in 0..MAX_SEED, or the given one checked against that range."""
    if randomize or seed is None or seed == "":
        return random.randint(0, MAX_SEED)
    if isinstance(seed, str):
        try:
            seed = int(seed.strip()) if len(seed) <= 20 else seed
        except ValueError:
            pass
    return check_seed(seed, "seed")


def slot_label(index: int, name: str | None) -> str:
    return f"Character {index + 1}" + (f" [{name.strip()}]" if name and name.strip() else "")


def conversion_note(source, label: str) -> str | None:
    """What reading an accepted image changes (first frame of an animation, CMYK, 16-bit, transparency)."""
    try:
        image = source if isinstance(source, Image.Image) else open_image(source, label)
    except ImageInputError:
        return None  # unreadable files are reported by load_image
    changes = []
    if getattr(image, "n_frames", 1) > 1:
        changes.append("animated: its first frame is used")
    if image.mode == "CMYK":
        changes.append("CMYK: converted to RGB")
    if image.mode.startswith("I") or image.mode == "F":
        changes.append("16-bit: converted to 8-bit")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        changes.append("transparent areas are filled with white")
    return f"{label}: {', '.join(changes)}" if changes else None


def remove_background(image: Image.Image) -> Image.Image:
    """The character on white, background found by colour distance from the border (plain backgrounds only)."""
    return isolate(image, BackgroundThresholdSegmenter()(image), crop=False)


def build_characters(slots: list[CharacterSlot], canvas, mask_specs=None) -> tuple[list[Character], list[str]]:
    """Characters from the filled slots with their masks from the canvas; ``(characters, notes)``."""
    if len(slots) > MAX_STUDIO_CHARACTERS:
        raise StudioInputError(f"at most {MAX_STUDIO_CHARACTERS} characters fit in the studio")
    used, labels, notes = [], {}, []
    for i, slot in enumerate(slots):
        labels[i] = slot_label(i, slot.name)
        if slot.image is None:
            if slot.name and slot.name.strip():
                raise StudioInputError(f"{labels[i]} has a name but no image: add an image or remove the character")
            continue
        used.append(i)
    masks, mask_notes = slot_masks(canvas, used, labels, mask_specs)
    notes += mask_notes
    characters = []
    for i in used:
        slot = slots[i]
        scale = _number(slot.scale, f"{labels[i]}: scale", 0.0, MAX_SCALE)
        characters.append(_character(slot, labels[i], scale, masks[i]))
        note = conversion_note(slot.image, labels[i])
        if note:
            notes.append(note)
    return characters, notes


def _character(slot: CharacterSlot, label: str, scale: float, mask) -> Character:
    source = slot.image
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageInputError(f"{label}: the uploaded file is gone; upload it again")
    image = load_image(source, name=label)
    if slot.remove_background:
        image = remove_background(image)
    for what, value in (("name", slot.name), ("description", slot.description)):
        if value is not None and not isinstance(value, str):
            raise StudioInputError(f"{label}: the {what} must be text, got {type(value).__name__}")
    description = " ".join((slot.description or "").split()) or None  # one line, as the prompt has it
    return Character(image, name=(slot.name or "").strip() or None, scale=scale, mask=mask, description=description)


def check_settings(settings: GenerationSettings) -> tuple[int, int]:
    """Checks everything that needs no model against :mod:`core.limits`; returns the size."""
    if not isinstance(settings.prompt, str) or not settings.prompt.strip():
        raise PromptError("write a prompt first: describe the image to make")
    check_text(settings.prompt, "the prompt", MAX_PROMPT_CHARS)
    check_text(settings.negative_prompt, "the negative prompt", MAX_PROMPT_CHARS)
    check_int(settings.steps, "steps", 1, MAX_STEPS)
    check_int(settings.images, "images per run", 1, MAX_IMAGES_PER_RUN)
    width, height = check_size(settings.width, settings.height)
    _number(settings.true_cfg_scale, "true CFG scale (1 turns it off)", 1.0, MAX_TRUE_CFG)
    _number(settings.guidance, "guidance", 0.0, MAX_GUIDANCE)
    return width, height


def build_request(slots: list[CharacterSlot], canvas, settings: GenerationSettings, mask_specs=None):
    """``(GenerationRequest, notes)`` from the page's values, checked (no model needed). ``mask_specs``: the exact
    masks that drew the canvas layers (see ``mask_canvas.slot_masks``)."""
    from core.request import GenerationRequest

    width, height = check_settings(settings)
    characters, notes = build_characters(slots, canvas, mask_specs)
    check_text(with_triggers(settings.prompt, settings.loras), "the prompt with the LoRAs' trigger words",
               MAX_PROMPT_CHARS)
    request = GenerationRequest(
        prompt=settings.prompt, characters=characters, negative_prompt=settings.negative_prompt,
        true_cfg_scale=float(settings.true_cfg_scale), steps=int(settings.steps), guidance=float(settings.guidance),
        width=width, height=height, seed=choose_seed(settings.seed, settings.randomize_seed),
        images=int(settings.images), loras=list(settings.loras), controls=list(settings.controls),
        regional_text=_regional_mode(settings.regional_text))
    return request.check(), notes  # unknown [tags]: fail before loading anything


def _regional_mode(value):
    """The page's Regional text choice (auto, on or off) as the request's setting; one-line errors otherwise."""
    from core.conditioning.regional_text import RegionalText

    if not isinstance(value, str):
        raise StudioInputError(f"regional text must be auto, on or off, got {_brief(value)}")
    return RegionalText.parse(value)


def build_edit(request, edit: EditSettings) -> tuple[object, list[str]]:
    """``request`` made an edit of ``edit``'s image (checked: strength, region); ``(request, notes)``."""
    from dataclasses import replace

    from .mask_canvas import edit_from_canvas

    source, region, notes = edit_from_canvas(edit.canvas)
    if source is None:
        raise StudioInputError("pick an image to edit first: upload one, or press 'Edit this' under a gallery or "
                               "history image")
    strength = _number(edit.strength, "strength (0 keeps the image, 1 ignores it)", 0.0, 1.0)
    request = replace(request, source_image=source, strength=strength, inpaint_region=region)
    return request.check(), notes


def generate(ctx: StudioContext, slots: list[CharacterSlot], canvas, settings: GenerationSettings,
             report=None, cancel: threading.Event | None = None, mask_specs=None,
             edit: EditSettings | None = None) -> GenerationResult:
    """Runs one generation through the studio's engine and saves each image as a PNG with full metadata in the
    output folder.

    ``report(fraction, message)`` hears about loading and each denoising step; setting ``cancel`` stops after the
    current step. Image ``k`` of a run uses seed ``seed + k``, so every PNG reproduces on its own.
    """
    request, notes = build_request(slots, canvas, settings, mask_specs)
    if edit is not None:
        request, edit_notes = build_edit(request, edit)
        notes += edit_notes
    with ctx.gpu_lock:
        result = ctx.engine().generate(request, report=report, cancel=cancel)
    notes += [n for n in result.notes if n not in notes]
    paths = []
    for image, record in zip(result.images, result.records):
        paths.append(str(_save(ctx, image, record, request.source_image, request.controls)))
        ctx.history.add(HistoryEntry(paths[-1], settings.prompt, record.seed, request.width, request.height,
                                     [c.name or f"character {j + 1}" for j, c in enumerate(request.characters)]))
    return GenerationResult(paths, list(result.seeds), notes, result.cancelled)


def _save(ctx: StudioContext, image: Image.Image, record: GenerationRecord, source=None, controls=None) -> Path:
    folder = Path(ctx.settings.output_dir)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{record.seed}-{uuid.uuid4().hex[:6]}.png"
    return save_png(image, folder / name, record, source=source, controls=controls)  # sources go beside it

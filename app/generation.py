"""One studio generation, as plain functions of values: build the request, run it, save the PNGs.

The Generate tab's handler parses the page's values (:func:`app.client_input.request_fields`) and the character
slots (:class:`CharacterSlot`), builds the one :class:`core.request.GenerationRequest` with :func:`build_request`
(checked as it is built, before any model loads) and runs it with :func:`generate`; tests call them directly. Every
bad input raises a :class:`core.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.conditioning.character import Character
from core.io.images import ImageInputError, load_image, open_image
from core.io.metadata import GenerationRecord, save_png
from core.conditioning.segmentation import BackgroundThresholdSegmenter, isolate
from core.request import GenerationRequest

from . import client_input
from .context import MAX_STUDIO_CHARACTERS, StudioContext
from .errors import StudioInputError
from .generation_history import HistoryEntry
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
        characters.append(_character(slot, labels[i], client_input.number(slot.scale), masks[i]))
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


def build_request(slots: list[CharacterSlot], canvas, fields: dict, mask_specs=None,
                  edit: EditSettings | None = None) -> tuple[GenerationRequest, list[str]]:
    """``(request, notes)`` of the page: the characters of the slots with their masks from the canvas (``mask_specs``:
    the exact masks that drew its layers, see ``mask_canvas.slot_masks``), ``edit``'s image and region when given,
    and ``fields``, the form's settings as request fields (:func:`app.client_input.request_fields`). The request is
    built once, checked as every request is: no model needed."""
    characters, notes = build_characters(slots, canvas, mask_specs)
    edited = {}
    if edit is not None:
        edited, edit_notes = _edit_fields(edit)
        notes += edit_notes
    request = GenerationRequest(**fields, characters=characters, **edited)
    request.resolved_prompt  # unknown [tags]: refused before a GPU is asked for
    return request, notes


def _edit_fields(edit: EditSettings) -> tuple[dict, list[str]]:
    """The request fields of the edit canvas (source, region) and strength, and notes."""
    from .mask_canvas import edit_from_canvas

    source, region, notes = edit_from_canvas(edit.canvas)
    if source is None:
        raise StudioInputError("pick an image to edit first: upload one, or press 'Edit this' under a gallery or "
                               "history image")
    return dict(source_image=source, strength=client_input.number(edit.strength), inpaint_region=region), notes


def generate(ctx: StudioContext, request: GenerationRequest, notes=(), report=None,
             cancel: threading.Event | None = None) -> GenerationResult:
    """Runs ``request`` (:func:`build_request`'s, with its ``notes``) through the studio's engine and saves each
    image as a PNG with full metadata in the output folder.

    ``report(fraction, message)`` hears about loading and each denoising step; setting ``cancel`` stops after the
    current step. Image ``k`` of a run uses seed ``seed + k``, so every PNG reproduces on its own.
    """
    notes = list(notes)
    with ctx.gpu_lock:
        result = ctx.engine().generate(request, report=report, cancel=cancel)
    notes += [n for n in result.notes if n not in notes]
    paths = []
    for image, record in zip(result.images, result.records):
        paths.append(str(_save(ctx, image, record, request.source_image, request.controls)))
        ctx.history.add(HistoryEntry(paths[-1], request.prompt, record.seed, request.width, request.height,
                                     [c.name or f"character {j + 1}" for j, c in enumerate(request.characters)]))
    return GenerationResult(paths, list(result.seeds), notes, result.cancelled)


def _save(ctx: StudioContext, image: Image.Image, record: GenerationRecord, source=None, controls=None) -> Path:
    folder = Path(ctx.settings.output_dir)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{record.seed}-{uuid.uuid4().hex[:6]}.png"
    return save_png(image, folder / name, record, source=source, controls=controls)  # sources go beside it

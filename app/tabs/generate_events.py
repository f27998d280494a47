"""The Generate tab's event handlers: plain functions of the page's values, testable without a browser.

The page's inputs travel as flat lists in the orders :data:`GENERATE_FIELDS` and :data:`RECALL_FIELDS`;
:func:`form_values` builds such a list from keyword arguments (tests and scripted ``gradio_client`` calls use it).
No ``from __future__ import annotations`` here: Gradio reads the ``gr.Request`` annotations at runtime.
"""

import hashlib

import gradio as gr

from core.limits import MAX_SIDE, MIN_SIDE
from core.conditioning.masks import RoutingMask
from core.io.metadata import png_from_b64, read_record
from core.io.paths import write_bytes_atomic

from .. import client_input
from ..context import MAX_STUDIO_CHARACTERS, StudioContext, uploads_dir
from ..errors import StudioInputError, shown_to_user
from ..generation import CharacterSlot, build_request, generate
from core.loading.loras import MAX_LORAS, StyleLora, parse_rows
from ..running import SessionRuns, cancel_button, cancelling_button, session_of
from ..mask_canvas import (blank_canvas, canvas_from_masks, layout_canvas, layout_specs, permute_canvas,
                           preview_size, resize_canvas)
from ..spaces import estimate_duration, gpu_function
from .control_events import parse_controls, split_controls

SLOT_FIELDS = ("image", "name", "scale", "remove_background", "description")
LORA_FIELDS = ("source", "weight", "trigger")
SLOT_KEYS = [f"{field}{i + 1}" for i in range(MAX_STUDIO_CHARACTERS) for field in SLOT_FIELDS]
LORA_KEYS = [f"lora{j + 1}_{field}" for j in range(MAX_LORAS) for field in LORA_FIELDS]
GENERATE_FIELDS = SLOT_KEYS + ["canvas", *client_input.SETTING_FIELDS] + LORA_KEYS
# the /generate and /edit endpoints' parameter names (app.api_names), in their inputs' order: the form, then the
# page's state (session paths, mask specs, the edit's canvas and strength, the control panel)
GENERATE_API_NAMES = GENERATE_FIELDS + ["session_paths", "mask_specs", "control"]
EDIT_API_NAMES = GENERATE_FIELDS + ["session_paths", "mask_specs", "edit_canvas", "strength", "control"]
RECALL_FIELDS = (SLOT_KEYS + [f"visible{i + 1}" for i in range(MAX_STUDIO_CHARACTERS)] + ["count", "canvas"]
                 + [f for f in client_input.SETTING_FIELDS if f != "images"] + ["size_preset"] + LORA_KEYS)

SIZE_PRESETS = {
    "Square 1024x1024": (1024, 1024), "Portrait 3:4 896x1152": (896, 1152), "Landscape 4:3 1152x896": (1152, 896),
    "Wide 16:9 1344x768": (1344, 768), "Tall 9:16 768x1344": (768, 1344), "Small 512x512": (512, 512),
    "Tiny test 128x128": (128, 128), "Custom": None,
}
DEFAULTS = {"scale": 0.9, "remove_background": False, "description": "", "true_cfg_scale": 1.0, "steps": 28,
            "guidance": 3.5, "width": 1024, "height": 1024, "seed": 0, "randomize_seed": True, "images": 1,
            "weight": 1.0, "regional_text": "auto"}


def defaults_for(ctx: StudioContext) -> dict:
    """Starting values: tiny models get a small size and few steps, so trying the studio on a CPU is quick."""
    values = dict(DEFAULTS)
    if ctx.settings.is_tiny:
        values.update(width=128, height=128, steps=4)
    return values


def size_preset_for(width, height) -> str:
    return next((label for label, size in SIZE_PRESETS.items() if size == (width, height)), "Custom")


def form_values(**given) -> list:
    """A list in :data:`GENERATE_FIELDS` order from keyword values (unknown keys raise ``KeyError``)."""
    unknown = set(given) - set(GENERATE_FIELDS)
    if unknown:
        raise KeyError(f"unknown fields: {sorted(unknown)}")
    values = []
    for key in GENERATE_FIELDS:
        field = key.rstrip("0123456789") if key[-1].isdigit() else key.split("_", 1)[-1] if key.startswith("lora") else key
        values.append(given.get(key, DEFAULTS.get(field)))
    return values


def parse_form(values, ctx=None, request=None) -> tuple[list[CharacterSlot], object, dict]:
    """``(slots, canvas, fields)`` from a list in :data:`GENERATE_FIELDS` order: ``fields`` are the settings as
    request fields (:func:`app.client_input.request_fields`; a randomized seed is ``None``, picked when the request
    runs), with the LoRAs checked against ``ctx``'s folders and ``request``'s right to download
    (:func:`app.client_input.loras`) when ``ctx`` is given."""
    data = dict(zip(GENERATE_FIELDS, values, strict=True))
    slots = [CharacterSlot(*(data[f"{field}{i + 1}"] for field in SLOT_FIELDS)) for i in range(MAX_STUDIO_CHARACTERS)]
    rows = [[data[f"lora{j + 1}_{field}"] for field in LORA_FIELDS] for j in range(MAX_LORAS)]
    fields = client_input.request_fields(data)
    fields["loras"] = client_input.loras(rows, ctx, request) if ctx is not None else parse_rows(rows)
    # the form's own choice: the request just has no seed yet
    if client_input.flag(data["randomize_seed"], "randomize seed"):
        fields["seed"] = None
    return slots, data["canvas"], fields


def gpu_duration(request, notes=None) -> int:
    """Seconds of ZeroGPU time to ask for one Generate (or Edit) click running ``request``."""
    return estimate_duration(request.width, request.height, request.steps, request.images,
                             request.true_cfg_scale > 1, len(request.characters))


def zero_gpu_generate(ctx):
    """``generate(ctx, request, notes)`` as a ZeroGPU function asking for :func:`gpu_duration` (the Generate and
    Edit events' GPU work; off ZeroGPU the plain function). The GPU is attached only inside it, so per-step progress
    and Cancel are local-only."""
    return gpu_function(lambda request, notes: generate(ctx, request, notes), duration=gpu_duration)


def run_form(ctx, runs: SessionRuns, zero_gpu_run, request, progress, values: list, specs, session_paths: list,
             edit=None, controls: list | None = None):
    """One Generate (or Edit, with ``edit``) run of the form ``values`` (GENERATE_FIELDS order) under the session's
    Cancel: ``(gallery paths, session paths, notes markdown, seed)``. On ZeroGPU ``zero_gpu_run`` runs it.
    ``controls``: the control panel's values (:data:`app.tabs.control_events.CONTROL_KEYS` order), or None."""
    slots, canvas, fields = parse_form(values, ctx, request)
    form_seed = values[GENERATE_FIELDS.index("seed")]  # shown again when no image comes back
    fields["controls"] = parse_controls(controls, ctx.paths)
    # the one request of this click, checked as it is built: before a ZeroGPU slot is asked for with its numbers
    generation, notes = build_request(slots, canvas, fields, specs, edit)
    ctx.access.check_budget(request, generation.width, generation.height, generation.steps, generation.images)
    if ctx.zero_gpu:
        result = zero_gpu_run(generation, notes)
    else:
        session = session_of(request)
        cancel = runs.start(session)
        if cancel is None:
            runs.finish(session, None)
            return session_paths, session_paths, "- Cancelled before it started.", form_seed
        try:
            result = generate(ctx, generation, notes, cancel=cancel,
                              report=lambda fraction, message: progress(fraction, desc=message))
        finally:
            runs.finish(session, cancel)
    notes = list(result.notes)
    if result.paths:
        what = "edited image(s)" if edit is not None else "image(s)"
        beside = "; the image edited is saved beside them" if edit is not None else ""
        # the output folder is a path on the server: shown only to a studio's own user, not to visitors
        where = "" if ctx.access.exposed else f" to `{ctx.settings.output_dir}`"
        notes.insert(0, f"Saved {len(result.paths)} {what}{where} (seed "
                        f"{', '.join(map(str, result.seeds))}){beside}.")
    paths = result.paths + session_paths
    seed = result.seeds[0] if result.seeds else form_seed
    return paths, paths, "\n".join(f"- {n}" for n in notes), seed


class GenerateEvents:
    """The handlers, bound to one :class:`StudioContext`."""

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self._zero_gpu_run = zero_gpu_generate(ctx)
        self.runs = SessionRuns(ctx.jobs)
        self.generate = shown_to_user(self._generate)
        self.cancel = shown_to_user(self._cancel)
        self.recall = shown_to_user(self._recall)
        # the page's Recall: the values, then the exact masks that drew the canvas (the mask-specs state)
        self.recall_with_masks = shown_to_user(self._recall_with_masks)

    # ------------------------------------------------------------------ generation
    def _generate(self, request: gr.Request, progress=gr.Progress(), *values):
        """Returns ``(gallery paths, session paths, notes markdown, seed)``; ``values`` in GENERATE_FIELDS order,
        then the session's paths and (from the page) the mask specs that drew the canvas."""
        values, controls = split_controls(values, len(GENERATE_FIELDS) + 2)  # the control panel's state
        specs = values.pop() if len(values) == len(GENERATE_FIELDS) + 2 else None
        session_paths = list(values.pop() or [])
        return run_form(self.ctx, self.runs, self._zero_gpu_run, request, progress, values, specs, session_paths,
                        controls=controls)

    def queued(self, request: gr.Request):
        """The Generate click, before the queue: a Cancel from now on drops the run if it is still waiting."""
        self.runs.queued(session_of(request))

    def _cancel(self, request: gr.Request):
        """The Cancel button: "Cancelling..." while this session's run stops (at its next step)."""
        return cancelling_button(self.runs.cancel(session_of(request)))

    def wait_until_stopped(self, request: gr.Request):
        """After Cancel: returns (the button back to "Cancel") once this session's run is over."""
        self.runs.wait(session_of(request))
        return cancel_button()

    # ------------------------------------------------------------------ recall
    def _recall(self, source):
        """Every setting of a PNG made by the studio, as a list in :data:`RECALL_FIELDS` order."""
        return self._recall_values(source)[0]

    def _recall_with_masks(self, source):
        values, specs = self._recall_values(source)
        return [*values, specs]

    def _recall_values(self, source):
        """``(values in RECALL_FIELDS order, mask specs per slot)`` of a PNG made by the studio."""
        if source is None:
            raise StudioInputError("pick a gallery image or drop in a PNG made by the studio first")
        record = read_record(client_input.studio_file(self.ctx, source, "the PNG"))
        if len(record.characters) > MAX_STUDIO_CHARACTERS:
            raise StudioInputError(f"this image has {len(record.characters)} characters; the studio holds "
                                   f"{MAX_STUDIO_CHARACTERS} (recall it with the command line instead)")
        values = {}
        for i in range(MAX_STUDIO_CHARACTERS):
            c = record.characters[i] if i < len(record.characters) else None
            values[f"image{i + 1}"] = _recalled_image(c.image, i) if c else None
            values[f"name{i + 1}"] = (c.name or "") if c else ""
            values[f"scale{i + 1}"] = c.scale if c else DEFAULTS["scale"]
            values[f"remove_background{i + 1}"] = False  # the recorded image is already the processed one
            values[f"description{i + 1}"] = (c.description or "") if c else ""
            values[f"visible{i + 1}"] = gr.update(visible=i < max(1, len(record.characters)))
        values["count"] = max(1, len(record.characters))
        # one mask decoded at a time (each is bounded to MAX_SIDE x MAX_SIDE), each dropped once it is on the canvas
        masks = (RoutingMask.from_json(c.mask, f"character {i + 1}'s mask") for i, c in enumerate(record.characters))
        values["canvas"] = canvas_from_masks(masks, record.width, record.height)
        # the exact masks behind the canvas: a layer left as drawn generates with its recorded mask (a layout name,
        # a box, soft values), not with the 512 px preview of it
        specs = [c.mask for c in record.characters] + [None] * (MAX_STUDIO_CHARACTERS - len(record.characters))
        values.update(prompt=record.prompt, negative_prompt=record.negative_prompt or "",
                      true_cfg_scale=record.true_cfg_scale, steps=record.num_inference_steps,
                      guidance=record.guidance_scale, width=record.width, height=record.height, seed=record.seed,
                      randomize_seed=False, size_preset=size_preset_for(record.width, record.height),
                      regional_text=_recalled_regional_mode(record))
        loras = [StyleLora.from_record(d) for d in record.loras][:MAX_LORAS]
        for j in range(MAX_LORAS):
            lora = loras[j] if j < len(loras) else None
            values[f"lora{j + 1}_source"] = lora.source if lora else ""
            values[f"lora{j + 1}_weight"] = lora.weight if lora else DEFAULTS["weight"]
            values[f"lora{j + 1}_trigger"] = lora.trigger if lora else ""
        gr.Info(f"Recalled the settings of seed {record.seed}")
        return [values[key] for key in RECALL_FIELDS], specs


def _recalled_regional_mode(record) -> str:
    """The Regional text choice of a record: its mode; characters recorded before regional text: off."""
    if record.regional_text is not None:
        return record.regional_text["mode"]
    return "off" if record.characters else DEFAULTS["regional_text"]


def _recalled_image(data: str, index: int) -> str:
    """A recorded character image as a file for its image box: checked from its header, never decoded here."""
    png = png_from_b64(data, f"character {index + 1}'s image")
    path = uploads_dir() / "recall" / f"{hashlib.sha256(png).hexdigest()[:24]}.png"
    if not path.is_file():
        write_bytes_atomic(path, png)
    return str(path)


# ---------------------------------------------------------------------- characters and canvas
def _slot_rows(values) -> list[list]:
    size = len(SLOT_FIELDS)
    return [list(values[i * size:(i + 1) * size]) for i in range(MAX_STUDIO_CHARACTERS)]


def _empty_row() -> list:
    return [None, "", DEFAULTS["scale"], False, ""]


def _slot_outputs(rows, count, canvas) -> list:
    flat = [v for row in rows for v in row]
    return flat + [gr.update(visible=i < count) for i in range(MAX_STUDIO_CHARACTERS)] + [count, canvas]


@shown_to_user
def add_slot(count):
    """One more character row (``count`` visible rows)."""
    count = int(count or 1)
    if count >= MAX_STUDIO_CHARACTERS:
        gr.Warning(f"At most {MAX_STUDIO_CHARACTERS} characters fit in one image")
        return [gr.update(visible=i < count) for i in range(MAX_STUDIO_CHARACTERS)] + [count]
    count += 1
    return [gr.update(visible=i < count) for i in range(MAX_STUDIO_CHARACTERS)] + [count]


def _reorder(index: int, move: str, count, canvas, width, height, values) -> list:
    rows, count = _slot_rows(values), int(count or 1)
    order: list = list(range(MAX_STUDIO_CHARACTERS))
    if move == "remove":
        rows = rows[:index] + rows[index + 1:] + [_empty_row()]
        order = order[:index] + order[index + 1:] + [None]
        count = max(1, count - 1)
    elif index > 0:
        rows[index - 1], rows[index] = rows[index], rows[index - 1]
        order[index - 1], order[index] = order[index], order[index - 1]
    return _slot_outputs(rows, count, permute_canvas(canvas, order, int(width), int(height)))


def slot_handlers(index: int):
    """``(remove, move_up)`` handlers for row ``index``: ``fn(count, canvas, width, height, *slot values)``."""

    @shown_to_user
    def remove(count, canvas, width, height, *values):
        return _reorder(index, "remove", count, canvas, width, height, values)

    @shown_to_user
    def move_up(count, canvas, width, height, *values):
        return _reorder(index, "up", count, canvas, width, height, values)

    return remove, move_up


@shown_to_user
def apply_layout(layout, count, width, height):
    return layout_canvas(layout, int(count or 1), int(width), int(height))


NO_CHARACTER_NOTE = ("No character uploaded yet: the layout is drawn for {count}; upload the characters first and "
                     "apply the layout again to split the image between them")


@shown_to_user
def apply_layout_with_specs(layout, count, width, height, *images):
    """The layout's canvas and its mask specs (the layout names), for the page's canvas and mask-specs state;
    ``images``: the character slots' images (a note when none is uploaded yet)."""
    count = int(count or 1)
    if not any(images[:count]):
        gr.Info(NO_CHARACTER_NOTE.format(count="Character 1, which gets the whole image" if count == 1
                                         else f"{count} characters, a region each"))
    return layout_canvas(layout, count, int(width), int(height)), layout_specs(layout, count)


@shown_to_user
def clear_canvas(width, height):
    return blank_canvas(int(width), int(height))


def no_specs():
    """Mask specs for a canvas that no spec drew (cleared, reordered): every layer counts as painted."""
    return [None] * MAX_STUDIO_CHARACTERS


@shown_to_user
def follow_size(canvas, width, height):
    """The canvas at the aspect ratio of the new output size (left alone while the size is not valid yet, and when
    the canvas has that aspect ratio already: the page need not redraw it)."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        return gr.update()
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        return gr.update()
    background = canvas.get("background") if isinstance(canvas, dict) else None
    if getattr(background, "size", None) == preview_size(w, h):
        return gr.update()
    return resize_canvas(canvas, w, h)


@shown_to_user
def pick_size(preset, width, height):
    size = SIZE_PRESETS.get(preset)
    return (width, height) if size is None else size


@shown_to_user
def insert_tag(prompt, name, index):
    name = (name or "").strip()
    if not name:
        raise StudioInputError(f"give Character {index} a name first: the prompt refers to it as [Name]")
    prompt = prompt or ""
    return f"{prompt.rstrip()} [{name}]".lstrip()


def tag_visibility(count) -> list:
    """The tag buttons of the character rows shown (``count`` of them)."""
    count = int(count or 1)
    return [gr.update(visible=i < count) for i in range(MAX_STUDIO_CHARACTERS)]


def size_label(width, height):
    """The Size dropdown's entry for a typed width and height: their preset, or "Custom"."""
    try:
        return size_preset_for(int(width), int(height))
    except (TypeError, ValueError):
        return "Custom"


def tag_label(name, index) -> dict:
    name = (name or "").strip()
    return gr.update(value=f"[{name}]" if name else f"[Character {index}]")

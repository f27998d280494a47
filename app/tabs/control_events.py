"""The Generate tab's control panel handlers: plain functions of the page's values, testable without a browser.

Each of :data:`MAX_STUDIO_CONTROLS` rows has a control image (uploaded ready: a skeleton, depth or edge map; or
made from a photo with "Make from photo"), a kind, a scale and a step range. The page keeps them in a session
state (a list in :data:`CONTROL_KEYS` order, each component's change writes its place), which the Generate and
Edit events take after their own inputs: their public API (gradio_client's ``/generate``) is the one of before.
:func:`parse_controls` turns the list into :class:`~core.conditioning.control.ControlImage` inputs, each value
checked as its own kind in that one place.
No ``from __future__ import annotations`` here: Gradio reads annotations at runtime.
"""

from pathlib import Path

import gradio as gr

from core.conditioning.control import (CONTROL_KINDS, DEFAULT_SCALE, ControlImage, check_kind, check_range,
                                       check_scale)
from core.io.images import ImageInputError, load_image
from core.io.metadata import MetadataError, read_record

from .. import client_input
from ..context import StudioContext
from ..errors import StudioInputError, shown_to_user

MAX_STUDIO_CONTROLS = 2
CONTROL_FIELDS = ("image", "kind", "scale", "start", "end")
CONTROL_KEYS = [f"control{i + 1}_{field}" for i in range(MAX_STUDIO_CONTROLS) for field in CONTROL_FIELDS]
CONTROL_DEFAULTS = {"image": None, "kind": "pose", "scale": DEFAULT_SCALE, "start": 0.0, "end": 1.0}


def control_values(**given) -> list:
    """A list in :data:`CONTROL_KEYS` order from keyword values such as ``control1_image=...``."""
    unknown = set(given) - set(CONTROL_KEYS)
    if unknown:
        raise KeyError(f"unknown fields: {sorted(unknown)}")
    return [given.get(key, CONTROL_DEFAULTS[key.split("_", 1)[1]]) for key in CONTROL_KEYS]


def split_controls(values: list, own: int) -> tuple[list, list | None]:
    """``(the event's own values, the control values or None)``: the controls are the last value (the panel's
    state) when there are ``own + 1`` values."""
    values = list(values)
    if len(values) == own + 1:
        return values[:own], values[own]
    return values, None


def set_value(index: int):
    """The change handler of the panel's ``index``-th component: the state with that value replaced."""

    def update(state, value):
        state = list(state) if isinstance(state, list) and len(state) == len(CONTROL_KEYS) else control_values()
        state[index] = value
        return state

    return update


def parse_controls(values: list | None, paths=None) -> list[ControlImage]:
    """The control rows with an image, checked (kind, scale 0 to 2, a step range within 0-1); a row without an
    image is off. ``paths``: the studio's path policy for image paths."""
    if not values:
        return []
    if not isinstance(values, list) or len(values) != len(CONTROL_KEYS):
        raise StudioInputError(f"control panel: {len(values)} values sent, {len(CONTROL_KEYS)} expected")
    controls = []
    for i in range(MAX_STUDIO_CONTROLS):
        image, kind, scale, start, end = values[i * len(CONTROL_FIELDS):(i + 1) * len(CONTROL_FIELDS)]
        if image is None or image == "":
            continue
        label = f"control {i + 1}"
        kind = check_kind(kind, f"{label}'s kind")
        scale = check_scale(scale, f"{label}'s scale")
        start, end = check_range(start, end, f"{label}'s steps")
        controls.append(ControlImage(_image(image, label, paths), kind, scale, start, end))
    return controls


def _image(value, label: str, paths):
    path = getattr(value, "name", None) or (value.get("path") if isinstance(value, dict) else value)
    if not isinstance(path, (str, Path)):
        raise StudioInputError(f"{label}: the image must be an uploaded file")
    if paths is not None:
        path = paths.resolve(path, what=f"{label}'s image")
    if not Path(path).is_file():
        raise ImageInputError(f"{label}: the uploaded file is gone; upload it again")
    return load_image(path, name=f"{label}'s image")


class ControlEvents:
    """The control panel's handlers, bound to one :class:`StudioContext`."""

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.make = shown_to_user(self._make)
        self.recall = shown_to_user(self._recall)

    def _make(self, photo, kind):
        """The control image of ``kind`` made from the uploaded ``photo`` (the preview the run uses)."""
        from core.conditioning.preprocessors import make_control

        if photo is None:
            raise StudioInputError("upload a photo or drawing first, then press 'Make from photo'")
        image = _image(photo, "the photo", self.ctx.paths)
        control, notes = make_control(image, check_kind(kind), preprocessors=self.ctx.preprocessors())
        gr.Info(notes[0])
        return control.image

    def _recall(self, source):
        """The control rows of a PNG made with control images (read from beside it); unchanged for other PNGs."""
        from core.request import request_from_png

        unchanged = [gr.update()] * len(CONTROL_KEYS)
        if source is None:
            return unchanged
        path = client_input.studio_file(self.ctx, source, "the PNG")
        if not read_record(path).control:
            return unchanged
        try:
            request = request_from_png(path)
        except MetadataError as exc:  # the settings were recalled; only the control images are missing
            gr.Warning(f"The control images were not recalled: {exc}")
            return unchanged
        rows = []
        for i in range(MAX_STUDIO_CONTROLS):
            c = request.controls[i] if i < len(request.controls) else None
            rows += [c.image, c.kind, c.scale, c.start, c.end] if c else [None, "pose", DEFAULT_SCALE, 0.0, 1.0]
        return rows


KIND_CHOICES = list(CONTROL_KINDS)

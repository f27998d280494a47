"""The Generate tab's edit mode: an image to edit (uploaded, or "Edit this" on a gallery or history image) on the
edit canvas, the region to redo painted on its layer, a strength, and the Edit button.

Plain functions of the page's values, like :mod:`app.tabs.generate_events`: the Edit event takes the Generate
event's inputs (characters, masks, prompt, settings, LoRAs, in :data:`generate_events.GENERATE_FIELDS` order),
then the session's paths, the mask specs, the edit canvas and the strength. No ``from __future__ import
annotations`` here: Gradio reads the ``gr.Request`` annotation at runtime.
"""

import gradio as gr

from core.conditioning.edit import output_size
from core.conditioning.masks import RoutingMask
from core.io.metadata import MetadataError, read_record

from .. import client_input
from ..context import StudioContext
from ..errors import StudioInputError, shown_to_user
from ..generation import EditSettings
from ..mask_canvas import edit_canvas
from ..running import SessionRuns
from . import generate_events as ev
from .control_events import split_controls

DEFAULT_STRENGTH = 0.6


class EditEvents:
    """The edit mode's handlers, bound to one :class:`StudioContext`."""

    def __init__(self, ctx: StudioContext, runs: SessionRuns | None = None):
        self.ctx = ctx
        self.runs = runs if runs is not None else SessionRuns(ctx.jobs)  # the Generate tab's: one Cancel for both
        self._zero_gpu_run = ev.zero_gpu_generate(ctx)
        self.edit = shown_to_user(self._edit)
        self.edit_this = shown_to_user(self._edit_this)
        self.recall_edit = shown_to_user(self._recall_edit)
        self.routing_on_image = shown_to_user(self._routing_on_image)
        self.uploaded = shown_to_user(self._uploaded)

    def _edit(self, request: gr.Request, progress=gr.Progress(), *values):
        """Returns ``(gallery paths, session paths, notes markdown, seed)``, as the Generate event does."""
        values, controls = split_controls(values, len(ev.GENERATE_FIELDS) + 4)
        strength, canvas_value = values.pop(), values.pop()
        specs, session_paths = values.pop(), list(values.pop() or [])
        return ev.run_form(self.ctx, self.runs, self._zero_gpu_run, request, progress, values, specs, session_paths,
                           edit=EditSettings(canvas_value, strength), controls=controls)

    def _edit_this(self, path):
        """``(edit canvas, width, height, size preset)`` to edit the image at ``path`` (a gallery or history image)
        at its own size."""
        if not path:
            raise StudioInputError("pick an image in the gallery (or the history) first, then press 'Edit this'")
        canvas = edit_canvas(client_input.studio_file(self.ctx, path, "the image"))
        width, height = output_size(canvas["background"])
        gr.Info("The image is on the edit canvas: paint the region to redo (or nothing, to change all of it), "
                "then press Edit")
        return canvas, width, height, ev.size_preset_for(width, height)

    def _uploaded(self, edit):
        """``(width, height, size preset)`` of an image uploaded to the edit canvas: the output follows it."""
        from ..mask_canvas import edit_from_canvas

        source = edit_from_canvas(edit)[0]
        if source is None:
            return gr.update(), gr.update(), gr.update()
        width, height = output_size(source)
        return width, height, ev.size_preset_for(width, height)

    def _routing_on_image(self, routing, edit, width, height):
        """The routing canvas with the image being edited as its background (unchanged without one)."""
        from ..mask_canvas import canvas_on_image, edit_from_canvas

        if not isinstance(edit, dict) or edit.get("background") is None:
            return gr.update()
        try:
            w, h = int(width), int(height)
        except (TypeError, ValueError):
            return gr.update()
        return canvas_on_image(routing, edit_from_canvas(edit)[0], w, h)

    def _recall_edit(self, source):
        """``(edit canvas, strength)`` of an edit PNG (its source read from beside it); unchanged for other PNGs."""
        from core.request import request_from_png

        if source is None:
            return gr.update(), gr.update()
        path = client_input.studio_file(self.ctx, source, "the PNG")
        if read_record(path).edit is None:
            return gr.update(), gr.update()
        try:
            request = request_from_png(path)
        except MetadataError as exc:  # the settings were recalled; only the edit's source is missing
            gr.Warning(f"The edit was not recalled: {exc}")
            return gr.update(), gr.update()
        region = request.inpaint_region if isinstance(request.inpaint_region, RoutingMask) else None
        return edit_canvas(request.source_image, region), request.strength

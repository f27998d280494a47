"""The Story tab's "Edit this panel": redo a rendered panel from its current image, all of it at a strength or only
a region (a layout name or box), recorded in the render manifest as ``story edit`` records it
(:func:`core.story.edit.prepare_panel_edit`), so Render keeps it and "Render every panel again" makes it again.

No ``from __future__ import annotations`` here: Gradio reads the ``gr.Request`` annotation at runtime.
"""

from types import SimpleNamespace

import gradio as gr

from core.limits import short_repr

from .. import client_input
from ..errors import StudioInputError, shown_to_user
from .edit_events import DEFAULT_STRENGTH
from .story_events import panel_index, render_dir_for

REGIONS = ["whole panel", "left", "right", "top", "bottom", "left-third", "center-third", "right-third"]


def build() -> SimpleNamespace:
    """The controls, in an accordion under the panel number."""
    section = SimpleNamespace()
    with gr.Accordion("Edit this panel (image-to-image, inpainting)", open=False):
        with gr.Row():
            section.strength = gr.Slider(0.0, 1.0, value=DEFAULT_STRENGTH, step=0.05, scale=2,
                                         label="Strength (0 keeps the panel, 1 ignores it)")
            section.region = gr.Dropdown(REGIONS, value="whole panel", allow_custom_value=True, scale=2,
                                         label="Region to redo (or box:x0,y0,x1,y1)")
        with gr.Row():
            section.edit = gr.Button("Edit this panel", scale=2)
            section.undo = gr.Button("Undo its edit", size="sm", scale=1)
    return section


class StoryEditEvents:
    """The handlers, on top of the tab's :class:`app.tabs.story_events.StoryEvents` (its parsing, rendering,
    export and Cancel)."""

    def __init__(self, story_events):
        self.events = story_events
        self.edit_panel = shown_to_user(self._edit_panel)
        self.undo_edit = shown_to_user(self._undo_edit)

    def _edit_panel(self, text, folder, number, strength, region, request: gr.Request = None,
                    progress=gr.Progress()):
        """Records the edit of panel ``number`` (1-based) and renders it; the outputs of Render."""
        return self._run(text, folder, number, request, progress, strength=strength, region=region)

    def _undo_edit(self, text, folder, number, request: gr.Request = None, progress=gr.Progress()):
        return self._run(text, folder, number, request, progress, undo=True)

    def _run(self, text, folder, number, request, progress, strength=DEFAULT_STRENGTH, region=None, undo=False):
        from core.story.edit import prepare_panel_edit
        from core.story.model import StoryError

        story = self.events.checked_story(text, folder)
        index = panel_index(number, len(story.panels))
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise StudioInputError(f"strength must be a number from 0 to 1, got {short_repr(str(strength))}") from None
        mask = None if undo else client_input.region(region, "the region to redo")  # never a file
        try:
            notes = prepare_panel_edit(story, render_dir_for(self.events.ctx, story, request), index, strength, mask,
                                       undo=undo, region_name=f"the region {getattr(mask, 'label', None)!r}")
        except StoryError as exc:
            raise StudioInputError(str(exc).replace("render it first", "press Render first")) from None
        outputs = list(self.events.render_and_export(story, [index], True, request, progress))
        if notes:
            outputs[0] = "\n".join([outputs[0], *(f"- {n}" for n in notes)])
        return tuple(outputs)


def wire(ui, gpu: dict) -> StoryEditEvents:
    """Connects ``ui.edit`` to the Story tab ``ui`` (its text, panel number, outputs and Cancel)."""
    from ..running import cancel_button

    events = StoryEditEvents(ui.events)
    rendered = [ui.notes, ui.panels, ui.panel_images, ui.pages, ui.pdf, ui.zip]
    section = ui.edit
    edit = section.edit.click(ui.events.queued, None, None, queue=False, api_visibility="private").then(
        events.edit_panel, [ui.text, ui.folder, ui.panel_number, section.strength, section.region], rendered,
        api_name="edit_panel", show_progress_on=[ui.pages], **gpu)
    undo = section.undo.click(ui.events.queued, None, None, queue=False, api_visibility="private").then(
        events.undo_edit, [ui.text, ui.folder, ui.panel_number], rendered, api_visibility="private",
        show_progress_on=[ui.pages], **gpu)
    for event in (edit, undo):
        event.then(cancel_button, None, ui.cancel, queue=False, api_visibility="private")
    return events

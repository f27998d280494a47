"""The Generate tab's "Edit an image" section: the edit canvas (the image to edit as its background, the region to
redo painted on its one layer), the strength, "Edit this" for the selected gallery image, and the Edit button.

:func:`build` makes the components inside the tab's layout; :func:`wire` connects them to the tab's own components
(characters, routing canvas, prompt, settings, gallery, Recall), so an edit uses everything a generation uses.
"""

from types import SimpleNamespace

import gradio as gr

from ..api_names import named_api
from ..components import Canvas
from ..context import StudioContext
from ..mask_canvas import EDIT_BRUSH, EDIT_LAYER
from . import control_section
from .edit_events import DEFAULT_STRENGTH, EditEvents
from .generate_events import EDIT_API_NAMES


def build() -> SimpleNamespace:
    """The section's components, in an accordion (closed until an image is put on it)."""
    section = SimpleNamespace()
    with gr.Accordion("Edit an image (image-to-image, inpainting)", open=False,
                      elem_id="edit-section") as section.accordion:
        gr.Markdown("Upload an image, or select a gallery image and press **Edit this**. Paint the region to redo "
                    "(the characters go there); paint nothing to change the whole image. Pixels outside the "
                    "painted region stay as they are.")
        section.canvas = Canvas(
            value=None, type="pil", label="Image to edit and the region to redo",
            layers=gr.LayerOptions(layers=[EDIT_LAYER], allow_additional_layers=False),
            brush=gr.Brush(colors=[f"rgb{EDIT_BRUSH}"], color_mode="fixed", default_size=24),
            sources=("upload", "clipboard"), transforms=(), format="png", height=420, elem_id="edit-canvas")
        section.strength = gr.Slider(0.0, 1.0, value=DEFAULT_STRENGTH, step=0.05,
                                     label="Strength (0 keeps the image, 1 ignores it)", elem_id="edit-strength")
        with gr.Row():
            section.edit_this = gr.Button("Edit this (the selected gallery image)", size="sm", elem_id="edit-this")
            section.run = gr.Button("Edit", variant="primary", elem_id="edit")
    return section


def wire(ctx: StudioContext, ui, generate_events, inputs: list, gpu: dict) -> EditEvents:
    """Connects the section ``ui.edit`` to the tab ``ui``; ``inputs`` are the Generate event's inputs and
    ``generate_events`` its handlers (an edit is a run of the tab: the same Cancel stops it)."""
    from ..running import cancel_button

    events = EditEvents(ctx, generate_events.runs)
    section = ui.edit
    run = section.run.click(generate_events.queued, None, None, queue=False, api_visibility="private").then(
        named_api(events.edit, EDIT_API_NAMES),
        inputs + [ui.session_paths, ui.mask_specs, section.canvas, section.strength]
        + control_section.inputs(ui.control),
        [ui.gallery, ui.session_paths, ui.notes, ui.seed], api_name="edit", show_progress_on=[ui.gallery], **gpu)
    run.then(cancel_button, None, ui.cancel, queue=False, api_visibility="private")
    section.edit_this.click(events.edit_this, ui.recall_file, [section.canvas, ui.width, ui.height, ui.size_preset],
                            api_visibility="private").success(
        lambda: gr.Accordion(open=True), None, section.accordion, api_visibility="private").then(
        events.routing_on_image, [ui.canvas, section.canvas, ui.width, ui.height], ui.canvas,
        api_visibility="private")  # the characters' masks are painted on the picture being edited
    section.canvas.upload(events.uploaded, section.canvas, [ui.width, ui.height, ui.size_preset],
                          api_visibility="private").then(
        events.routing_on_image, [ui.canvas, section.canvas, ui.width, ui.height], ui.canvas, api_visibility="private")
    ui.recall.click(events.recall_edit, ui.recall_file, [section.canvas, section.strength],
                    api_visibility="private")
    return events

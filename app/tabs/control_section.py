"""The Generate tab's control panel: per row a control image (upload a ready skeleton, depth or edge map, or make
one from a photo with a preview), its kind, scale and step range. Generate and Edit both use it.

:func:`build` makes the components inside the tab's layout; :func:`wire` connects "Make from photo" and Recall
(the Generate and Edit events take :func:`inputs` after their own).
"""

from types import SimpleNamespace

import gradio as gr

from core.conditioning.control import MAX_SCALE

from ..context import StudioContext
from .control_events import (CONTROL_DEFAULTS, KIND_CHOICES, MAX_STUDIO_CONTROLS, ControlEvents, control_values,
                             set_value)


def build() -> SimpleNamespace:
    section = SimpleNamespace(rows=[], state=gr.State(control_values()))
    with gr.Accordion("Pose and layout control (ControlNet)", open=False, elem_id="control-section") as section.accordion:
        gr.Markdown("The picture follows a pose skeleton, a depth map or edges. Upload a ready control image "
                    "(an OpenPose-style skeleton, a depth map, an edge map) on the right, or a photo or drawing on "
                    "the left and press **Make from photo**. Scale 0.3-0.8 usually; the steps range says when it "
                    "acts (0-0.5: the layout only). To change a pose, upload an edited skeleton.")
        for i in range(MAX_STUDIO_CONTROLS):
            row = SimpleNamespace()
            with gr.Group():
                with gr.Row(equal_height=True):
                    row.photo = gr.Image(type="filepath", label=f"Photo or drawing {i + 1}", height=220,
                                         sources=["upload", "clipboard"], elem_id=f"control-photo-{i + 1}")
                    row.image = gr.Image(type="filepath", label=f"Control image {i + 1} (used)", height=220,
                                         sources=["upload", "clipboard"], format="png",
                                         elem_id=f"control-image-{i + 1}")
                with gr.Row():
                    row.kind = gr.Dropdown(KIND_CHOICES, value=CONTROL_DEFAULTS["kind"], label="Kind", scale=2,
                                           elem_id=f"control-kind-{i + 1}")
                    row.make = gr.Button("Make from photo", size="sm", scale=1, elem_id=f"control-make-{i + 1}")
                with gr.Row():
                    row.scale = gr.Slider(0.0, MAX_SCALE, value=CONTROL_DEFAULTS["scale"], step=0.05,
                                          label="Scale", elem_id=f"control-scale-{i + 1}")
                    row.start = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="From step (fraction)")
                    row.end = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="To step (fraction)")
            section.rows.append(row)
    return section


def components(section) -> list:
    """The panel's components in :data:`app.tabs.control_events.CONTROL_KEYS` order."""
    return [c for row in section.rows for c in (row.image, row.kind, row.scale, row.start, row.end)]


def inputs(section) -> list:
    """What the Generate and Edit events take after their own inputs: the panel's state."""
    return [section.state]


def wire(ctx: StudioContext, ui) -> ControlEvents:
    events = ControlEvents(ctx)
    section = ui.control
    for row in section.rows:
        row.make.click(events.make, [row.photo, row.kind], row.image, api_visibility="private")
    for index, component in enumerate(components(section)):
        component.change(set_value(index), [section.state, component], section.state, api_visibility="private",
                         queue=False)
    ui.recall.click(events.recall, ui.recall_file, components(section), api_visibility="private")
    return events

"""The History tab: past generations (persisted in the user data folder), newest first, with Recall."""

from types import SimpleNamespace

import gradio as gr

from core.metadata import MetadataError, read_record

from ..context import StudioContext
from ..errors import shown_to_user


class HistoryEvents:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.select = shown_to_user(self._select)
        self.clear = shown_to_user(self._clear)

    def gallery(self) -> list[tuple[str, str]]:
        return [(e.path, e.caption()) for e in self.ctx.history.entries()]

    def _select(self, evt: gr.SelectData):
        """``(path, details markdown)`` of the clicked image."""
        entries = self.ctx.history.entries()
        if evt.index is None or evt.index >= len(entries):
            return None, ""
        path = entries[evt.index].path
        try:
            text = read_record(path).parameters_text()
        except MetadataError as exc:
            text = f"(no settings: {exc})"
        return path, f"`{path}`\n\n```\n{text}\n```"

    def _clear(self):
        self.ctx.history.clear()
        gr.Info("History cleared (the images stay in the output folder)")
        return [], None, ""


def build(ctx: StudioContext) -> SimpleNamespace:
    events = HistoryEvents(ctx)
    ui = SimpleNamespace(events=events)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.gallery = gr.Gallery(value=events.gallery, label="Past generations", columns=4, height=480,
                                    allow_preview=False)
            with gr.Row():
                ui.refresh = gr.Button("Refresh", size="sm")
                ui.clear = gr.Button("Forget history", size="sm", variant="stop")
        with gr.Column(scale=2):
            ui.selected = gr.Textbox(label="Selected image", interactive=False, visible=False)
            ui.details = gr.Markdown()
            ui.recall = gr.Button("Recall in Generate", variant="primary")
    ui.refresh.click(events.gallery, None, ui.gallery, api_visibility="private")
    ui.gallery.select(events.select, None, [ui.selected, ui.details], api_visibility="private")
    ui.clear.click(events.clear, None, [ui.gallery, ui.selected, ui.details], api_visibility="private")
    return ui

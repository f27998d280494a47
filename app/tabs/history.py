"""The History tab: past generations (persisted in the user data folder), newest first, with Recall."""

from types import SimpleNamespace

import gradio as gr

from core.conditioning.character import Character
from core.io.metadata import MetadataError, read_record

from .. import client_input
from ..context import StudioContext
from ..errors import StudioInputError, shown_to_user


class HistoryEvents:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.select = shown_to_user(self._select)
        self.clear = shown_to_user(self._clear)
        self.score = shown_to_user(self._score)

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

    def _score(self, path: str | None) -> str:
        """(``path`` comes from the server-side selection state, never from the client.)"""
        return self._score_path(client_input.studio_file(self.ctx, path, "image") if path else None)

    def _score_path(self, path) -> str:
        """CLIP-I and DINO-I of the image against its characters, CLIP-T against its prompt (markdown)."""
        from PIL import Image

        from core.evaluation.metrics import case_from_characters

        if not path:
            raise StudioInputError("pick an image in the history first")
        record = read_record(path)
        characters = [Character.from_record(c) for c in record.characters]
        with self.ctx.gpu_lock:
            scores = self.ctx.scorer().score([case_from_characters(Image.open(path), record.prompt, characters)])[0]
        rows = [("CLIP-I", scores.clip_i, "character likeness (CLIP)"),
                ("DINO-I", scores.dino_i, "character likeness (DINO)"),
                ("CLIP-T", scores.clip_t, "prompt match (CLIP)")]
        lines = ["| metric | score | what |", "| --- | --- | --- |"]
        lines += [f"| {name} | {'n/a' if value is None else f'{value:.3f}'} | {what} |" for name, value, what in rows]
        return "\n".join(lines) + "\n\nCosine similarities in [-1, 1], as in the InstantCharacter paper."

    def _clear(self, request: gr.Request = None):
        self.ctx.access.check_owner(request, "Forgetting the history")
        self.ctx.history.clear()
        self.ctx.served_paths()  # the forgotten images of earlier output folders are no longer served
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
            ui.selected = gr.State(None)  # server-side: a client cannot name a file here
            ui.details = gr.Markdown()
            ui.recall = gr.Button("Recall in Generate", variant="primary")
            ui.edit = gr.Button("Edit in Generate", size="sm")  # wired by app.studio (the Generate tab's edit mode)
            ui.score = gr.Button("Score: CLIP-I, DINO-I, CLIP-T", size="sm")
            ui.scores = gr.Markdown()
    ui.refresh.click(events.gallery, None, ui.gallery, api_visibility="private")
    ui.gallery.select(events.select, None, [ui.selected, ui.details], api_visibility="private")
    ui.score.click(events.score, ui.selected, ui.scores, concurrency_id="gpu", concurrency_limit=1,
                   api_visibility="private")
    ui.clear.click(events.clear, None, [ui.gallery, ui.selected, ui.details], api_visibility="private")
    return ui

"""The Library tab: the saved characters (image, name, default scale), shared by every tab."""

from types import SimpleNamespace

import gradio as gr

from core.limits import MAX_SCALE

from ..components import CharacterImage
from ..context import StudioContext
from ..errors import OwnerOnlyError, StudioInputError, shown_to_user


def check_may_change(ctx: StudioContext, entry, request, verb: str) -> None:
    """The owner may replace or delete any entry; a visitor only one their own login added (anonymous visitors:
    none). ``entry`` is what the folder holds (:meth:`CharacterLibrary.stored_at`), whatever name was typed."""
    if entry is None or ctx.access.is_owner(request):
        return
    login = getattr(request, "username", None)
    if login is None or entry.added_by != login:
        raise OwnerOnlyError(f"the library already has [{entry.name}] under that name: only the studio's owner "
                             f"or whoever added it may {verb} it (choose another name)")


def save_character(ctx: StudioContext, image, name, scale, request=None, description: str | None = None):
    """Saves a character from any tab under the one ownership rule (:func:`check_may_change`)."""
    if isinstance(name, str) and name.strip():
        check_may_change(ctx, ctx.library.stored_at(name), request, "replace")
    login = None if ctx.access.is_owner(request) else getattr(request, "username", None)
    entry = ctx.library.save(image, name, scale, description, added_by=login)
    gr.Info(f"Saved [{entry.name}] to the library")
    return entry


class LibraryEvents:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.save = shown_to_user(self._save)
        self.delete = shown_to_user(self._delete)
        self.select = shown_to_user(self._select)

    def gallery(self) -> list[tuple[str, str]]:
        return [(str(c.image_path), f"{c.name} · scale {c.scale:g}") for c in self.ctx.library.entries()]

    def _save(self, image, name, scale, request: gr.Request = None):
        save_character(self.ctx, image, name, scale, request)
        return self.gallery()

    def _delete(self, name, request: gr.Request = None):
        if not name:
            raise StudioInputError("select a character in the library first")
        entry = self.ctx.library.get(name)
        check_may_change(self.ctx, self.ctx.library.stored_at(entry.name), request, "delete")
        self.ctx.library.delete(name)
        gr.Info(f"Deleted [{name}] from the library")
        return self.gallery(), None

    def _select(self, evt: gr.SelectData):
        entries = self.ctx.library.entries()
        return entries[evt.index].name if evt.index is not None and evt.index < len(entries) else None


def build(ctx: StudioContext) -> SimpleNamespace:
    events = LibraryEvents(ctx)
    ui = SimpleNamespace()
    gr.Markdown("Saved characters can be picked in the Generate tab (\"From library\") and by the other tabs.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.gallery = gr.Gallery(value=events.gallery, label="Library", columns=4, height=420, allow_preview=False,
                                    elem_id="library-gallery")
            with gr.Row():
                ui.selected = gr.Textbox(label="Selected", interactive=False)
                ui.delete = gr.Button("Delete selected", variant="stop", size="sm")
        with gr.Column(scale=2):
            ui.image = CharacterImage(label="New character", type="filepath", image_mode=None, format="png",
                                      sources=["upload", "clipboard"], height=240, elem_id="library-image")
            ui.name = gr.Textbox(label="Name", max_lines=1, elem_id="library-name")
            ui.scale = gr.Slider(0.0, MAX_SCALE, value=0.9, step=0.05, label="Default scale")
            ui.save = gr.Button("Save to library", variant="primary", elem_id="library-save")
    ui.save.click(events.save, [ui.image, ui.name, ui.scale], ui.gallery, api_visibility="private")
    ui.gallery.select(events.select, None, ui.selected, api_visibility="private")
    ui.delete.click(events.delete, ui.selected, [ui.gallery, ui.selected], api_visibility="private")
    ui.refresh = lambda: events.gallery()
    return ui

"""The Story tab: write a story (examples, library characters), see its panels and pages, render, reseed, download.

The handlers live in :mod:`app.tabs.story_events`; this module only builds the components and wires them.
"""

from types import SimpleNamespace

import gradio as gr

from core.limits import MAX_CHARACTERS, MAX_PANELS, MAX_STEPS, MAX_STORY_BYTES

from ..components import OutputGallery
from ..context import StudioContext
from ..running import cancel_button
from . import story_edit
from . import story_events as ev
from .generate import GPU

DEFAULT_EXAMPLE = "fishing-trip.story"
FORMAT_HELP = (
    "One `key: value` header per line (`title`, `style`, `size: 1024x768`, `seed`, `layout: comic` / `strip` / "
    "`grid 2x3`, `page: A4 portrait`), `character Name: image.png`, then `---` and one panel per line: "
    "`[Name@left] does something  # caption`, `[NC]` for no character, `> Name: words` for a speech bubble, "
    "`seed: 123` to pin a panel's seed. Manga: `reading: right-to-left`, `bubbles: vertical`; web comics: "
    "`layout: webtoon` (`webtoon: 800x1280`, a panel's own `height: 1200`); `font: file.ttf` for a script the "
    "system has no font for. The full format is in `core/story/FORMAT.md`. "
    f"At most {MAX_PANELS} panels, {MAX_CHARACTERS} characters and {MAX_STEPS} steps; character images come from "
    "the studio's folders (library, outputs, stories, uploads, `assets/`)."
)


def _editor(ctx: StudioContext, ui: SimpleNamespace, summary: str) -> None:
    examples = ev.example_names()
    with gr.Row():
        ui.example = gr.Dropdown(choices=examples, value=DEFAULT_EXAMPLE if DEFAULT_EXAMPLE in examples else None,
                                 label="Example story", scale=3)
        ui.load_example = gr.Button("Load example", size="sm", scale=1)
    with gr.Row():
        ui.library = gr.Dropdown(choices=ctx.library.names(), value=None, label="Character from the library",
                                 elem_id="story-library",
                                 scale=3)
        ui.add_character = gr.Button("Add to story", size="sm", scale=1, elem_id="story-add-character")
    text, folder = ev.load_example(DEFAULT_EXAMPLE) if DEFAULT_EXAMPLE in examples else ("", str(ev.STORIES_DIR))
    ui.folder = gr.State(folder)
    # the story's problems (or its summary) just above the text being typed, not across the page
    ui.summary = gr.Markdown(summary, elem_id="story-summary")
    ui.text = gr.Textbox(value=text, label="Story", lines=24, max_lines=60, max_length=MAX_STORY_BYTES,
                         elem_id="story-text")
    with gr.Accordion("How to write a story", open=False):
        gr.Markdown(FORMAT_HELP)


# the prompt column gets the room: whole prompts, wrapped, never cut off
PANEL_COLUMN_WIDTHS = ["36px", "56px", "16%", "30%", "13%", "108px", "104px"]


def _results(ui: SimpleNamespace, rows: list, pages: list) -> None:
    ui.panels = gr.Dataframe(value=rows or None, headers=ev.PANEL_HEADERS, label="Panels", interactive=False,
                             wrap=True, column_widths=PANEL_COLUMN_WIDTHS, max_height=420, elem_id="story-panels")
    with gr.Row():
        ui.render = gr.Button("Render", variant="primary", scale=2)
        ui.cancel = gr.Button("Cancel", variant="stop", scale=1)
        ui.everything = gr.Checkbox(label="Render every panel again", value=False, scale=2)
    with gr.Row():
        ui.panel_number = gr.Number(label="Panel", value=1, precision=0, minimum=1, scale=1)
        ui.new_seed = gr.Button("Regenerate with a new seed", scale=2)
    ui.edit = story_edit.build()  # "Edit this panel" (app/tabs/story_edit.py)
    ui.notes = gr.Markdown()
    with gr.Tabs():
        with gr.Tab("Pages"):
            # a webtoon scrolls as one strip here (its slices, the exported pages, are in the gallery below)
            ui.strip = gr.HTML(value="", visible=False, elem_id="story-strip")
            ui.pages = OutputGallery(value=pages or None, label="Pages", columns=2, height=560, object_fit="contain")
        with gr.Tab("Panels"):
            ui.panel_images = gr.Gallery(label="Rendered panels", columns=4, height=560)
    with gr.Row():
        ui.pdf = gr.File(label="PDF", interactive=False)
        ui.zip = gr.File(label="ZIP (panels, pages, PDF, manifest, story, characters)", interactive=False)


def build(ctx: StudioContext) -> SimpleNamespace:
    """Creates the tab's components inside the current Blocks/Tab and wires their events; returns them."""
    events = ev.StoryEvents(ctx)
    ui = SimpleNamespace(events=events)
    text, folder = ev.load_example(DEFAULT_EXAMPLE) if DEFAULT_EXAMPLE in ev.example_names() else ("", "")
    summary, rows, pages = events.parse(text, folder or str(ev.STORIES_DIR))
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            _editor(ctx, ui, summary)
        with gr.Column(scale=5):
            _results(ui, rows, pages)
    _wire(ctx, ui, events)
    ui.edit_events = story_edit.wire(ui, GPU)
    return ui


def _wire(ctx: StudioContext, ui: SimpleNamespace, events: ev.StoryEvents) -> None:
    parsed = [ui.summary, ui.panels, ui.pages]
    rendered = [ui.notes, ui.panels, ui.panel_images, ui.pages, ui.pdf, ui.zip]
    ui.load_example.click(events.load_example, ui.example, [ui.text, ui.folder, *parsed], api_visibility="private")
    ui.text.change(events.parse, [ui.text, ui.folder], parsed, trigger_mode="always_last", api_visibility="private"
                   ).then(events.strip, [ui.text, ui.folder], ui.strip, api_visibility="private")
    ui.library.focus(lambda: gr.update(choices=ctx.library.names()), None, ui.library, api_visibility="private")
    ui.add_character.click(events.add_library_character, [ui.text, ui.library, ui.folder], ui.text, api_visibility="private")
    # the progress overlay (per panel and per step) over the pages only
    ui.render_event = ui.render.click(events.queued, None, None, queue=False, api_visibility="private").then(
        events.render, [ui.text, ui.folder, ui.everything], rendered, api_name="render_story",
        show_progress_on=[ui.pages], **GPU)
    ui.new_seed_event = ui.new_seed.click(events.queued, None, None, queue=False, api_visibility="private").then(
        events.new_seed, [ui.text, ui.folder, ui.panel_number], [ui.text, *rendered], api_name="regenerate_panel",
        show_progress_on=[ui.pages], **GPU)
    # Cancel stops the panel being drawn at its next step; the button reads "Cancelling..." until it has
    ui.cancel.click(events.cancel, None, ui.cancel, queue=False, api_visibility="private").then(
        events.wait_until_stopped, None, ui.cancel, queue=False, api_visibility="private")
    for event in (ui.render_event, ui.new_seed_event):
        event.then(cancel_button, None, ui.cancel, queue=False, api_visibility="private")
        event.then(events.strip, [ui.text, ui.folder], ui.strip, api_visibility="private")

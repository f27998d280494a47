"""The Generate tab: characters, routing-mask canvas, prompt and settings, Generate/Cancel, gallery and Recall."""

from types import SimpleNamespace

import gradio as gr

from core.limits import (MAX_DESCRIPTION_CHARS, MAX_GUIDANCE, MAX_IMAGES_PER_RUN, MAX_NAME_CHARS, MAX_PROMPT_CHARS,
                         MAX_SCALE, MAX_SEED, MAX_SIDE, MAX_STEPS, MAX_TRUE_CFG, MIN_SIDE)

from ..api_names import named_api
from ..components import Canvas, CharacterImage
from ..context import MAX_STUDIO_CHARACTERS, StudioContext
from ..errors import StudioInputError, shown_to_user
from ..running import cancel_button
from .library import save_character
from core.loading.loras import MAX_LORAS, MAX_WEIGHT
from ..mask_canvas import COLOURS, LAYER_NAMES, LAYOUTS, blank_canvas, preview_size
from . import control_section, edit_section
from . import generate_events as ev

GPU = dict(concurrency_limit=1, concurrency_id="gpu")  # one GPU job at a time across all tabs
THUMBNAIL_HEIGHT = 396  # with its toolbar as tall as the name, scale and library controls beside it: no dead space


def _character_rows(ctx: StudioContext, defaults: dict) -> SimpleNamespace:
    rows = SimpleNamespace(groups=[], images=[], names=[], scales=[], backgrounds=[], descriptions=[], library=[],
                           save=[], remove=[], up=[])
    for i in range(MAX_STUDIO_CHARACTERS):
        with gr.Group(visible=i == 0) as group:
            # the label above the picture, not over it (a floating label hides the top of a small thumbnail)
            gr.Markdown(f"**Character {i + 1}** ({LAYER_NAMES[i].split('(')[1]} layer", padding=True)
            with gr.Row(equal_height=True):
                image = CharacterImage(label=f"Character {i + 1}", show_label=False, type="filepath",
                                       image_mode=None, format="png", sources=["upload", "clipboard"],
                                       height=THUMBNAIL_HEIGHT, elem_id=f"character-image-{i + 1}")
                with gr.Column(min_width=220):
                    name = gr.Textbox(label="Name (prompt tag)", placeholder="e.g. Mia", max_lines=1,
                                      max_length=MAX_NAME_CHARS, elem_id=f"character-name-{i + 1}")
                    description = gr.Textbox(label="Description (replaces [Name] in the prompt)", max_lines=1,
                                             max_length=MAX_DESCRIPTION_CHARS, placeholder="e.g. a girl in a red coat",
                                             elem_id=f"character-description-{i + 1}")
                    scale = gr.Slider(0.0, MAX_SCALE, value=defaults["scale"], step=0.05, label="Scale")
                    background = gr.Checkbox(label="Remove plain background", value=False)
                    library = gr.Dropdown(choices=ctx.library.names(), value=None, label="From library",
                                          allow_custom_value=False, elem_id=f"character-library-{i + 1}")
                    with gr.Row():
                        save = gr.Button("Save to library", size="sm")
                        up = gr.Button("Move up", size="sm", visible=i > 0)
                        remove = gr.Button("Remove", size="sm")
        for attr, value in zip(("groups", "images", "names", "scales", "backgrounds", "descriptions", "library", "save",
                                "up", "remove"),
                               (group, image, name, scale, background, description, library, save, up, remove)):
            getattr(rows, attr).append(value)
    return rows


def build(ctx: StudioContext) -> SimpleNamespace:
    """Creates the tab's components inside the current Blocks/Tab and wires their events; returns them."""
    defaults = ev.defaults_for(ctx)
    events = ev.GenerateEvents(ctx)
    ui = SimpleNamespace()
    ui.count = gr.State(1)
    ui.session_paths = gr.State([])
    ui.mask_specs = gr.State([None] * MAX_STUDIO_CHARACTERS)  # the exact masks that drew each canvas layer
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            gr.Markdown(f"### Characters (up to {MAX_STUDIO_CHARACTERS})")
            ui.rows = _character_rows(ctx, defaults)
            ui.add = gr.Button("Add character", size="sm")
            gr.Markdown("### Where each character goes\nPaint on a character's layer (its colour), or pick a layout. "
                        "Leave the canvas empty to place characters automatically.")
            ui.canvas = Canvas(
                value=blank_canvas(defaults["width"], defaults["height"]), type="pil", label="Routing masks",
                layers=gr.LayerOptions(layers=list(LAYER_NAMES), allow_additional_layers=False),
                brush=gr.Brush(colors=[f"rgb{c}" for c in COLOURS], color_mode="fixed"),
                canvas_size=preview_size(defaults["width"], defaults["height"]), sources=(), transforms=(),
                format="png", height=460, elem_id="mask-canvas")
            with gr.Row():
                ui.layout = gr.Dropdown(list(LAYOUTS), value="Left / right", label="Layout", scale=2)
                ui.apply_layout = gr.Button("Apply layout", size="sm")
                ui.whole = gr.Button("Whole image", size="sm")
                ui.clear = gr.Button("Clear masks", size="sm")
        with gr.Column(scale=6):
            ui.prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", max_length=MAX_PROMPT_CHARS,
                                   placeholder="[Mia] reading in a sunny café, watercolour")
            with gr.Row():
                # one tag button per character row on the page (the others appear with "Add character")
                ui.tags = [gr.Button(f"[Character {i + 1}]", size="sm", min_width=80, visible=i == 0)
                           for i in range(MAX_STUDIO_CHARACTERS)]
            with gr.Row():
                ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
                ui.cancel = gr.Button("Cancel", variant="stop")
            ui.gallery = gr.Gallery(label="Results", columns=2, height=420, format="png", type="filepath",
                                    elem_id="gallery")
            ui.notes = gr.Markdown(elem_id="notes")
            with gr.Accordion("Settings", open=True):
                ui.negative_prompt = gr.Textbox(label="Negative prompt (used when True CFG is above 1: each step "
                                                      "then takes twice as long)", lines=1,
                                                max_length=MAX_PROMPT_CHARS)
                with gr.Row():
                    ui.true_cfg_scale = gr.Slider(1.0, MAX_TRUE_CFG, value=defaults["true_cfg_scale"], step=0.5,
                                                  label="True CFG")
                    ui.guidance = gr.Slider(0.0, MAX_GUIDANCE, value=defaults["guidance"], step=0.1, label="Guidance")
                    ui.steps = gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="Steps")
                with gr.Row():
                    ui.size_preset = gr.Dropdown(list(ev.SIZE_PRESETS), label="Size", elem_id="size-preset",
                                                 value=ev.size_preset_for(defaults["width"], defaults["height"]))
                    ui.width = gr.Number(value=defaults["width"], label="Width", precision=0, step=16, minimum=MIN_SIDE,
                                         maximum=MAX_SIDE)
                    ui.height = gr.Number(value=defaults["height"], label="Height", precision=0, step=16,
                                          minimum=MIN_SIDE, maximum=MAX_SIDE)
                with gr.Row():
                    ui.seed = gr.Number(value=defaults["seed"], label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                    ui.randomize_seed = gr.Checkbox(value=True, label="Randomize seed")
                    ui.images = gr.Slider(1, MAX_IMAGES_PER_RUN, value=1, step=1, label="Images per run")
                ui.regional_text = gr.Radio(["auto", "on", "off"], value=defaults["regional_text"],
                                            label="Regional text: each character's words act in its region only "
                                                  "(auto: with two or more characters in regions)",
                                            elem_id="regional-text")
            with gr.Accordion("Style LoRAs", open=False):
                gr.Markdown("A `.safetensors` file, `owner/repo` or `owner/repo/file.safetensors`; trigger words "
                            "are added to the prompt.")
                ui.loras = []
                for j in range(MAX_LORAS):
                    with gr.Row():
                        ui.loras += [gr.Textbox(label=f"LoRA {j + 1}", scale=3, max_lines=1),
                                     gr.Slider(-MAX_WEIGHT, MAX_WEIGHT, value=1.0, step=0.05, label="Weight", scale=2),
                                     gr.Textbox(label="Trigger words", scale=2, max_lines=1)]
            with gr.Accordion("Recall", open=False, elem_id="recall"):
                ui.recall_file = gr.File(label="A PNG made by the studio (or click a gallery image)",
                                         file_types=[".png"], type="filepath", elem_id="recall-file")
                ui.recall = gr.Button("Recall settings")
            ui.edit = edit_section.build()  # edit mode: image-to-image and inpainting
            ui.control = control_section.build()  # pose, depth and edge control (ControlNet)
    _wire(ctx, ui, events)
    return ui


def _slot_components(ui) -> list:
    r = ui.rows
    return [c for i in range(MAX_STUDIO_CHARACTERS)
            for c in (r.images[i], r.names[i], r.scales[i], r.backgrounds[i], r.descriptions[i])]


def generate_inputs(ui) -> list:
    """The Generate event's inputs, in :data:`generate_events.GENERATE_FIELDS` order."""
    return _slot_components(ui) + [ui.canvas, ui.prompt, ui.negative_prompt, ui.true_cfg_scale, ui.steps,
                                   ui.guidance, ui.width, ui.height, ui.seed, ui.randomize_seed, ui.images,
                                   ui.regional_text] + ui.loras


def recall_outputs(ui) -> list:
    """The Recall event's outputs, in :data:`generate_events.RECALL_FIELDS` order."""
    return (_slot_components(ui) + ui.rows.groups + [ui.count, ui.canvas, ui.prompt, ui.negative_prompt,
                                                     ui.true_cfg_scale, ui.steps, ui.guidance, ui.width, ui.height,
                                                     ui.seed, ui.randomize_seed, ui.regional_text,
                                                     ui.size_preset] + ui.loras)


def _wire(ctx: StudioContext, ui, events: ev.GenerateEvents) -> None:
    rows = ui.rows
    slot_values = _slot_components(ui)
    reorder_outputs = slot_values + rows.groups + [ui.count, ui.canvas]
    ui.add.click(ev.add_slot, ui.count, rows.groups + [ui.count], api_visibility="private")
    # the tag buttons follow the rows shown (add, remove, recall all change the count)
    ui.count.change(ev.tag_visibility, ui.count, ui.tags, api_visibility="private")
    for i in range(MAX_STUDIO_CHARACTERS):
        remove, move_up = ev.slot_handlers(i)
        head = [ui.count, ui.canvas, ui.width, ui.height]
        rows.remove[i].click(remove, head + slot_values, reorder_outputs, api_visibility="private").then(
            ev.no_specs, None, ui.mask_specs, api_visibility="private")
        rows.up[i].click(move_up, head + slot_values, reorder_outputs, api_visibility="private").then(
            ev.no_specs, None, ui.mask_specs, api_visibility="private")
        rows.names[i].change(ev.tag_label, [rows.names[i], gr.State(i + 1)], ui.tags[i], api_visibility="private")
        ui.tags[i].click(ev.insert_tag, [ui.prompt, rows.names[i], gr.State(i + 1)], ui.prompt,
                         api_visibility="private")
        rows.save[i].click(_library_saver(ctx), [rows.images[i], rows.names[i], rows.scales[i], rows.descriptions[i]],
                           rows.library[i], api_visibility="private")
        rows.library[i].focus(lambda: gr.update(choices=ctx.library.names()), None, rows.library[i],
                              api_visibility="private")
        rows.library[i].input(shown_to_user(lambda name: _from_library(ctx, name)), rows.library[i],
                              [rows.images[i], rows.names[i], rows.scales[i], rows.descriptions[i]],
                              api_visibility="private")
    # Every event that redraws the canvas runs one at a time (one queue slot, "canvas"), a click while one is
    # pending is dropped, and no progress overlay covers the canvas: a Clear or a size change landing while Apply
    # layout still redraws it (issue 22) cannot leave the editor blank under a "processing" overlay.
    canvas = dict(api_visibility="private", concurrency_id="canvas", concurrency_limit=1, trigger_mode="once",
                  show_progress="hidden")
    ui.apply_layout.click(ev.apply_layout_with_specs, [ui.layout, ui.count, ui.width, ui.height, *rows.images],
                          [ui.canvas, ui.mask_specs], **canvas)
    ui.whole.click(ev.apply_layout_with_specs, [gr.State("Whole image"), ui.count, ui.width, ui.height,
                                                *rows.images], [ui.canvas, ui.mask_specs], **canvas)
    ui.clear.click(ev.clear_canvas, [ui.width, ui.height], ui.canvas, **canvas).then(
        ev.no_specs, None, ui.mask_specs, api_visibility="private")
    ui.size_preset.input(ev.pick_size, [ui.size_preset, ui.width, ui.height], [ui.width, ui.height],
                         api_visibility="private").then(ev.follow_size, [ui.canvas, ui.width, ui.height], ui.canvas,
                                                        **canvas)
    for box in (ui.width, ui.height):
        # a typed size names its preset, or "Custom" (typing fires ``input``; a preset's own values do not)
        box.input(ev.size_label, [ui.width, ui.height], ui.size_preset, api_visibility="private")
        for trigger in (box.blur, box.submit):
            trigger(ev.follow_size, [ui.canvas, ui.width, ui.height], ui.canvas, **canvas)
    # the progress overlay once, over the gallery (not over the notes and the Seed field too)
    run = ui.generate.click(events.queued, None, None, queue=False, api_visibility="private").then(
        named_api(events.generate, ev.GENERATE_API_NAMES),
        generate_inputs(ui) + [ui.session_paths, ui.mask_specs] + control_section.inputs(ui.control),
        [ui.gallery, ui.session_paths, ui.notes, ui.seed], api_name="generate", show_progress_on=[ui.gallery], **GPU)
    # Cancel stops a running job at its next denoising step (the run returns, the queue is free at once) and
    # drops one still waiting in the queue; the button reads "Cancelling..." until this session's job is over
    ui.cancel.click(events.cancel, None, ui.cancel, queue=False, api_name="cancel").then(
        events.wait_until_stopped, None, ui.cancel, queue=False, api_visibility="private")
    run.then(cancel_button, None, ui.cancel, queue=False, api_visibility="private")
    ui.generate_event = run
    ui.gallery.select(_selected_path, ui.session_paths, ui.recall_file, api_visibility="private")
    ui.recall.click(events.recall_with_masks, ui.recall_file, recall_outputs(ui) + [ui.mask_specs],
                    api_name="recall").success(recalled_note, ui.recall_file, ui.notes, queue=False,
                                               api_visibility="private")  # the last run's note no longer applies
    ui.recall_event_handler = events.recall_with_masks
    ui.edit_events = edit_section.wire(ctx, ui, events, generate_inputs(ui), GPU)
    ui.control_events = control_section.wire(ctx, ui)


def recalled_note(source) -> str:
    """The note after a Recall (replacing the last run's, e.g. "cancelled: 0 of 1 images finished"): which image the
    settings came from, by file name only; nothing is read here."""
    name = str(getattr(source, "name", source) or "").replace("\\", "/").rsplit("/", 1)[-1]
    return f"Settings recalled from {name[:120]}: press Generate to make it again." if name else ""


def _selected_path(paths, evt: gr.SelectData):
    return paths[evt.index] if paths and evt.index is not None and evt.index < len(paths) else None


def _library_saver(ctx: StudioContext):
    """The "save to library" handler: anyone may add a character; replacing one is for the owner."""

    def save(request: gr.Request, image, name, scale, description=None):
        return _save_to_library(ctx, image, name, scale, request, description)

    return shown_to_user(save)


def _save_to_library(ctx: StudioContext, image, name, scale, request=None, description=None):
    if description is not None and not isinstance(description, str):
        raise StudioInputError(f"the description must be text, got {type(description).__name__}")
    # the Library tab's rule: ownership by the folder the name maps to
    save_character(ctx, image, name, scale, request, " ".join((description or "").split()) or None)
    return gr.update(choices=ctx.library.names(), value=None)


def _from_library(ctx: StudioContext, name):
    if not name:
        return gr.update(), gr.update(), gr.update(), gr.update()
    entry = ctx.library.get(name)
    return str(entry.image_path), entry.name, entry.scale, entry.description or ""

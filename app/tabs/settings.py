"""The Settings tab: model sources, memory preset with the detected GPU and the planner's estimate, output folder,
load/unload with progress."""

import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from core.limits import short_repr
from core.loading.component_files import check_file, weight_files
from core.loading.single_file import inspect_transformer_file, is_transformer_file
from core.loading.sources import ModelSourceError

from ..arguments import SPEED_CHOICES
from ..context import NO_GPU_NOTICE, PRESET_CHOICES, StudioContext
from ..errors import StudioInputError, shown_to_user
from .generate import GPU


def machine_text(ctx: StudioContext) -> str:
    """The detected GPU and RAM, or the no-GPU notice."""
    from core.loading.memory import GiB, detect_memory

    if ctx.zero_gpu:
        return "Running on **ZeroGPU**: a GPU is attached for each generation."
    mem = detect_memory()
    ram = f"{mem.ram_total_bytes / GiB:.0f} GiB RAM" if mem.ram_total_bytes else "RAM unknown"
    if mem.vram_total_bytes is None:
        if ctx.settings.is_tiny:  # already on the tiny models: nothing to advise
            return f"No CUDA GPU found ({ram}): the tiny test models run on the CPU."
        return f"**{NO_GPU_NOTICE}** ({ram})"
    return f"GPU: **{mem.gpu_name}**, {mem.vram_total_bytes / GiB:.1f} GiB ({ram})"


def estimate_text(ctx: StudioContext, preset_name: str, width: int = 1024, height: int = 1024) -> str:
    """The planner's estimate for the chosen preset (``auto``: what it picks and why)."""
    from core.loading.memory import estimate

    if ctx.settings.is_tiny:
        return "Tiny test models: a few megabytes; memory presets make no difference."
    if preset_name not in PRESET_CHOICES:  # any client may ask: never touch the settings here
        raise StudioInputError(f"unknown memory preset {short_repr(str(preset_name))}: choose one of "
                               f"{', '.join(PRESET_CHOICES)}")
    preset, reason = ctx.resolve_preset(width, height, name=preset_name)
    try:  # a single-file transformer: the planner counts its real size
        given = ctx.settings.sources().part_files()
        files = weight_files(given) if given else None
    except ModelSourceError:
        files = None
    e = estimate(preset, width, height, files=files)
    c = estimate(preset, width, height, files=files, controlnet=True)
    return (f"Preset **{preset.name}** ({preset.description}) at {width}x{height}: GPU peak about "
            f"**{e.gpu_peak_gib:.1f} GiB**, RAM needed about **{e.ram_needed_gib:.1f} GiB** (peak RSS "
            f"{e.ram_peak_gib:.1f} GiB); with a ControlNet (control images) about {c.gpu_peak_gib:.1f} GiB GPU, "
            f"{c.ram_needed_gib:.1f} GiB RAM.  \n{reason}")


class SettingsEvents:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.apply = shown_to_user(self._apply)
        self.load = shown_to_user(self._load)
        self.unload = shown_to_user(self._unload)
        self.estimate = shown_to_user(lambda preset: estimate_text(ctx, preset))
        self.last_run_adapter = shown_to_user(self._last_run_adapter)

    def _last_run_adapter(self, request: gr.Request = None) -> str:
        """The newest adapter a training run exported under the runs folder, for the Adapter file field (applied
        with Apply settings). Owner-only, as the settings are."""
        from trainer.checkpoints import latest_export

        self.ctx.access.check_owner(request, "Changing the settings")
        found = latest_export(self.ctx.runs_dir)
        if found is None:
            raise StudioInputError("no training run has exported an adapter yet (Train tab: a finished run writes "
                                   "runs/NAME/adapter.safetensors)")
        gr.Info(f"Adapter of run {found.parent.name}: press Apply settings to use it")
        return str(found)

    def _apply(self, models, base, siglip, dinov2, adapter, preset, output_dir, speed=None, vae=None, clip=None,
               t5=None, request: gr.Request = None):
        """Checks and stores the settings; a change of models or preset unloads the current pipeline.

        Owner-only: model sources, preset and output folder belong to whoever started the studio."""
        self.ctx.access.check_owner(request, "Changing the settings")
        models = (models or "").strip()
        if not models:
            raise StudioInputError("model sources are empty: use default, tiny or a models folder")
        if models not in ("default", "tiny") and not Path(models).expanduser().is_dir():
            raise StudioInputError(f"models folder not found: {models} (use default, tiny or an existing folder)")
        if is_transformer_file((base or "").strip()):  # a single-file transformer: its header checked now
            try:
                inspect_transformer_file(os.path.expanduser(base.strip()))
            except ModelSourceError as exc:
                raise StudioInputError(str(exc)) from None
        for part, path in (("vae", vae), ("text_encoder", clip), ("text_encoder_2", t5)):
            if (path or "").strip():  # a FLUX part's file: its header checked now (one line naming it otherwise)
                try:
                    check_file(os.path.expanduser(str(path).strip()), part)
                except ModelSourceError as exc:
                    raise StudioInputError(str(exc)) from None
        if preset not in PRESET_CHOICES:
            raise StudioInputError(f"unknown memory preset {short_repr(str(preset))}: choose one of "
                                   f"{', '.join(PRESET_CHOICES)}")
        if speed is not None and speed not in SPEED_CHOICES:
            raise StudioInputError(f"unknown speed mode {short_repr(str(speed))}: choose one of "
                                   f"{', '.join(SPEED_CHOICES)}")
        folder = Path(os.path.expanduser((output_dir or "").strip() or str(self.ctx.settings.output_dir)))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudioInputError(f"output folder {folder} cannot be created: {exc.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise StudioInputError(f"output folder {folder} is not writable")
        s = self.ctx.settings
        old_key = s.key()
        s.models, s.preset, s.output_dir = models, preset, folder
        self.ctx.served_paths()  # the new output folder is served at once (its images show in the gallery)
        s.speed = speed or s.speed
        s.base, s.siglip, s.dinov2, s.adapter = ((v or "").strip() or None for v in (base, siglip, dinov2, adapter))
        s.vae, s.clip, s.t5 = ((v or "").strip() or None for v in (vae, clip, t5))
        if s.key() != old_key and self.ctx.unload():
            gr.Info("Settings changed: models unloaded (they load again on the next Generate)")
        else:
            gr.Info("Settings saved")
        return self.ctx.status_line(), estimate_text(self.ctx, preset)

    def _load(self, progress=gr.Progress(track_tqdm=True)):
        self.ctx.pipeline(report=lambda fraction, message: progress(fraction, desc=message))
        return self.ctx.status_line()

    def _unload(self, request: gr.Request = None):
        self.ctx.access.check_owner(request, "Unloading the models")
        gr.Info("Models unloaded" if self.ctx.unload() else "No models were loaded")
        return self.ctx.status_line()


def build(ctx: StudioContext) -> SimpleNamespace:
    events = SettingsEvents(ctx)
    s = ctx.settings
    # a Space's visitors share one process: its owner sets the models; an exposed studio without an owner login
    # refuses the changes in the handlers too (the page only shows it)
    editable = not ctx.on_spaces and (not ctx.access.exposed or ctx.access.owner is not None)
    ui = SimpleNamespace()
    if ctx.access.notice():
        gr.Markdown(f"> {ctx.access.notice()}", elem_id="owner-notice")
    gr.Markdown(machine_text(ctx))
    ui.status = gr.Markdown(ctx.status_line())
    with gr.Row():
        ui.load = gr.Button("Load models", variant="primary")
        ui.unload = gr.Button("Unload models", interactive=editable)
    ui.models = gr.Textbox(s.models, label="Models: default (Hugging Face Hub), tiny (test models), a models folder "
                                           "or a ComfyUI/Forge models folder", interactive=editable, max_lines=1)
    with gr.Accordion("Single sources (hub ids, local folders or files; empty = from the models above)", open=False):
        ui.base = gr.Textbox(s.base or "", label="FLUX.1 base: folder, hub id or transformer file (.safetensors, .gguf)",
                             interactive=editable, max_lines=1)
        ui.vae = gr.Textbox(s.vae or "", label="FLUX VAE file (ae.safetensors)", interactive=editable, max_lines=1)
        ui.clip = gr.Textbox(s.clip or "", label="FLUX CLIP-L file (clip_l.safetensors)", interactive=editable,
                             max_lines=1)
        ui.t5 = gr.Textbox(s.t5 or "", label="FLUX T5-XXL file (t5xxl_fp16 / fp8_e4m3fn .safetensors)",
                           interactive=editable, max_lines=1)
        ui.siglip = gr.Textbox(s.siglip or "", label="SigLIP", interactive=editable, max_lines=1)
        ui.dinov2 = gr.Textbox(s.dinov2 or "", label="DINOv2", interactive=editable, max_lines=1)
        with gr.Row():
            ui.adapter = gr.Textbox(s.adapter or "", label="Adapter file", interactive=editable, max_lines=1,
                                    scale=4)
            ui.last_run_adapter = gr.Button("Use the last run's adapter", interactive=editable, scale=1)
    ui.preset = gr.Dropdown(list(PRESET_CHOICES), value=s.preset, label="Memory preset", interactive=editable)
    ui.estimate = gr.Markdown(estimate_text(ctx, s.preset))
    ui.speed = gr.Dropdown(list(SPEED_CHOICES), value=s.speed, interactive=editable,
                           label="Speed: off, full (compiled + fused, same images) or fast (+ fp8 on Ada/Hopper)",
                           info="full and fast compile on the first image of each size (a minute on a GPU)")
    ui.output_dir = gr.Textbox(str(s.output_dir), label="Output folder", interactive=editable, max_lines=1)
    ui.apply = gr.Button("Apply settings", interactive=editable)
    ui.preset.input(events.estimate, ui.preset, ui.estimate, api_visibility="private")
    ui.apply.click(events.apply, [ui.models, ui.base, ui.siglip, ui.dinov2, ui.adapter, ui.preset, ui.output_dir,
                                  ui.speed, ui.vae, ui.clip, ui.t5],
                   [ui.status, ui.estimate], api_visibility="private", **GPU)
    ui.last_run_adapter.click(events.last_run_adapter, None, ui.adapter, api_visibility="private")
    ui.load.click(events.load, None, ui.status, api_name="load_models", **GPU)
    ui.unload.click(events.unload, None, ui.status, api_visibility="private", **GPU)
    return ui

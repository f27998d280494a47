"""The Train tab: build or pick a config, validate the data, run the trainer as a separate process and watch it.

The trainer knows nothing of the studio: the tab writes a TOML config, starts ``python -m trainer CONFIG`` in its
own process (the page stays responsive and survives a trainer crash), and reads ``events.jsonl`` and the sample
images from the run's folder. Stop and save-now are request files the trainer honours between steps. The only
thing taken from the studio's context is the model sources setting.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from PIL import Image, ImageDraw

from core.limits import MAX_STORY_BYTES
from core.loading.memory import QUANTO_ALTERNATIVE
from core.loading.quantization import quantization_backend
from core.io.path_policy import PathPolicy
from trainer.config import TRAIN_PRESETS, ConfigError, load_config, preset_config
from trainer.events import SAVE_NOW, STOP, request, requested, run_status

from ..components import OutputImage
from ..errors import StudioInputError, shown_to_user

MAX_CONFIG_BYTES = MAX_STORY_BYTES  # a TOML config is a few KB; refuse anything near a megabyte

REPO = Path(__file__).resolve().parents[2]


class TrainingProcesses:
    """The trainer processes started from this studio, by output folder (one at a time per folder)."""

    def __init__(self):
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, config_path: str | Path, resume: bool = False) -> tuple[Path, subprocess.Popen]:
        config = load_config(config_path)  # refuse a bad config here, with its problems, not in the log
        out = config.output_path
        with self._lock:
            running = self._procs.get(str(out))
            if running is not None and running.poll() is None:
                raise gr.Error(f"a training job is already running in {out}")
            out.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "trainer", str(Path(config_path).resolve())] + (["--resume"] if resume else [])
            with open(out / "trainer.log", "ab") as log:
                proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            self._procs[str(out)] = proc
        return out, proc

    def returncode(self, out: str | Path) -> int | None:
        """``None`` while running (or never started here), else the exit status."""
        proc = self._procs.get(str(Path(out)))
        return None if proc is None else proc.poll()

    def running(self, out: str | Path) -> bool:
        proc = self._procs.get(str(Path(out)))
        return proc is not None and proc.poll() is None


# ---------------------------------------------------------------------- plain functions (tested without a browser)
def preset_label(name: str) -> str:
    """A training preset's dropdown label: its name and the card it is for (``24gb: one 24 GB card``)."""
    return f"{name}: {TRAIN_PRESETS[name]['description'].split(':')[0]}"


def build_config_text(preset: str, models: str, output_dir: str, unpaired: str, paired: str, steps_scale: float,
                      sample_every: int, cuda: bool | None = None) -> str:
    """A config for ``preset`` with the paper's stages, as TOML text (stages without data are dropped).

    Without a CUDA GPU (``cuda``: default, this machine's) the config is one that runs here: bitsandbytes' nf4 /
    int8 FLUX becomes quanto int8 and 8-bit AdamW torch's AdamW, each said in a comment at the top."""
    config = preset_config(preset, output_dir or "runs/instantcharacter", unpaired or None, paired or None,
                           float(steps_scale))
    config.models.source = models or "default"
    config.stages = [s for s in config.stages
                     if (s.data != "paired" or paired) and (s.data != "unpaired" or unpaired)
                     and (s.data != "both" or (paired and unpaired))]
    config.sampling.every = int(sample_every)
    changes = [] if _has_cuda(cuda) else runnable_without_cuda(config)
    return "".join(f"# {line}\n" for line in changes) + config.to_toml()


def _has_cuda(cuda: bool | None) -> bool:
    if cuda is not None:
        return cuda
    import torch

    return torch.cuda.is_available()


def runnable_without_cuda(config) -> list[str]:
    """Changes ``config`` (a :class:`trainer.config.TrainConfig`) so it runs on a machine without CUDA; returns one
    line per change, saying why."""
    lines = []
    quant = config.models.base_quantization
    if quant and quantization_backend(quant).needs_cuda:
        config.models.base_quantization = QUANTO_ALTERNATIVE
        lines.append(f"No CUDA GPU on this machine: FLUX held in {QUANTO_ALTERNATIVE} instead of {quant} "
                     f"({quantization_backend(quant).library} needs CUDA).")
    if config.optimizer.use_8bit_adam:
        config.optimizer.use_8bit_adam = False
        lines.append("No CUDA GPU on this machine: torch AdamW instead of 8-bit AdamW (bitsandbytes needs CUDA).")
    if config.run.mixed_precision == "fp16":
        config.run.mixed_precision = "no"
        lines.append("No CUDA GPU on this machine: float32 instead of fp16 mixed precision.")
    return lines


TINY_PLAN_NOTE = ("These are the tiny test models' figures (the studio runs tiny models): empty the config and "
                  "Check memory again for the real FLUX.1-dev figures of the preset.")


def plan_config_text(text: str, runs_dir: str | Path, processes: int = 1, preset: str | None = None) -> str:
    """The memory plan (``trainer.plan``: GPU and RAM peak per stage, the card each fits) of a config's TOML text;
    with no config, of ``preset`` alone with the real models' figures (as ``train plan --preset``)."""
    import tomllib

    from trainer.config import config_from_dict
    from trainer.plan import plan_training

    if not (text or "").strip():
        if preset not in TRAIN_PRESETS:
            raise StudioInputError("choose your GPU's memory (a preset) or build a config first")
        gpus = max(1, int(processes or 1))
        gpus = TRAIN_PRESETS[preset].get("processes", 1) if gpus == 1 else gpus  # as the CLI: the preset's count
        plan = plan_training(preset_config(preset), gpus, cuda=True)  # the preset is for a GPU, as the CLI plans
        return (f"preset {preset}: the real FLUX.1-dev and adapter, as `train plan --preset {preset}` (no dataset "
                f"needed)\n{plan.table()}")
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise StudioInputError(f"the config is not valid TOML ({exc})") from None
    try:
        config = config_from_dict(data, Path(runs_dir), "config").check(max(1, int(processes or 1)))
    except ConfigError as exc:
        raise StudioInputError("; ".join(exc.problems[:5])) from None
    table = plan_training(config, max(1, int(processes or 1))).table()
    return f"{TINY_PLAN_NOTE}\n{table}" if config.models.source == "tiny" else table


def runs_policy(runs_dir: str | Path) -> PathPolicy:
    """Configs and run folders handled by the studio live under its runs folder, and nowhere else."""
    return PathPolicy([runs_dir], labels={str(Path(runs_dir).resolve()): f"the runs folder {runs_dir}"})


def config_file(path: str, runs_dir: str | Path) -> Path:
    """``path`` (relative to the runs folder) as a ``.toml`` file inside it."""
    if not path or not str(path).strip():
        raise StudioInputError("give a file name for the config, such as my-character.toml")
    target = runs_policy(runs_dir).resolve(str(path).strip(), base=runs_dir, what="config file")
    if target.suffix != ".toml":
        raise StudioInputError(f"config file {path}: the name must end in .toml")
    return target


def checked_config(target: Path, runs_dir: str | Path):
    """The config at ``target``, refused unless its output folder is inside the runs folder too."""
    config = load_config(target)
    runs_policy(runs_dir).resolve(config.output_path, what="output_dir")
    return config


def read_config_text(path: str, runs_dir: str | Path) -> str:
    target = config_file(path, runs_dir)
    if not target.is_file():
        raise StudioInputError(f"no config named {path} in the runs folder {runs_dir}")
    if target.stat().st_size > MAX_CONFIG_BYTES:
        raise StudioInputError(f"config {path} is over {MAX_CONFIG_BYTES // 1024} KB: not a training config")
    return target.read_text(encoding="utf-8", errors="replace")


def save_config_text(text: str, path: str, runs_dir: str | Path) -> str:
    """Writes the edited TOML to ``path`` (inside the runs folder) after checking it; returns a status line.

    The text is checked before anything is written: a config that does not load, or whose ``output_dir`` leaves
    the runs folder, is refused and the file on disk stays as it was.
    """
    from core.io.paths import write_bytes_atomic

    target = config_file(path, runs_dir)
    data = (text or "").encode()
    if len(data) > MAX_CONFIG_BYTES:
        raise StudioInputError(f"the config is over {MAX_CONFIG_BYTES // 1024} KB: not a training config")
    staging = target.with_name(f".{target.name}.check")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_bytes_atomic(staging, data)
        config = checked_config(staging, runs_dir)
    except ConfigError as exc:
        raise StudioInputError("; ".join(exc.problems[:5])) from None
    finally:
        staging.unlink(missing_ok=True)
    write_bytes_atomic(target, data)
    return f"saved {target}: {len(config.stages)} stage(s), {config.total_steps} steps, output {config.output_path}"


def validate_text(dataset: str, kind: str) -> str:
    from trainer.data import validate

    if not dataset:
        raise StudioInputError("give a dataset folder or JSONL file")
    report = validate(dataset, None if kind == "any" else kind)
    return ("OK: " if report.ok else "Problems found: ") + report.summary()


def loss_plot(losses: list[float], width: int = 480, height: int = 200) -> Image.Image | None:
    """The loss curve (and its moving average) as an image."""
    if not losses:
        return None
    image = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(image)
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    pad = 24

    def point(i, v):
        x = pad + (width - 2 * pad) * (i / max(1, len(losses) - 1))
        return x, height - pad - (height - 2 * pad) * (v - lo) / span

    d.line([point(i, v) for i, v in enumerate(losses)] if len(losses) > 1 else [point(0, losses[0])] * 2,
           fill=(170, 190, 230), width=1)
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    if len(smooth) > 1:
        d.line([point(i, v) for i, v in enumerate(smooth)], fill=(30, 70, 180), width=2)
    d.text((4, 4), f"loss {hi:.4f}", fill="black")
    d.text((4, height - 14), f"{lo:.4f}   steps 1-{len(losses)}", fill="black")
    return image


LOG_TAIL_LINES = 15


def log_tail(output_dir: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a run's ``trainer.log`` (progress bars' carriage returns resolved)."""
    path = Path(output_dir) / "trainer.log"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    shown = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


def run_images(run, output_dir: str | Path) -> list[str]:
    """The last 12 sample and validation images the run's events name, each in the run's own ``samples/`` or
    ``validation/`` folder (the folders the studio serves: an event naming any other file is not followed)."""
    folders = [(Path(output_dir) / name).resolve() for name in ("samples", "validation")]
    return [p for p in run.samples
            if any(Path(p).resolve().is_relative_to(folder) for folder in folders) and Path(p).is_file()][-12:]


def progress(output_dir: str | Path, returncode: int | None = None):
    """(status markdown, loss plot, sample image paths) from a run folder's events (read by ``trainer.events``);
    ``returncode``: the trainer process's exit status when it has ended (a run that died says so, with the last
    lines of its log, whether or not it wrote an event)."""
    run = run_status(output_dir)
    died = returncode not in (None, 0) and run.state in ("not started", "running", "starting", "error")
    if died:
        line = f"**exited with code {returncode}**"
        if run.error:
            line += f": {run.error.splitlines()[0]}"
        tail = log_tail(output_dir)
        if tail:
            line += f"\n\nlast lines of trainer.log:\n```\n{tail}\n```"
        return line, loss_plot(run.losses), run_images(run, output_dir)
    if run.state == "not started":
        return "No events yet.", None, []
    state = run.state
    if state in ("running", "starting") and requested(output_dir, STOP):
        state = "cancelling... (the trainer stops after its current step and saves a checkpoint)"
    line = f"**{state}**"
    last_step = run.last_step
    if last_step:
        eta = last_step.get("eta_s")
        line += (f" — step {last_step['step']}/{last_step['total_steps']} (stage {last_step['stage'] + 1}), "
                 f"loss {last_step['loss']:.4f}, lr {last_step['lr']:.2e}")
        if last_step.get("it_s"):
            line += f", {last_step['it_s']:.2f} it/s"
        if eta is not None:
            line += f", ETA {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s"
    if run.validation:
        scores = ", ".join(f"{label} {run.validation[key]:.3f}" for key, label in
                           (("clip_i", "CLIP-I"), ("dino_i", "DINO-I"), ("clip_t", "CLIP-T"))
                           if run.validation.get(key) is not None)
        line += f"\n\nvalidation at step {run.validation['step']}: {scores or 'no scores'}"
    if run.error and run.state == "error":
        line += f"\n\n```\n{run.error}\n```"
    return line, loss_plot(run.losses), run_images(run, output_dir)


class TrainEvents:
    """The tab's handlers. Every one of them is owner-only (see ``Access``): training reads datasets, writes
    files and starts processes, so an anonymous visitor of a shared studio gets a refusal, not a trainer."""

    def __init__(self, ctx, processes: TrainingProcesses | None = None):
        self.ctx = ctx
        self.processes = processes or TrainingProcesses()
        self.build_config = shown_to_user(self._owner(self._build_config, "Building training configs"))
        self.load_config = shown_to_user(self._owner(self._load_config, "Loading training configs"))
        self.save_config = shown_to_user(self._owner(self._save_config, "Saving training configs"))
        self.plan = shown_to_user(self._owner(lambda text, n, preset=None: plan_config_text(text, self.runs_dir, n,
                                                                                             preset),
                                              "Planning training memory"))
        self.validate = shown_to_user(self._owner(validate_text, "Validating datasets"))
        self.start = shown_to_user(self._owner(lambda path: self._start(path, False), "Starting training"))
        self.resume = shown_to_user(self._owner(lambda path: self._start(path, True), "Resuming training"))
        self.stop = shown_to_user(self._owner(lambda folder: self._request(folder, STOP), "Stopping training"))
        self.save_now = shown_to_user(self._owner(lambda folder: self._request(folder, SAVE_NOW),
                                                  "Saving a training checkpoint"))
        self.refresh = shown_to_user(self._owner(self._refresh, "Watching training", quiet=True))

    def _owner(self, fn, action: str, quiet: bool = False):
        """``handler(request, *values)``: ``fn(*values)`` behind the owner check (Gradio passes the request first,
        read from the annotation). ``quiet``: a non-owner gets the notice as a value, not an error popup (for the
        timer, which would otherwise raise every two seconds)."""
        access = getattr(self.ctx, "access", None)

        def handler(request: gr.Request, *values):
            if access is not None and not access.is_owner(request):
                if quiet:
                    return access.notice() or "Training is for the studio's owner.", None, []
                access.check_owner(request, action)
            return fn(*values)

        handler.__name__ = getattr(fn, "__name__", action)
        return handler

    @property
    def runs_dir(self) -> Path:
        folder = getattr(self.ctx, "runs_dir", None)
        if folder is None:
            from core.io.paths import data_dir

            folder = data_dir("runs")
        return Path(folder)

    def models(self) -> str:
        settings = getattr(self.ctx, "settings", None)
        return getattr(settings, "models", "default") or "default"

    def _build_config(self, preset, output_dir, unpaired, paired, steps_scale, sample_every):
        return build_config_text(preset, self.models(), output_dir, unpaired, paired, steps_scale, sample_every)

    def _load_config(self, path):
        return read_config_text(path, self.runs_dir)

    def _save_config(self, text, path):
        return save_config_text(text, path, self.runs_dir)

    def _start(self, config_path: str, resume: bool = False):
        if not config_path:
            raise StudioInputError("save or pick a config first")
        target = config_file(config_path, self.runs_dir)
        if not target.is_file():
            raise StudioInputError(f"no config named {config_path} in the runs folder {self.runs_dir}: save it first")
        try:
            checked_config(target, self.runs_dir)
            out, _ = self.processes.start(target, resume)
        except ConfigError as exc:
            raise StudioInputError("; ".join(exc.problems[:5])) from None
        return str(out), f"started training in {out}" + (" (resuming)" if resume else "")

    def _run_dir(self, output_dir: str) -> Path:
        return runs_policy(self.runs_dir).resolve(str(output_dir).strip(), base=self.runs_dir, what="run folder")

    def _request(self, output_dir: str, name: str) -> str:
        if not output_dir:
            raise StudioInputError("no run folder: start a training first or type its output folder")
        request(self._run_dir(output_dir), name)
        if name == STOP:
            return "Cancelling...: the trainer stops after its current step and saves a checkpoint"
        return f"{name} requested: the trainer acts after its current step"

    def _refresh(self, output_dir: str):
        if not output_dir:
            return "Not started.", None, []
        folder = self._run_dir(output_dir)
        status, plot, images = progress(folder, self.processes.returncode(folder))
        served = getattr(self.ctx, "served", None)  # the studio's (a bare context in some tests has none)
        if images and served is not None and not all(str(Path(p).parent) in served for p in images):
            self.ctx.served_paths()  # the run's first samples: their folder is served from now on
        return status, plot, images


def build(ctx) -> SimpleNamespace:
    events = TrainEvents(ctx)
    ui = SimpleNamespace(events=events)
    access = getattr(ctx, "access", None)
    if access is not None and access.notice():
        gr.Markdown(f"> {access.notice()}", elem_id="train-owner-notice")
    runs_dir = Path(events.runs_dir).expanduser().resolve()  # where a relative name below lands, in full
    gr.Markdown(f"Runs and their configs are saved in **`{runs_dir}`**: a folder or file name below is a name "
                "inside it.")
    gr.Markdown("Teach the character adapter from your own pictures. Training goes in three stages: first each "
                "picture is redrawn from itself, then one picture of a character from another of the same "
                "character, then at high resolution. It runs as a program of its own: this page starts it and "
                "follows its folder, and closing the page does not stop it.")
    with gr.Accordion("1. Config", open=True):
        with gr.Row():
            # short labels that a dropdown shows whole; what each preset does is spelt out below the row
            ui.preset = gr.Dropdown([(preset_label(k), k) for k in TRAIN_PRESETS], value="24gb",
                                    label="Your GPU's memory", info="what each one trains: see below", scale=2)
            ui.output_dir_new = gr.Textbox("my-character", label="Run folder name",
                                            info=f"saved as {runs_dir}/<name>", max_lines=1)
            ui.steps_scale = gr.Number(0.01, label="Training length",
                                       info="1 = the full schedule of the paper; 0.01 = a short trial run")
            ui.sample_every = gr.Number(500, label="Show sample pictures every N steps",
                                         info="0: no samples", precision=0)
        with gr.Accordion("What each GPU-memory choice trains", open=False):
            gr.Markdown("\n".join(f"- **{k}**: {v['description']}" for k, v in TRAIN_PRESETS.items()))
        with gr.Row():
            ui.unpaired = gr.Textbox("", label="Pictures with captions",
                                    info="a folder of images, each with a .txt caption beside it (or a JSONL list)",
                                    max_lines=1)
            ui.paired = gr.Textbox("", label="Pairs of pictures of one character",
                                  info="a JSONL list (optional: the second stage)", max_lines=1)
        ui.build_config = gr.Button("Build config")
        ui.config_text = gr.Code("", language=None, label="Config (TOML, editable)", lines=18)
        with gr.Row():
            ui.config_path = gr.Textbox("my-character.toml", label="Config file", max_lines=1)
            ui.load_config = gr.Button("Load")
            ui.save_config = gr.Button("Save")
        ui.config_status = gr.Markdown()
        with gr.Row():
            ui.plan_processes = gr.Number(1, label="GPUs", precision=0, minimum=1)
            ui.plan = gr.Button("Check memory")
        ui.plan_table = gr.Code("", language=None, label="Memory plan: GPU peak per stage and the card it fits",
                                lines=8)
    with gr.Accordion("2. Validate a dataset", open=False):
        with gr.Row():
            ui.dataset = gr.Textbox("", label="Dataset", max_lines=1)
            ui.kind = gr.Radio(["any", "unpaired", "paired"], value="any", label="Kind of data")
            ui.validate = gr.Button("Validate")
        ui.validation = gr.Textbox(label="Report", lines=8, interactive=False)
    with gr.Accordion("3. Run", open=True):
        with gr.Row():
            ui.start = gr.Button("Start", variant="primary")
            ui.resume = gr.Button("Resume")
            ui.save_now = gr.Button("Save now")
            ui.stop = gr.Button("Stop", variant="stop")
        ui.run_dir = gr.Textbox("", label="Watching run folder", max_lines=1)
        ui.run_status = gr.Markdown("Not started.")
        with gr.Row():
            ui.plot = OutputImage(label="Loss", type="pil", interactive=False)
            ui.samples = gr.Gallery(label="Samples (fixed prompts and seeds)", columns=4, height=240)
        ui.timer = gr.Timer(2.0)

    ui.build_config.click(events.build_config,
                          [ui.preset, ui.output_dir_new, ui.unpaired, ui.paired, ui.steps_scale, ui.sample_every],
                          ui.config_text, api_visibility="private")
    ui.load_config.click(events.load_config, ui.config_path, ui.config_text, api_visibility="private")
    ui.plan.click(events.plan, [ui.config_text, ui.plan_processes, ui.preset], ui.plan_table,
                  api_visibility="private")
    ui.save_config.click(events.save_config, [ui.config_text, ui.config_path], ui.config_status,
                         api_visibility="private")
    ui.validate.click(events.validate, [ui.dataset, ui.kind], ui.validation, api_visibility="private")
    ui.start.click(events.start, ui.config_path, [ui.run_dir, ui.config_status], api_visibility="private")
    ui.resume.click(events.resume, ui.config_path, [ui.run_dir, ui.config_status], api_visibility="private")
    ui.stop.click(events.stop, ui.run_dir, ui.config_status, api_visibility="private")
    ui.save_now.click(events.save_now, ui.run_dir, ui.config_status, api_visibility="private")
    ui.timer.tick(events.refresh, ui.run_dir, [ui.run_status, ui.plot, ui.samples], api_visibility="private",
                  show_progress="hidden")
    return ui

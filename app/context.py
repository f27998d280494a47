"""The studio's state, passed to every tab: settings, the lazily loaded pipeline, the library, the history.

Nothing here is module-level: ``build_studio`` makes one :class:`StudioContext` and hands it to each tab's
``build(ctx)``, and tests make their own.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from core.io.path_policy import PathPolicy
from core.io.paths import data_dir
from core.loading.sources import ModelSources

from .arguments import PRESET_CHOICES  # noqa: F401 - the tabs read it from here
from .character_library import CharacterLibrary
from .errors import OwnerOnlyError
from .generation_history import GenerationHistory
from .spaces import on_spaces, on_zero_gpu
from .visitor_limits import VisitorLimits

log = logging.getLogger(__name__)

# The engine takes 8; the studio's editor has one layer per character, and past four the regions of a 1024 px
# image get too small to hold a recognisable character.
MAX_STUDIO_CHARACTERS = 4
NO_GPU_NOTICE = ("No CUDA GPU found: with the real FLUX.1 models one image would take hours on the CPU. "
                 "To try the interface, start the studio with `--models tiny` (small random models, noise images).")


@dataclass
class StudioSettings:
    """What the user chose: model sources, memory preset, output folder.

    Attributes:
        models: ``default`` (hub models), ``tiny`` (random test models) or a models directory.
        base, siglip, dinov2, adapter: optional overrides of single sources (hub ids or local paths).
        vae, clip, t5: FLUX's VAE, CLIP-L and T5-XXL as single files (ComfyUI/Forge's), or None.
        preset: a memory preset name or ``auto``.
        output_dir: where generated PNGs go (default: ``outputs`` in the user data folder).
        clip_model, dino_model: the scoring models (default: the paper's, or the tiny models' own with ``tiny``).
        speed: the engine's speed mode (``off``, ``full``, ``fast``; :mod:`core.loading.speed`).
    """

    models: str = "default"
    preset: str = "auto"
    output_dir: Path | None = None
    base: str | None = None
    siglip: str | None = None
    dinov2: str | None = None
    adapter: str | None = None
    vae: str | None = None
    clip: str | None = None
    t5: str | None = None
    clip_model: str | None = None
    dino_model: str | None = None
    speed: str = "off"

    def __post_init__(self):
        self.output_dir = Path(self.output_dir) if self.output_dir else data_dir("outputs")

    def sources(self) -> ModelSources:
        # with_base: a single transformer file (.safetensors / .gguf) replaces only the transformer
        return ModelSources.parse(self.models).with_base(self.base or None).with_files(
            vae=self.vae or None, clip=self.clip or None, t5=self.t5 or None).override(
            siglip=self.siglip or None, dinov2=self.dinov2 or None, adapter=self.adapter or None)

    def key(self) -> tuple:
        return (self.models, self.base, self.siglip, self.dinov2, self.adapter, self.vae, self.clip, self.t5,
                self.preset, self.speed)

    @property
    def is_tiny(self) -> bool:
        return self.models == "tiny"

    def metric_models(self) -> tuple[str, str]:
        """(CLIP, DINO) sources for the scores: explicit ones, a models directory's ``metrics/``, or the defaults."""
        from core.evaluation.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
        from core.loading.tiny import ensure_tiny_bundle, tiny_metric_models

        folder = ensure_tiny_bundle() if self.is_tiny else Path(self.models) if self.models != "default" else None
        local = tiny_metric_models(folder) if folder is not None else {}
        clip = self.clip_model or (str(local["clip"]) if local and local["clip"].is_dir() else DEFAULT_CLIP_MODEL)
        dino = self.dino_model or (str(local["dino"]) if local and local["dino"].is_dir() else DEFAULT_DINO_MODEL)
        return clip, dino


class JobControl:
    """Cancel requests per browser session: Cancel sets the session's event, the step callback reads it."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


ASSETS = Path(__file__).resolve().parents[1] / "assets"
_VISITOR_SALT = secrets.token_hex(16)  # per process: visitors' folder names cannot be guessed from outside


def uploads_dir() -> Path:
    """Where Gradio keeps the files visitors upload (its cache); a root of the path policy."""
    import os
    import tempfile

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


SPACE_OWNER_ADVICE = ("the Space's owner sets the models with its INSTANTCHARACTER_MODELS variable; to train, run the "
                      "studio on your own machine")


@dataclass(frozen=True)
class Access:
    """Who may do what on this studio.

    ``exposed``: reachable by other people (``--share``, a non-loopback ``--host``, a Space, or ``--guest`` logins
    whatever the host: a loopback studio behind a reverse proxy is reached by its guests). On a studio that is not
    exposed, every client is the owner. On an exposed one, only the ``owner`` login (``--auth USER:PASS``) is; with
    no owner login, owner-only actions are off for everyone. ``limits``: what visitors may ask of the GPU.
    """

    exposed: bool = False
    owner: str | None = None
    why: str = ""
    space: bool = False  # a Hugging Face Space: no --auth to restart with; its owner sets the Space's variables
    limits: VisitorLimits = VisitorLimits()

    def is_owner(self, request=None) -> bool:
        if not self.exposed:
            return True
        user = getattr(request, "username", None) if request is not None else None
        return self.owner is not None and user == self.owner

    def may_download(self, request=None) -> bool:
        """Whether ``request`` may make the studio download from the hub (the owner, or ``--allow-visitor-downloads``)."""
        return self.limits.downloads or self.is_owner(request)

    def check_budget(self, request, width: int, height: int, steps: int, images: int, what: str = "this request"):
        """:class:`app.visitor_limits.VisitorLimitError` when a visitor asks for more than ``limits.budget``."""
        if not self.is_owner(request):
            self.limits.check_budget(width, height, steps, images, what)

    def images_within_budget(self, request, width: int, height: int, steps: int, wanted: int,
                             what: str = "one image") -> int:
        """How many of ``wanted`` images of this size fit ``request``'s budget (all for the owner); refuses (as
        :meth:`check_budget`) when not even one does."""
        if self.is_owner(request):
            return wanted
        return self.limits.images_within_budget(width, height, steps, wanted, what)

    def visitor_key(self, request=None) -> str | None:
        """A folder name private to one visitor (``None`` for the owner): from the login, or the browser session
        for anonymous visitors, hashed with this process's secret so that nobody can guess another's."""
        if self.is_owner(request):
            return None
        who = getattr(request, "username", None) or "session:" + str(getattr(request, "session_hash", None))
        return hashlib.sha256((_VISITOR_SALT + who).encode()).hexdigest()[:16]

    def check_owner(self, request, action: str) -> None:
        """Raises :class:`OwnerOnlyError` (one line saying why and how) unless ``request`` comes from the owner."""
        if self.is_owner(request):
            return
        if self.owner is None and self.space:
            raise OwnerOnlyError(f"{action} is turned off on a Hugging Face Space, whose visitors share one studio "
                                 f"({SPACE_OWNER_ADVICE})")
        if self.owner is None:
            raise OwnerOnlyError(f"{action} is turned off: this studio is {self.why}, and only its owner may do "
                                 "that (restart it with --auth USER:PASS to use it from here)")
        raise OwnerOnlyError(f"{action} is for the studio's owner only (log in as the --auth user)")

    def notice(self) -> str:
        """One line for the pages that hold owner-only controls."""
        if not self.exposed:
            return ""
        if self.owner is None and self.space:
            return (f"This studio is {self.why}: model settings, output folder and training are turned off here "
                    f"({SPACE_OWNER_ADVICE}).")
        if self.owner is None:
            return (f"This studio is {self.why}: model settings, output folder and training are turned off here "
                    "(restart with --auth USER:PASS to use them remotely).")
        return f"This studio is {self.why}: model settings, output folder and training are for the owner login only."


class StudioContext:
    """Everything the tabs share. One GPU job at a time: :attr:`gpu_lock` (the queue's shared concurrency id
    already serializes GPU events; the lock also covers direct callers such as tests and other tabs)."""

    def __init__(self, settings: StudioSettings | None = None, *, library: CharacterLibrary | None = None,
                 history: GenerationHistory | None = None, access: Access | None = None):
        self.settings = settings or StudioSettings()
        self.access = access or Access(exposed=on_spaces(), why="a Hugging Face Space" if on_spaces() else "",
                                       space=on_spaces())
        self.library = library or CharacterLibrary(data_dir() / "library")
        self.history = history or GenerationHistory(data_dir() / "history.jsonl")
        self.jobs = JobControl()
        self.gpu_lock = threading.RLock()
        self._engine_lock = threading.RLock()
        self._engine = None
        self._engine_key: tuple | None = None
        self._scorer = None
        self._scorer_lock = threading.Lock()
        self._preprocessors = None
        self._served: list[str] = []

    def preprocessors(self):
        """The control preprocessors (depth, pose) for the current models, their models loaded on first use."""
        from core.conditioning.preprocessors import Preprocessors

        with self._scorer_lock:
            models = self.settings.models
            if self._preprocessors is None or self._preprocessors[0] != models:
                self._preprocessors = (models, Preprocessors.for_models(models))
            return self._preprocessors[1]

    def scorer(self):
        """The CLIP/DINO scorer, created on first use (its models load lazily on the first score)."""
        from core.evaluation.metrics import CharacterScorer

        with self._scorer_lock:
            if self._scorer is None:
                clip, dino = self.settings.metric_models()
                self._scorer = CharacterScorer(clip, dino, segmenter="threshold")
            return self._scorer

    # ------------------------------------------------------------------ files
    def served_paths(self) -> list[str]:
        """What Gradio may serve (besides its own upload cache): the output folder, the library's folder (its images
        show in the Library tab and in Generate's "From library"), ``assets/``, each image the History lists
        outside these (made in an earlier output folder), as a file of its own: never the rest of that folder, and
        the training runs' image folders (:meth:`run_image_folders`).

        One list for the studio's life, refreshed in place: Gradio keeps the list it was launched with and reads it
        for every file it serves, so a new output folder (Settings), the History and a run's first samples are served
        at once.
        """
        folders = [str(self.settings.output_dir), str(self.library.folder), str(ASSETS)]
        roots = [Path(folder).expanduser().resolve() for folder in folders]
        elsewhere = [entry.path for entry in self.history.entries()
                     if not any(Path(entry.path).resolve().is_relative_to(root) for root in roots)]
        self._served[:] = folders + elsewhere + [str(folder) for folder in self.run_image_folders()]
        return self._served

    @property
    def served(self) -> list[str]:
        """The list :meth:`served_paths` last made (the one Gradio holds), without making it again."""
        return self._served

    def run_image_folders(self) -> list[Path]:
        """The folders of training runs' sample and validation images (the Train tab shows them); not the rest of
        a run (its config, dataset list, checkpoints and log)."""
        return [folder for run in sorted(self.runs_dir.iterdir()) if run.is_dir()
                for folder in (run / "samples", run / "validation") if folder.is_dir()]

    @property
    def stories_dir(self) -> Path:
        return data_dir("stories")

    @property
    def runs_dir(self) -> Path:
        """Training runs and their configs, when started from the studio."""
        return data_dir("runs")

    @property
    def paths(self) -> PathPolicy:
        """The folders a client may name: outputs, library, stories, runs, LoRAs, uploads and ``assets/``.

        Built from the current settings, so a new output folder (set by the owner) is covered at once.
        """
        roots = {str(self.settings.output_dir): "the output folder", str(self.library.folder): "the library",
                 str(self.stories_dir): "the stories folder", str(self.runs_dir): "the runs folder",
                 str(data_dir("loras")): "the LoRA folder", str(uploads_dir()): "uploads", str(ASSETS): "assets/"}
        resolved = {str(Path(k).expanduser().resolve()): v for k, v in roots.items()}
        return PathPolicy(list(resolved), labels=resolved)

    # ------------------------------------------------------------------ machine
    @property
    def on_spaces(self) -> bool:
        return on_spaces()

    @property
    def zero_gpu(self) -> bool:
        return on_zero_gpu()

    @property
    def device(self) -> torch.device:
        # on ZeroGPU the spaces package makes torch.cuda.is_available() true from start-up
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def has_cuda(self) -> bool:
        return torch.cuda.is_available()

    def resolve_preset(self, width: int = 1024, height: int = 1024, name: str | None = None):
        """``(MemoryPreset, reason)`` for the chosen preset name, or ``name`` (``auto`` asks the planner)."""
        from core.loading.presets import resolve_preset

        return resolve_preset(name or self.settings.preset, tiny=self.settings.is_tiny, zero_gpu=self.zero_gpu,
                              device=self.device, width=width, height=height)

    # ------------------------------------------------------------------ engine
    @property
    def loaded(self):
        """The engine when its models are loaded, else ``None``."""
        engine = self._engine
        return engine if engine is not None and engine.loaded else None

    def engine(self):
        """The :class:`core.engine.Engine` for the current settings (a new one when the owner changed them)."""
        from core.engine import Engine

        with self._engine_lock:
            key = self.settings.key()
            if self._engine is None or self._engine_key != key:
                self.unload()
                self._engine = Engine(self.settings.models, preset=self.settings.preset,
                                      sources=self.settings.sources(), zero_gpu=self.zero_gpu,
                                      speed=self.settings.speed, lora_downloads=False)
                self._engine_key = key
            return self._engine

    def pipeline(self, report=None):
        """The loaded pipeline for the current settings (loading it first); ``report(fraction, message)`` hears
        about each stage. Raises ``ModelSourceError``, ``PresetUnavailableError`` or ``MemoryAdviceError``."""
        return self.engine().load(report=report)

    def unload(self) -> bool:
        """Drops the models and frees their memory; False when none were loaded."""
        with self._engine_lock:
            engine, self._engine, self._engine_key = self._engine, None, None
            return engine.unload() if engine is not None else False

    def status_line(self) -> str:
        loaded = self.loaded
        if loaded is None:
            return f"Models not loaded (they load on the first Generate). Sources: `{self.settings.models}`."
        return f"Models loaded from `{self.settings.models}` with preset **{loaded.preset.name}** on {self.device}."

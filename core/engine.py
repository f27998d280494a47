"""The engine: models loaded once for a source and a memory preset, and generation of :class:`GenerationRequest`.

Every surface goes through it: the studio, ``generate``, ``story render``, ``eval``, ``bench`` and the trainer's
validation. It owns the one loader (hub ids, folders, models directories, ``tiny``; see :mod:`core.loading.sources` and
:func:`core.loading.loader.load_pipeline`), the style LoRAs and the text adapter on the loaded pipeline, the PNG
records' "where it was made" part, progress and cancel::

    engine = Engine("tiny", preset="auto")
    result = engine.generate(GenerationRequest("[Mia] on a bike", characters=[mia], seed=42))
    result.images[0], result.records[0]

:meth:`Engine.from_pipeline` puts an engine around a pipeline the caller already has (models built in memory, the
trainer's pipeline, a stand-in in tests), as diffusers' ``from_pipe`` does for pipelines.

The pipeline's own caches (character features, projector context, prompt embeddings) live on the pipeline and
are reused across requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

from core.loading.loras import LoadedLoras
from core.request import GenerationRequest
from core.loading.component_files import file_digest
from core.loading.sources import ModelSources

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]  # (fraction done, message)


class _Cancelled(Exception):
    """Raised by the step callback when the caller's cancel event is set: it leaves the denoising loop at once, so
    the rest of the steps and the VAE decode of an image nobody wants are skipped (the engine catches it)."""


@dataclass
class EngineResult:
    """What one request produced: an image per finished run with its seed and PNG record, notes for the user,
    and whether it was cancelled (the images finished before the cancel are kept)."""

    images: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    records: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False


class Engine:
    """Models for ``sources`` under ``preset``, loaded on first use.

    Args:
        models: the models' spec as the user gave it: ``default``, ``tiny`` or a models directory.
        sources: the parsed sources, when they differ from ``models`` alone (single sources overridden); by default
            ``ModelSources.parse(models)`` on first use.
        preset: a memory preset name, ``auto`` (the planner picks from the detected GPU and RAM), or a
            :class:`core.loading.memory.MemoryPreset` used as it is.
        device: ``cuda`` when available, else ``cpu``.
        dtype: a torch dtype or its name; default: the preset's on a GPU, float32 on the CPU.
        zero_gpu: on ZeroGPU the preset is always ``full``.
        progress_bars: show diffusers' and the hub's progress bars (the command line does).
        speed: a :class:`core.loading.speed.SpeedOptions` or a speed mode name (``off``, ``full``, ``fast``),
            applied once after loading (:func:`core.loading.speed.apply_speed`); default off.
        lora_downloads: hub LoRAs may be downloaded while generating (the command line); ``False``: only from the
            hub cache (the studio fetches them before it takes the GPU slot).
    """

    def __init__(self, models: str = "default", preset="auto", *, sources: ModelSources | None = None,
                 device=None, dtype=None, zero_gpu: bool = False, progress_bars: bool = False, width: int = 1024,
                 height: int = 1024, speed=None, lora_downloads: bool = True):
        from core.loading.speed import SpeedOptions

        self.spec = str(models or "default")
        self.speed = speed if isinstance(speed, SpeedOptions) else SpeedOptions.mode(speed)
        self._compiled_shapes: set = set()
        self.speed_steps: list[str] = []  # what apply_speed did or left off, one line each
        self._sources = sources
        self.preset_name = preset
        self._device = device
        self._dtype = dtype
        self.zero_gpu = zero_gpu
        self.progress_bars = progress_bars
        self._size = (width, height)
        self._pipe = None
        self._preset = None
        self.preset_reason = ""
        self.steps: list[str] = []
        self._text_adapter: str | None = None
        self._adapter_digest: tuple = (None, None)  # (file key, SHA-256) of a local adapter file
        self._provenance: dict | None = None  # given to from_pipeline: the records' "where it was made" as it is
        self.lora_downloads = lora_downloads
        self.loras = LoadedLoras(lora_downloads)
        self._lock = threading.RLock()

    @classmethod
    def from_pipeline(cls, pipe, models: str = "in memory", preset="full", *, provenance: dict | None = None,
                      loaded_as: str | None = None, **options) -> Engine:
        """An engine around ``pipe``, a pipeline the caller already has (as diffusers' ``from_pipe``): nothing is
        loaded, and :meth:`generate` runs ``pipe`` with the engine's checks, seeds, LoRAs, progress, cancel and records.

        Args:
            pipe: an :class:`~core.models.pipeline.InstantCharacterPipeline` (or a stand-in called like one) with its
                weights and memory placement as wanted.
            models: what the engine calls its models (:attr:`spec`, in logs and records); without ``sources`` the
                records name every model by it.
            preset: the :class:`~core.loading.memory.MemoryPreset` (or its name) ``pipe`` runs under, for the
                out-of-memory advice and the records; not applied here. ``None``: the caller manages the memory, and
                an out-of-memory error passes as it is.
            provenance: the records' "where it was made" (``models``, ``dtype``, ``preset``) as it is, when the engine
                cannot tell it from ``models`` (a training pipeline, a stand-in).
            loaded_as: the first line of :attr:`steps`, saying where ``pipe`` came from.
            options: the other keywords of :class:`Engine` (``sources``, ``device``, ``dtype``, ``speed`` …);
                ``speed`` is applied to ``pipe`` now.

        :meth:`unload` lets ``pipe`` go for good (a later request would load ``models``).
        """
        if options.get("sources") is None:
            options["sources"] = ModelSources(base=models, siglip=models, dinov2=models, adapter=models)
        engine = cls(models, preset, **options)
        engine._provenance = provenance
        with engine._lock:
            engine._pipe = pipe
            engine.steps = [loaded_as or f"pipeline given ({type(pipe).__name__})"]
            engine.steps += engine._apply_speed(pipe, lambda fraction, message: None)
        return engine

    @property
    def sources(self) -> ModelSources:
        if self._sources is None:
            self._sources = ModelSources.parse(self.spec)  # tiny: built once, in the user cache
        return self._sources

    # ------------------------------------------------------------------ machine and preset
    @property
    def device(self):
        import torch

        return torch.device(self._device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def is_tiny(self) -> bool:
        return self.spec == "tiny"

    @property
    def preset(self):
        """The :class:`core.loading.memory.MemoryPreset` in use (resolved on first access; ``auto`` asks the planner);
        ``None`` when the caller manages the memory (:meth:`from_pipeline`)."""
        if self._preset is None and not isinstance(self.preset_name, str):
            self._preset, self.preset_reason = self.preset_name, "given"
        if self._preset is None and isinstance(self.preset_name, str):
            from core.loading.presets import resolve_preset

            self._preset, self.preset_reason = resolve_preset(
                self.preset_name, tiny=self.is_tiny, zero_gpu=self.zero_gpu, device=self.device,
                width=self._size[0], height=self._size[1], sources=lambda: self.sources)
        return self._preset

    @property
    def dtype(self):
        import torch

        from core.loading.loader import preset_dtype

        if self._dtype is None:
            return preset_dtype(self.preset, self.device)
        return getattr(torch, self._dtype) if isinstance(self._dtype, str) else self._dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def provenance(self) -> dict:
        """Where an image was made, for its PNG record: model sources, dtype and preset."""
        if self._provenance is not None:
            return {**self._provenance, "models": dict(self._provenance.get("models") or {})}
        s = self.sources
        models = {"base": s.base, "siglip": s.siglip, "dinov2": s.dinov2, "spec": self.spec, **self._adapter_record()}
        for part, path in s.part_files().items():  # single files replaced these parts: name and fingerprint
            models[part] = {"file": os.path.basename(path), "digest": file_digest(path)}
        if os.path.isfile(s.siglip):
            models["siglip"] = {"file": os.path.basename(s.siglip), "digest": file_digest(s.siglip)}
        return {"models": models, "dtype": self.dtype_name,
                "preset": self.preset.name if self.preset is not None else None}

    def _adapter_record(self) -> dict:
        """The image adapter for a PNG record: a hub source as given; a local file by its name and SHA-256 (a
        path on this machine means nothing elsewhere), hashed once per file version."""
        from core.io.paths import sha256_file
        from core.loading.sources import is_local

        spec = self.sources.adapter
        path = Path(spec).expanduser()
        if not is_local(spec) or not path.is_file():
            return {"adapter": spec}
        info = path.stat()
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if self._adapter_digest[0] != key:
            self._adapter_digest = (key, sha256_file(path))
        return {"adapter": path.name, "adapter_sha256": self._adapter_digest[1]}

    # ------------------------------------------------------------------ loading
    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipe(self):
        """The loaded :class:`core.models.pipeline.InstantCharacterPipeline` (loading it first if needed)."""
        return self.load()

    def load(self, report: Report | None = None, text_adapter: str | os.PathLike | None = None):
        """Loads the models once; ``report(fraction, message)`` hears about each stage. Raises one-line user errors
        (``ModelSourceError``, ``PresetUnavailableError``, ``MemoryAdviceError``)."""
        from core.loading.loader import load_pipeline

        report = report or (lambda fraction, message: None)
        with self._lock:
            if self._pipe is None:
                report(0.0, "Finding the models")
                preset = self.preset
                report(0.1, f"Loading the models (preset {preset.name})")
                self._pipe, self.steps = load_pipeline(self.sources, preset, self.device, self.dtype,
                                                       text_adapter=text_adapter, progress=self.progress_bars)
                self.steps += self._apply_speed(self._pipe, report)
                self._text_adapter = str(text_adapter) if text_adapter else None
                log.info("models loaded: %s; preset %s (%s): %s", self.sources, preset.name, self.preset_reason,
                         "; ".join(self.steps))
                report(1.0, "Models loaded")
            return self._pipe

    def unload(self) -> bool:
        """Drops the models and frees their memory; False when none were loaded."""
        from core.loading.memory import free_memory

        with self._lock:
            if self._pipe is None:
                return False
            self._pipe = None
            self._text_adapter = None
            self.loras = LoadedLoras(self.lora_downloads)
            free_memory()
            return True

    @property
    def controlnet_source(self) -> str:
        """The ControlNet control images use: the sources' (``--controlnet``, a models directory's
        ``controlnet/``), else :data:`core.loading.sources.DEFAULT_CONTROLNET`."""
        from core.loading.sources import DEFAULT_CONTROLNET

        return self.sources.controlnet or DEFAULT_CONTROLNET

    def _use_controlnet(self, pipe, report: Report) -> None:
        """Loads the ControlNet on the first request with a control image, under the engine's preset."""
        if getattr(pipe, "controlnet", None) is not None:
            return
        from core.loading.components import load_controlnet
        from core.loading.memory import out_of_memory_advice
        from core.loading.presets import attach_controlnet

        report(0.0, f"Loading the ControlNet ({self.controlnet_source})")
        with out_of_memory_advice(self.preset):
            net = load_controlnet(self.controlnet_source, self.dtype)
            steps = attach_controlnet(pipe, net, self.preset, self.device)
        self.steps += steps
        log.info("ControlNet loaded from %s: %s", self.controlnet_source, "; ".join(steps))

    def _use_text_adapter(self, pipe, path: str | None) -> None:
        if (path or None) == self._text_adapter:
            return
        if path:
            pipe.load_text_adapter(path)
        else:
            pipe.unload_text_adapter()
        self._text_adapter = str(path) if path else None

    # ------------------------------------------------------------------ speed
    def _apply_speed(self, pipe, report: Report) -> list[str]:
        from core.loading.speed import apply_speed

        if self.speed.off:
            return []
        report(0.9, f"Applying speed mode {self.speed.name}")
        self.speed_steps = apply_speed(pipe, self.speed, self.device)
        return list(self.speed_steps)

    def _prepare_speed(self, pipe, request: GenerationRequest, report: Report) -> list[str]:
        """Per request: the draft step cache on or off, and a message the first time a compiled shape runs; returns
        the notes for the user (a shape that runs without compilation)."""
        from core.loading.speed import (MAX_COMPILED_SHAPES, compile_decision, is_compiled, run_eagerly,
                                        set_fused_for_loras, set_step_cache)

        for changed in (set_fused_for_loras(pipe, self.speed, bool(request.loras)),
                        set_step_cache(pipe, bool(getattr(request, "draft", False)), self.speed.draft_threshold)):
            if changed:
                log.info("%s", changed)
        if is_compiled(pipe) and not getattr(request, "draft", False):
            shape = (request.width, request.height, len(request.characters), request.negative is not None)
            decision = compile_decision(self._compiled_shapes, shape)
            if decision == "compile":
                self._compiled_shapes.add(shape)
                message = (f"Compiling the transformer for {request.width}x{request.height} (first use in this "
                           "process: it takes a while, later requests of this size reuse it)")
            elif decision == "eager":
                run_eagerly()
                message = (f"{request.width}x{request.height} runs without compilation (compiled: the preset sizes, "
                           f"at most {MAX_COMPILED_SHAPES} shapes per process)")
            else:
                return []
            log.info("%s", message)
            report(0.0, message)
            return [message] if decision == "eager" else []
        return []

    # ------------------------------------------------------------------ generation
    def _memory_advice(self, request: GenerationRequest):
        """Out of GPU memory becomes advice naming the next preset; without a preset (the caller manages the
        memory) the error passes as it is."""
        from core.loading.memory import out_of_memory_advice

        if self.preset is None:
            return contextlib.nullcontext()
        return out_of_memory_advice(self.preset, width=request.width, height=request.height)

    def generate(self, request: GenerationRequest, *, report: Report | None = None,
                 cancel: threading.Event | None = None, pipeline_options: dict | None = None) -> EngineResult:
        """Makes ``request.images`` images of ``request`` (its seed fixed first).

        ``report(fraction, message)`` hears about loading and every denoising step; setting ``cancel`` stops at
        the next step: that image's remaining steps and its VAE decode are skipped (the images finished before are
        kept). ``pipeline_options`` are passed to the pipeline as
        they are (``output_type``, a ``callback_on_step_end`` of the caller's own is not supported).
        """
        import torch

        report = report or (lambda fraction, message: None)
        request = request.with_seed()  # checked when it was built
        request.resolved_prompt  # its [Name] tags match its characters: before any model loads
        steps, count = max(1, request.denoising_steps), int(request.images)  # an edit runs fewer steps
        result = EngineResult()
        with self._lock:
            pipe = self.load(report=lambda fraction, message: report(0.0, message),
                             text_adapter=request.text_adapter)
            self._use_text_adapter(pipe, request.text_adapter)
            if request.controls:
                self._use_controlnet(pipe, report)
            self.loras.apply(pipe, request.loras)
            result.notes += self._prepare_speed(pipe, request, report)
            provenance = self.provenance()
            if request.controls:
                provenance["models"]["controlnet"] = self.controlnet_source
            for k in range(count):
                seed = request.image_seed(k)

                def on_step(pipe, i, t, tensors, k=k):
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled
                    report((k * steps + i + 1) / (count * steps), f"Image {k + 1}/{count}: step {i + 1}/{steps}")
                    return {}

                if cancel is not None and cancel.is_set():
                    result.cancelled = True
                    break
                try:
                    with self._memory_advice(request):
                        output = pipe(**request.pipeline_kwargs(), generator=torch.Generator("cpu").manual_seed(seed),
                                      callback_on_step_end=on_step, **(pipeline_options or {}))
                except _Cancelled:
                    pipe._current_timestep = None
                    if hasattr(pipe, "maybe_free_model_hooks"):  # offloading presets: models back as after a run
                        pipe.maybe_free_model_hooks()
                    result.cancelled = True
                    break
                result.notes += [n for n in output.notes if n not in result.notes]
                result.images.append(output.images[0])
                result.seeds.append(seed)
                result.records.append(request.to_record(k, provenance))
        if result.cancelled:
            result.notes.append(f"cancelled: {len(result.images)} of {count} images finished")
        return result

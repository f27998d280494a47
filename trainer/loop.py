"""The training loop: the config's stages, one after another, through accelerate.

accelerate provides mixed precision, gradient accumulation and the process group (DDP over NCCL or gloo; FSDP or
DeepSpeed through ``accelerate config``). The same function runs in one process or under ``torchrun`` /
``accelerate launch``. Each optimizer step takes the stage's global batch from
:class:`trainer.data.StageSchedule`; process ``r`` in accumulation pass ``a`` takes slice ``a * processes + r`` of
it, and every row's noise and timestep come from its own seeded generator, so one process and N processes with
the same global batch compute the same update (up to float summation order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import (
    TrainingState,
    export_adapter,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .data import Example, load_dataset
from .events import SAVE_NOW, STOP, EventLog, Throughput, clear_requests, take_request
from .batch import BatchEncoder, EncodingCache
from .objective import build_training_model
from .validation import Validator, training_engine
from core.conditioning.character import Character
from core.errors import UserError
from core.loading.presets import adapter_processor_names
from core.loading.quantization import backends, pipeline_quantization_config, quantization_backend
from core.request import GenerationRequest

log = logging.getLogger(__name__)
RECENT_LOSSES = 2000  # kept in checkpoints for the studio's loss plot


class TrainingRefused(UserError, ValueError):
    """Training cannot start (bad dataset, existing run without ``--resume``); the message says why."""


@dataclass
class TrainResult:
    """What a run ended with."""

    state: TrainingState
    stopped: bool  # True when a stop request ended it early
    exported: list[Path]
    losses: list[float]


def config_digest(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def load_datasets(config: TrainConfig) -> dict[str, list[Example]]:
    """The datasets the stages use, each validated; raises ``DatasetError`` listing every bad row."""
    needed = set()
    for stage in config.stages:
        needed.update(("unpaired", "paired") if stage.data == "both" else (stage.data,))
    out = {"unpaired": [], "paired": []}
    for kind in sorted(needed):
        out[kind] = load_dataset(config.resolve(getattr(config.data, kind)), kind)
    return out


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def _make_optimizer(config: TrainConfig, params, lr: float, events: EventLog):
    o = config.optimizer
    kwargs = dict(lr=lr, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay, eps=o.epsilon)
    if o.use_8bit_adam:
        if torch.cuda.is_available():
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        events.emit("warning", message="use_8bit_adam needs CUDA: using torch AdamW")
    return torch.optim.AdamW(params, **kwargs)


def _warmup(steps: int):
    return lambda step: 1.0 if steps <= 0 else min(1.0, (step + 1) / steps)


def _model_sources(config: TrainConfig):
    from core.loading.sources import ModelSources

    m = config.models
    source = m.source
    if source not in ("default", "tiny") and not Path(source).is_absolute():
        source = str(config.resolve(source))
    return ModelSources.parse(source).override(base=m.base, siglip=m.siglip, dinov2=m.dinov2, adapter=m.adapter)


def source_adapter(config: TrainConfig) -> str | None:
    """The adapter file a run starts from (``models.init = "checkpoint"``), else None."""
    from core.loading.sources import resolve_file

    return resolve_file(_model_sources(config).adapter) if config.models.init == "checkpoint" else None


def _load_pipeline(config: TrainConfig, dtype: torch.dtype, device):
    from core.models.pipeline import InstantCharacterPipeline

    m = config.models
    sources = _model_sources(config)
    backend = quantization_backend(m.base_quantization) if m.base_quantization else None
    kwargs = {}
    if backend is not None and backend.at_load:
        if backend.unavailable("cuda" if torch.cuda.is_available() else "cpu"):
            runnable = [b.name for b in backends() if b.trains_frozen_base and not b.needs_cuda]
            raise TrainingRefused(f"models.base_quantization = {backend.name!r} needs {backend.library} on a CUDA "
                                  f"GPU; on this machine use {' or '.join(repr(n) for n in runnable)}")
        kwargs["quantization_config"] = pipeline_quantization_config({"transformer": backend.name}, dtype)
    pipe = InstantCharacterPipeline.from_pretrained(sources, dtype=dtype, progress=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if backend is not None and not backend.at_load:  # FLUX's own Linears only: the adapter's processors stay
        backend.apply(pipe.transformer, exclude=adapter_processor_names(pipe.transformer))
    pipe = pipe.to(device)
    if m.text_adapter:
        path = config.resolve(m.text_adapter)
        if "text_adapter" in config.trainable:  # float32 master weights: the trainable part installs it uncast
            from core.models.text_adapter import TextAdapter

            from .trainable import TextAdapterPart

            TextAdapterPart(TextAdapter.load(path)).install(pipe)
        else:
            pipe.load_text_adapter(path)
    return pipe


class Trainer:
    """One training job. Build it, then :meth:`run`; all processes of a launch run the same code."""

    def __init__(self, config: TrainConfig, resume: bool = False, accelerator=None, vram_gib: float | None = None,
                 listeners=()):
        """``listeners`` hear every event record as it is written (the command line prints them)."""
        from accelerate import Accelerator

        self.config = config
        self.resume = resume
        self.vram_gib = vram_gib  # plan for this card (GiB) instead of the detected one; see trainer.plan
        run = config.run
        self.accelerator = accelerator or Accelerator(
            mixed_precision=run.mixed_precision if torch.cuda.is_available() or run.mixed_precision != "fp16" else "no",
            gradient_accumulation_steps=run.gradient_accumulation_steps,
            cpu=not torch.cuda.is_available(),
        )
        acc = self.accelerator
        config.check(acc.num_processes)
        # one process: the same computation unsharded; N processes with "fsdp": FSDP2 (trainer.sharding)
        self.sharded = config.run.distributed == "fsdp" and acc.num_processes > 1
        if self.sharded and (config.sampling.every or config.validation.every):
            raise TrainingRefused("run.distributed = \"fsdp\" on several processes does not render samples or "
                                  "validation yet: set sampling.every and validation.every to 0, or use \"ddp\"")
        self.out = config.output_path
        self.events = EventLog(self.out, enabled=acc.is_main_process, listeners=listeners)
        self.losses: list[float] = []
        self.stepping = False  # True once the step loop runs: a stop asked for then ends at the next step's end
        self.stop_asked = False  # ask_stop() was called (Ctrl-C in the terminal); honoured like a stop request

    def ask_stop(self) -> None:
        """Stop at the end of the current optimizer step with a checkpoint, as a ``stop`` request does (safe to
        call from a signal handler: it only sets a flag)."""
        self.stop_asked = True

    # ------------------------------------------------------------------ setup
    def _prepare(self):
        acc, config = self.accelerator, self.config
        self._check_plan()  # before any model (the validator's metric models included) loads
        try:
            self.datasets = load_datasets(config)
        except ValueError as exc:
            self.events.emit("error", message="dataset has bad rows", details=str(exc))
            raise TrainingRefused(f"training refused: the dataset has bad rows\n{exc}") from None
        try:
            self.validator = Validator.from_config(config)
        except ValueError as exc:
            self.events.emit("error", message="validation dataset has bad rows", details=str(exc))
            raise TrainingRefused(f"training refused: the validation dataset has bad rows\n{exc}") from None
        existing = list_checkpoints(self.out)
        if existing and not self.resume:
            raise TrainingRefused(f"{self.out} already holds checkpoints (latest {existing[-1].name}): "
                                  "pass --resume to continue, or choose another output_dir")
        self.checkpoint = latest_checkpoint(self.out) if self.resume else None
        if acc.is_main_process:
            clear_requests(self.out)
        from accelerate.utils import set_seed

        set_seed(config.seed)
        self.weight_dtype = _weight_dtype(acc.mixed_precision)
        started = time.monotonic()
        self.events.emit("loading", message=f"loading the models ({config.models.source}, "
                                            f"{str(self.weight_dtype).removeprefix('torch.')} on {acc.device.type})")
        self.pipe = _load_pipeline(config, self.weight_dtype, acc.device)
        self.events.emit("loading", message=f"models loaded in {time.monotonic() - started:.1f} s")
        model = build_training_model(self.pipe, config.trainable, config.objective, config.models.init == "fresh",
                                     config.seed, config.part_options())
        if config.run.gradient_checkpointing:
            self.pipe.transformer.enable_gradient_checkpointing()
        cache_dir = config.resolve(config.data.cache_dir) if config.data.cache_dir else self.out / "cache"
        kinds = tuple(k for k, on in (("latents", config.data.cache_latents),
                                      ("text", config.data.cache_text_embeddings),
                                      ("features", config.data.cache_character_features)) if on)
        self.encoder = BatchEncoder(self.pipe, config.objective, config.data.max_sequence_length,
                                    EncodingCache(cache_dir, kinds), config.seed)
        if kinds:
            self._fill_cache(kinds)
        if self.sharded:
            from .sharding import shard_model

            self.model = shard_model(model, acc.device)
        else:
            self.model = acc.prepare(model)
        self.digest = config_digest(config)

    def _fill_cache(self, kinds: tuple[str, ...]) -> None:
        """Encodes every row the stages use once, then moves the encoders whose outputs are all cached off the
        GPU (what ``trainer.plan`` counts): the VAE for ``latents``, CLIP + T5 for ``text``, SigLIP + DINOv2 for
        ``features``. Sampling and validation move them back while they run."""
        jobs = [(index, stage, row) for index, stage in enumerate(self.config.stages)
                for kind in ("unpaired", "paired") if stage.data in (kind, "both") for row in self.datasets[kind]]
        started, shown = time.monotonic(), time.monotonic()
        self.events.emit("caching", message=f"caching the frozen encoders' {', '.join(kinds)} for {len(jobs)} "
                                            "row(s) x stage (once per image; later runs read the cache)")
        for done, (index, stage, row) in enumerate(jobs, 1):
            self.encoder.encode([row], stage.resolution, [(index, 0, 0)])
            if time.monotonic() - shown > 10 and done < len(jobs):
                shown = time.monotonic()
                self.events.emit("caching", message=f"caching: {done}/{len(jobs)}")
        self.events.emit("caching", message=f"cached {len(jobs)} in {time.monotonic() - started:.1f} s")
        if self.accelerator.device.type == "cpu":
            return
        offload = {"latents": ("vae",), "text": ("text_encoder", "text_encoder_2"), "features": ("siglip", "dinov2")}
        self.offloaded = [n for k in kinds for n in offload[k] if getattr(self.pipe, n, None) is not None]
        for name in self.offloaded:
            getattr(self.pipe, name).to("cpu")
        torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _encoders_back(self):
        """The offloaded encoders on the training device while sampling or validation renders."""
        names = getattr(self, "offloaded", [])
        for name in names:
            getattr(self.pipe, name).to(self.accelerator.device)
        try:
            yield
        finally:
            for name in names:
                getattr(self.pipe, name).to("cpu")
            if names:
                torch.cuda.empty_cache()

    def _check_plan(self) -> None:
        """Refuses, before any model loads, a job whose memory plan exceeds the card (``trainer.plan``)."""
        from .plan import PlanRefused, check_fits

        try:
            check_fits(self.config, self.accelerator.num_processes, self.vram_gib)
        except PlanRefused as exc:
            self.events.emit("error", message="the memory plan does not fit the card", details=str(exc))
            raise TrainingRefused(str(exc)) from None

    # ------------------------------------------------------------------ pieces
    def _requests(self) -> tuple[bool, bool]:
        """(stop, save_now) as seen by the main process, shared with every process."""
        flags = [self.stop_asked, False]
        if self.accelerator.is_main_process:
            flags = [take_request(self.out, STOP) or self.stop_asked, take_request(self.out, SAVE_NOW)]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            flags = broadcast_object_list(flags)
        return bool(flags[0]), bool(flags[1])

    def _save(self, state, optimizer, scheduler, reason: str) -> Path:
        state.losses = self.losses[-RECENT_LOSSES:]
        path = save_checkpoint(self.accelerator, self.out, state, self.model, optimizer, scheduler,
                               self.config.run.keep_checkpoints, sharded=self.sharded)
        self.events.emit("checkpoint", step=state.global_step, path=str(path), reason=reason)
        return path

    def _sample_reference(self):
        s = self.config.sampling
        if s.reference:
            return self.config.resolve(s.reference)
        rows = self.datasets["paired"] or self.datasets["unpaired"]
        first = rows[0]
        return first.references[0].image if first.references else first.target

    def _sample(self, step: int) -> None:
        """Sample images with the current adapter, fixed prompts and seeds (main process only), made by the engine
        around the training pipeline (:func:`trainer.validation.training_engine`)."""
        acc, s = self.accelerator, self.config.sampling
        if acc.is_main_process:
            folder = self.out / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            character = Character(self._sample_reference())
            engine = training_engine(self.pipe)
            paths = []
            self.pipe.clear_caches()
            with self._encoders_back(), torch.random.fork_rng(), torch.no_grad(), acc.autocast():
                for i, prompt in enumerate(s.prompts):
                    for seed in s.seeds:
                        request = GenerationRequest(prompt, characters=[character], steps=s.steps,
                                                    guidance=s.guidance_scale, width=s.resolution,
                                                    height=s.resolution, seed=seed,
                                                    max_sequence_length=self.config.data.max_sequence_length)
                        image = engine.generate(request).images[0]
                        path = folder / f"step-{step:08d}-p{i}-s{seed}.png"
                        image.save(path)
                        paths.append(str(path))
            self.pipe.clear_caches()
            self.events.emit("sample", step=step, images=paths, prompts=s.prompts, seeds=s.seeds)
        acc.wait_for_everyone()

    def _validate(self, step: int) -> None:
        """Held-out CLIP-I / DINO-I / CLIP-T with the current adapter (main process only; see trainer.validation)."""
        acc = self.accelerator
        if acc.is_main_process:
            with self._encoders_back():
                fields = self.validator.run(self.model, self.pipe, step, acc.autocast())
            self.events.emit("validation", **fields)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    def run(self, max_steps: int | None = None) -> TrainResult:
        """Trains all stages (or stops after ``max_steps`` optimizer steps in this call)."""
        try:
            return self._run(max_steps)
        except TrainingRefused:
            raise
        except BaseException as exc:
            self.events.emit("error", message=f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, max_steps):
        from .data import StageSchedule

        self._prepare()
        acc, config = self.accelerator, self.config
        state = TrainingState(config_digest=self.digest)
        if self.checkpoint is not None:
            state = TrainingState.read(self.checkpoint)
            self.losses = list(state.losses)
            if state.config_digest and state.config_digest != self.digest:
                self.events.emit("warning", message="the config changed since this checkpoint was written")
        total = config.total_steps
        self.events.emit("start", total_steps=total, processes=acc.num_processes, resumed_from=(
            str(self.checkpoint) if self.checkpoint else None), global_step=state.global_step,
            stages=[dataclasses.asdict(s) for s in config.stages], output_dir=str(self.out))
        speed = Throughput()
        done_now = 0
        stopped = False
        params = [p for p in self.model.parameters() if p.requires_grad]
        for stage_index, stage in enumerate(config.stages):
            if stage_index < state.stage_index:
                continue
            optimizer = acc.prepare_optimizer(_make_optimizer(config, params, stage.learning_rate, self.events))
            # stepped by hand once per optimizer step: accelerate's wrapper would step it once per process
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, _warmup(stage.warmup_steps))
            if self.checkpoint is not None and state.stage_index == stage_index and state.stage_step > 0:
                state = load_checkpoint(acc, self.checkpoint, self.model, optimizer, scheduler, sharded=self.sharded)
                self.losses = list(state.losses)
            elif state.stage_index != stage_index:
                state.stage_index, state.stage_step = stage_index, 0
            schedule = StageSchedule(self.datasets["unpaired"], self.datasets["paired"], stage.data,
                                     stage.batch_size, config.seed, stage_index, stage.paired_fraction)
            micro = config.micro_batch(stage, acc.num_processes)
            accumulation = config.run.gradient_accumulation_steps
            self.events.emit("stage", stage=stage_index, name=stage.name, steps=stage.steps,
                             start_step=state.stage_step, micro_batch=micro)
            self.stepping = True
            while state.stage_step < stage.steps:
                step = state.stage_step
                rows = schedule.global_batch(step)
                losses = []
                for a in range(accumulation):
                    with acc.accumulate(self.model):
                        offset = (a * acc.num_processes + acc.process_index) * micro
                        keys = [(stage_index, step, offset + i) for i in range(micro)]
                        inputs = self.encoder.encode(rows[offset:offset + micro], stage.resolution, keys)
                        with acc.autocast() if self.sharded else contextlib.nullcontext():  # prepare() adds it
                            loss = self.model(inputs.to(acc.device, self.weight_dtype))
                        acc.backward(loss)
                        if acc.sync_gradients and config.optimizer.max_grad_norm > 0:
                            acc.clip_grad_norm_(params, config.optimizer.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        losses.append(loss.detach().float())
                scheduler.step()
                mean_loss = float(acc.reduce(torch.stack(losses).mean(), reduction="mean"))
                self.losses.append(mean_loss)
                state.stage_step += 1
                state.global_step += 1
                done_now += 1
                speed.tick()
                if state.global_step % config.run.log_every == 0 or state.stage_step == stage.steps:
                    rate = speed.rate()
                    eta = speed.eta(total - state.global_step)
                    self.events.emit("step", step=state.global_step, total_steps=total, stage=stage_index,
                                     stage_step=state.stage_step, loss=mean_loss,
                                     lr=optimizer.param_groups[0]["lr"],
                                     it_s=None if rate is None else round(rate, 4),
                                     eta_s=None if eta is None else round(eta, 1),
                                     loss_finite=math.isfinite(mean_loss))
                stop, save_now = self._requests()
                limit = max_steps is not None and done_now >= max_steps
                every = config.run.checkpoint_every
                if save_now or stop or limit or (every and state.global_step % every == 0):
                    self._save(state, optimizer, scheduler,
                               "stop" if stop else "save-now" if save_now else "limit" if limit else "interval")
                if config.sampling.every and state.global_step % config.sampling.every == 0:
                    self._sample(state.global_step)
                if self.validator is not None and state.global_step % config.validation.every == 0:
                    self._validate(state.global_step)
                if stop or limit:
                    stopped = True
                    break
            if stopped:
                break
            state.stage_index, state.stage_step = stage_index + 1, 0
            self.checkpoint = None  # later stages start from the in-memory state
        exported = []
        if stopped:
            self.events.emit("stopped", step=state.global_step)
        else:
            if config.run.checkpoint_every and state.global_step % config.run.checkpoint_every:
                self._save(state, optimizer, scheduler, "end")
            exported = self.export()
            self.events.emit("done", step=state.global_step, exported=[str(p) for p in exported])
        return TrainResult(state, stopped, exported, list(self.losses))

    def export(self) -> list[Path]:
        """Writes ``output_dir/adapter.safetensors`` + ``adapter.json`` (and ``.bin`` if configured)."""
        acc = self.accelerator
        written = []
        model = None
        if self.sharded:  # gathered to the main process, exported from a CPU copy of the parts
            from .sharding import export_copy, full_state_dict

            weights = full_state_dict(self.model)
            if acc.is_main_process:
                model = export_copy(self.config, weights)
        elif acc.is_main_process:
            model = acc.unwrap_model(self.model)
        if acc.is_main_process:
            meta = {"source": "instantcharacter-studio trainer", "config_digest": self.digest,
                    "stages": ",".join(s.name for s in self.config.stages)}
            written = export_adapter(self.out / "adapter", model, meta, self.config.export.released_bin,
                                     source_adapter(self.config) if "image_adapter_lora" in model.parts else None)
            self.events.emit("export", paths=[str(p) for p in written])
        acc.wait_for_everyone()
        return written


def train(config: TrainConfig, resume: bool = False, max_steps: int | None = None,
          vram_gib: float | None = None) -> TrainResult:
    """Runs a training job (see :class:`Trainer`)."""
    return Trainer(config, resume, vram_gib=vram_gib).run(max_steps)

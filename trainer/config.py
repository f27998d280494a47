"""The training job: one TOML file shared by the CLI and the studio's Train tab.

A job names the models, the datasets, the paper's stages (section 3.2: 1) unpaired at 512, 2) paired at 512,
3) paired + unpaired at 1024) and how to run them. Example::

    output_dir = "runs/my-character"
    seed = 0
    trainable = ["image_adapter", "text_adapter"]   # either or both; "image_adapter_lora": LoRA on it ([lora])

    [models]
    source = "default"            # "default", "tiny", or a models directory
    init = "checkpoint"           # "checkpoint": start from the adapter; "fresh": random initialization
    base_quantization = ""        # frozen FLUX as held: "", "quanto-int8", "quanto-fp8", "bnb-nf4", "bnb-int8"
    # text_adapter = "runs/old/adapter.text_adapter.safetensors"   # start from a text adapter; default: fresh

    [text_adapter]                # sizes of a fresh text adapter (the rest follows the base model)
    dim = 768
    depth = 4
    num_queries = 16
    token_dim = 768

    [validation]                  # held-out CLIP-I / DINO-I / CLIP-T every N steps (see trainer.validation)
    every = 500                   # 0: off
    data = "data/heldout.jsonl"   # any dataset layout; rendered from its references and caption
    clip_model = "openai/clip-vit-large-patch14"   # hub id or folder; "" skips CLIP-I and CLIP-T
    dino_model = "facebook/dino-vits16"            # hub id or folder; "" skips DINO-I
    segmenter = "none"            # or "threshold" (plain backgrounds)
    steps = 20
    size = 512
    guidance_scale = 3.5
    seed = 0                      # case i uses seed + i
    max_cases = 0                 # 0: every row

    [data]
    unpaired = "data/unpaired"    # folder with sidecar .txt captions, or a JSONL file
    paired = "data/paired.jsonl"

    [run]
    mixed_precision = "bf16"
    gradient_accumulation_steps = 1
    gradient_checkpointing = true
    distributed = "ddp"           # "fsdp": shard trainable weights, gradients, optimizer state (trainer.sharding)

    [[stages]]
    name = "unpaired-512"
    data = "unpaired"
    resolution = 512
    batch_size = 8                # global: split over processes and accumulation steps
    steps = 2000
    learning_rate = 2e-5
    warmup_steps = 2000

``batch_size`` is the global batch of one optimizer step, so the same file gives the same training on one
card or many: each process sees ``batch_size / (processes * gradient_accumulation_steps)`` images per pass.
Every problem is reported by :class:`ConfigError` with the key's dotted path.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from core.errors import UserError
from core.limits import (MAX_GUIDANCE, MAX_SEQUENCE_LENGTH, MAX_STEPS, LimitError, check_int, check_number,
                         check_seed, check_side)
from core.loading.quantization import backends

MIXED_PRECISION = ("no", "fp16", "bf16")
STAGE_DATA = ("unpaired", "paired", "both")
TIMESTEP_SAMPLING = ("logit_normal", "uniform", "mode")
LOSS_WEIGHTING = ("none", "sigma_sqrt", "cosmap")
INIT = ("checkpoint", "fresh")
KNOWN_TRAINABLE = ("image_adapter", "image_adapter_lora", "text_adapter")
SEGMENTERS = ("none", "threshold")
# "" (the compute dtype) or a quantization backend that can hold the frozen transformer in training
BASE_QUANTIZATIONS = ("",) + tuple(b.name for b in backends() if b.trains_frozen_base)
DISTRIBUTED = ("ddp", "fsdp")


class ConfigError(UserError, ValueError):
    """A training config that cannot be used; ``problems`` lists every one as ``"key.path: what is wrong"``."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        head = f"{source}: {len(self.problems)} problem(s): " if len(self.problems) > 1 else f"{source}: "
        super().__init__(head + "; ".join(self.problems))


@dataclass
class ModelsConfig:
    """Where FLUX, the encoders and the starting adapter come from (see :class:`core.loading.sources.ModelSources`)."""

    source: str = "default"  # "default", "tiny" or a models directory
    base: str | None = None  # overrides of single sources (hub id or local path)
    siglip: str | None = None
    dinov2: str | None = None
    adapter: str | None = None
    init: str = "checkpoint"  # "checkpoint" (the adapter above) or "fresh" (random init with `seed`)
    text_adapter: str | None = None  # a text adapter file to start from; fresh (zero output) when not set
    # the frozen FLUX transformer as held in training: "" (the compute dtype), "quanto-int8", "quanto-fp8" (any
    # device), "bnb-nf4", "bnb-int8" (bitsandbytes, CUDA only)
    base_quantization: str = ""


@dataclass
class DataConfig:
    """Datasets (see :mod:`trainer.data`); relative paths are relative to the config file."""

    unpaired: str | None = None
    paired: str | None = None
    max_sequence_length: int = 512  # T5 tokens per caption
    cache_latents: bool = False  # keep VAE latents on disk (``output_dir/cache``)
    cache_text_embeddings: bool = False
    cache_character_features: bool = False
    cache_dir: str | None = None  # default: ``output_dir/cache``; share one between runs of the same models


@dataclass
class StageConfig:
    """One training stage."""

    name: str = "stage"
    data: str = "unpaired"  # "unpaired" (reconstruction), "paired", or "both" (mixed)
    resolution: int = 512
    batch_size: int = 8  # global batch per optimizer step
    steps: int = 1000
    learning_rate: float = 2e-5
    warmup_steps: int = 2000
    paired_fraction: float = 0.5  # share of paired rows in a "both" stage


@dataclass
class ObjectiveConfig:
    """Flow matching (paper Eq. 5) options; timestep sampling and weighting from diffusers.training_utils."""

    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    loss_weighting: str = "none"
    guidance: float = 1.0  # FLUX.1-dev's guidance embedding input during training
    shift_timesteps: bool = True  # FLUX's resolution-dependent shift of the sampled sigmas


@dataclass
class OptimizerConfig:
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.01
    epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit; CUDA only (falls back to AdamW elsewhere)


@dataclass
class RunConfig:
    mixed_precision: str = "bf16"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 1
    # "ddp": every process holds the trainable weights, gradients and optimizer state whole (accelerate's default);
    # "fsdp": they are sharded over the processes (torch FSDP2 ``fully_shard``; checkpoints through
    # torch.distributed.checkpoint)
    distributed: str = "ddp"


@dataclass
class SamplingConfig:
    """Sample images at intervals with fixed prompts and seeds (``every = 0`` disables them)."""

    every: int = 0
    prompts: list[str] = field(default_factory=lambda: ["a character standing in a park"])
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: str | None = None  # reference image; default: the first row of the dataset
    resolution: int = 512
    steps: int = 20
    guidance_scale: float = 3.5


@dataclass
class TextAdapterSizes:
    """Sizes of a fresh text adapter (``[text_adapter]``); the other sizes follow the base model.

    Ignored when ``models.text_adapter`` names a file: its own config is used.
    """

    dim: int = 768  # Q-Former width
    depth: int = 4
    num_queries: int = 16
    token_dim: int = 768  # width of the character's F_T tokens


@dataclass
class LoraConfig:
    """LoRA on the image adapter (``trainable = ["image_adapter_lora"]``): rank and alpha of every update."""

    rank: int = 64
    alpha: float = 0.0  # 0: alpha = rank (scale 1)
    targets: str = "attention"  # "attention": the character attention K/V; "all": the projector too


@dataclass
class ValidationConfig:
    """Scores on a held-out set at intervals (``every = 0`` disables them; issue 8's CLIP-I, DINO-I, CLIP-T).

    Each row of ``data`` (a dataset in any layout of :mod:`trainer.data`) is rendered with the current adapter from
    its references and caption (``[Name]`` tags kept, so a trained text adapter takes part), then scored against
    its references by :class:`core.evaluation.metrics.CharacterScorer`.
    """

    every: int = 0
    data: str | None = None  # folder with .txt captions or a JSONL file, held out from training
    clip_model: str | None = "openai/clip-vit-large-patch14"  # hub id or folder; "" disables CLIP-I/CLIP-T
    dino_model: str | None = "facebook/dino-vits16"  # hub id or folder; "" disables DINO-I
    segmenter: str = "none"  # "none" or "threshold" (plain backgrounds), applied before CLIP-I/DINO-I
    steps: int = 20  # denoising steps per image
    size: int = 512  # square images, pixels
    guidance_scale: float = 3.5
    seed: int = 0  # case i uses seed + i
    max_cases: int = 0  # 0: every row


@dataclass
class ExportConfig:
    """Exports written when training ends: ``adapter.safetensors`` + ``adapter.json`` (and ``.bin`` on request)."""

    released_bin: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "runs/instantcharacter"
    seed: int = 0
    trainable: list[str] = field(default_factory=lambda: ["image_adapter"])
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=list)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    text_adapter: TextAdapterSizes = field(default_factory=TextAdapterSizes)
    lora: LoraConfig = field(default_factory=LoraConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    base_dir: str = field(default=".", repr=False)  # folder of the config file; not written to TOML

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def output_path(self) -> Path:
        return self.resolve(self.output_dir)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def part_options(self) -> dict[str, dict]:
        """Keyword arguments of the trainable parts' factories (see :func:`trainer.trainable.register_trainable`)."""
        return {"text_adapter": dataclasses.asdict(self.text_adapter),
                "image_adapter_lora": dataclasses.asdict(self.lora)}

    def micro_batch(self, stage: StageConfig, num_processes: int) -> int:
        """Images per process per forward pass for ``stage``."""
        return stage.batch_size // (num_processes * self.run.gradient_accumulation_steps)

    # ------------------------------------------------------------------ checks
    def problems(self, num_processes: int = 1) -> list[str]:
        """Every problem with this config, as ``"key.path: message"`` lines (empty when valid)."""
        out = []

        def need(cond, key, message):
            if not cond:
                out.append(f"{key}: {message}")

        def rule(check, key, *args):
            """A :mod:`core.limits` rule of what becomes a GenerationRequest (samples, validation): its message under
            the config key, found now rather than at the first sample."""
            try:
                check(*args)
            except LimitError as exc:
                out.append(f"{key}: {exc}")

        need(bool(str(self.output_dir).strip()), "output_dir", "must not be empty")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", f"must be a non-negative integer, got {self.seed!r}")
        need(bool(self.trainable), "trainable", "name at least one module to train")
        need(not {"image_adapter", "image_adapter_lora"} <= set(self.trainable), "trainable",
             "image_adapter and image_adapter_lora train the same adapter: choose one")
        need(isinstance(self.lora.rank, int) and self.lora.rank >= 1, "lora.rank",
             f"{self.lora.rank!r}: must be at least 1")
        need(self.lora.targets in ("attention", "all"), "lora.targets",
             f"{self.lora.targets!r}: use 'attention' (character K/V) or 'all' (K/V and projector)")
        for name in self.trainable:
            need(name in KNOWN_TRAINABLE, "trainable", f"unknown module {name!r} (known: {', '.join(KNOWN_TRAINABLE)})")
        need(self.models.init in INIT, "models.init", f"{self.models.init!r}: use one of {', '.join(INIT)}")
        need(self.models.base_quantization in BASE_QUANTIZATIONS, "models.base_quantization",
             f"{self.models.base_quantization!r}: use one of {', '.join(repr(q) for q in BASE_QUANTIZATIONS)}")
        need(self.run.distributed in DISTRIBUTED, "run.distributed",
             f"{self.run.distributed!r}: use one of {', '.join(DISTRIBUTED)}")
        need(bool(self.stages), "stages", "add at least one [[stages]] table")
        rule(check_int, "data.max_sequence_length", self.data.max_sequence_length, "max_sequence_length", 1,
             MAX_SEQUENCE_LENGTH)
        used = set()
        per_pass = num_processes * self.run.gradient_accumulation_steps
        for i, s in enumerate(self.stages):
            key = f"stages[{i}]"
            need(s.data in STAGE_DATA, f"{key}.data", f"{s.data!r}: use one of {', '.join(STAGE_DATA)}")
            if s.data in STAGE_DATA:
                used.update(("unpaired", "paired") if s.data == "both" else (s.data,))
            need(isinstance(s.resolution, int) and s.resolution >= 16 and s.resolution % 16 == 0,
                 f"{key}.resolution", f"{s.resolution!r}: must be a multiple of 16 (at least 16)")
            need(isinstance(s.steps, int) and s.steps >= 1, f"{key}.steps", f"{s.steps!r}: must be at least 1")
            need(isinstance(s.batch_size, int) and s.batch_size >= 1, f"{key}.batch_size",
                 f"{s.batch_size!r}: must be at least 1")
            if isinstance(s.batch_size, int) and s.batch_size >= 1 and per_pass >= 1:
                need(s.batch_size % per_pass == 0, f"{key}.batch_size",
                     f"{s.batch_size} is not divisible by processes ({num_processes}) x gradient_accumulation_steps "
                     f"({self.run.gradient_accumulation_steps})")
            need(isinstance(s.learning_rate, (int, float)) and 0 < s.learning_rate < 1, f"{key}.learning_rate",
                 f"{s.learning_rate!r}: must be between 0 and 1")
            need(isinstance(s.warmup_steps, int) and s.warmup_steps >= 0, f"{key}.warmup_steps",
                 f"{s.warmup_steps!r}: must be 0 or more")
            need(0 <= s.paired_fraction <= 1, f"{key}.paired_fraction", "must be between 0 and 1")
        for kind in sorted(used):
            need(getattr(self.data, kind) is not None, f"data.{kind}", "a stage uses this dataset but it is not set")
        o = self.objective
        need(o.timestep_sampling in TIMESTEP_SAMPLING, "objective.timestep_sampling",
             f"{o.timestep_sampling!r}: use one of {', '.join(TIMESTEP_SAMPLING)}")
        need(o.loss_weighting in LOSS_WEIGHTING, "objective.loss_weighting",
             f"{o.loss_weighting!r}: use one of {', '.join(LOSS_WEIGHTING)}")
        need(o.logit_std > 0, "objective.logit_std", "must be positive")
        need(o.guidance >= 0, "objective.guidance", "must not be negative")
        p = self.optimizer
        need(0 <= p.adam_beta1 < 1 and 0 <= p.adam_beta2 < 1, "optimizer.adam_beta1/adam_beta2", "must be in [0, 1)")
        need(p.weight_decay >= 0, "optimizer.weight_decay", "must not be negative")
        need(p.max_grad_norm >= 0, "optimizer.max_grad_norm", "must not be negative (0 disables clipping)")
        r = self.run
        need(r.mixed_precision in MIXED_PRECISION, "run.mixed_precision",
             f"{r.mixed_precision!r}: use one of {', '.join(MIXED_PRECISION)}")
        need(isinstance(r.gradient_accumulation_steps, int) and r.gradient_accumulation_steps >= 1,
             "run.gradient_accumulation_steps", "must be at least 1")
        need(isinstance(r.checkpoint_every, int) and r.checkpoint_every >= 0, "run.checkpoint_every",
             "must be 0 (only at the end) or more")
        need(isinstance(r.keep_checkpoints, int) and r.keep_checkpoints >= 1, "run.keep_checkpoints",
             "must be at least 1")
        need(isinstance(r.log_every, int) and r.log_every >= 1, "run.log_every", "must be at least 1")
        m = self.sampling
        need(m.every >= 0, "sampling.every", "must be 0 (off) or more")
        if m.every:
            need(bool(m.prompts), "sampling.prompts", "give at least one prompt")
            need(isinstance(m.seeds, list) and bool(m.seeds), "sampling.seeds", "give a list of seeds")
            for x in m.seeds if isinstance(m.seeds, list) else []:
                rule(check_seed, "sampling.seeds", x)  # each sample is a GenerationRequest
            rule(check_side, "sampling.resolution", m.resolution, "resolution")
            rule(check_int, "sampling.steps", m.steps, "steps", 1, MAX_STEPS)
            rule(check_number, "sampling.guidance_scale", m.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
        t = self.text_adapter
        for name in ("dim", "depth", "num_queries", "token_dim"):
            value = getattr(t, name)
            need(isinstance(value, int) and value >= 1, f"text_adapter.{name}", f"{value!r}: must be at least 1")
        if isinstance(t.dim, int) and t.dim >= 1:
            need(t.dim % 64 == 0, "text_adapter.dim", f"{t.dim}: must be a multiple of 64 (the Q-Former's heads)")
        v = self.validation
        need(isinstance(v.every, int) and v.every >= 0, "validation.every", "must be 0 (off) or more")
        if v.every:
            need(bool(v.data), "validation.data", "give the held-out dataset (folder or JSONL) to score")
            need(bool(v.clip_model) or bool(v.dino_model), "validation.clip_model/dino_model",
                 "give at least one metric model")
            need(v.segmenter in SEGMENTERS, "validation.segmenter",
                 f"{v.segmenter!r}: use one of {', '.join(SEGMENTERS)}")
            # each case is a GenerationRequest: the request's rules
            rule(check_int, "validation.steps", v.steps, "steps", 1, MAX_STEPS)
            rule(check_side, "validation.size", v.size, "size")
            rule(check_number, "validation.guidance_scale", v.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
            rule(check_seed, "validation.seed", v.seed)
            need(isinstance(v.max_cases, int) and v.max_cases >= 0, "validation.max_cases", "must be 0 (all) or more")
        return out

    def check(self, num_processes: int = 1, source: str = "config") -> "TrainConfig":
        problems = self.problems(num_processes)
        if problems:
            raise ConfigError(problems, source)
        return self

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return _drop_none(data)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    def save(self, path: str | Path) -> Path:
        from core.io.paths import write_bytes_atomic

        return write_bytes_atomic(path, self.to_toml().encode())


_SECTIONS = {"models": ModelsConfig, "data": DataConfig, "objective": ObjectiveConfig, "optimizer": OptimizerConfig,
             "run": RunConfig, "sampling": SamplingConfig, "validation": ValidationConfig,
             "text_adapter": TextAdapterSizes, "lora": LoraConfig, "export": ExportConfig}


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _build(cls, data, key: str, problems: list[str]):
    if not isinstance(data, dict):
        problems.append(f"{key}: must be a table, got {type(data).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if name not in fields or name == "base_dir":
            known = ", ".join(n for n in fields if n != "base_dir")
            problems.append(f"{key + '.' if key else ''}{name}: unknown key (known: {known})")
            continue
        default = getattr(cls(), name)
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(f"{key + '.' if key else ''}{name}: must be true or false, got {value!r}")
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default is not None \
                and not isinstance(value, type(default)):
            problems.append(f"{key + '.' if key else ''}{name}: expected {type(default).__name__}, got {value!r}")
            continue
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict, base_dir: str | Path = ".", source: str = "config") -> TrainConfig:
    """Builds a :class:`TrainConfig` from parsed TOML, collecting every problem before raising."""
    problems: list[str] = []
    data = dict(data)
    sections = {name: _build(cls, data.pop(name, {}), name, problems) for name, cls in _SECTIONS.items()}
    stages_raw = data.pop("stages", [])
    stages = []
    if not isinstance(stages_raw, list):
        problems.append("stages: must be an array of tables ([[stages]])")
    else:
        stages = [_build(StageConfig, s, f"stages[{i}]", problems) for i, s in enumerate(stages_raw)]
    top = _build(TrainConfig, data, "", problems)
    config = dataclasses.replace(top, stages=stages, base_dir=str(base_dir), **sections)
    if not isinstance(config.trainable, list):
        problems.append("trainable: must be a list of module names")
        config.trainable = []
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path, num_processes: int = 1) -> TrainConfig:
    """Reads and checks a TOML training config; raises :class:`ConfigError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], str(path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML ({exc})"], str(path)) from None
    return config_from_dict(data, path.resolve().parent, str(path)).check(num_processes, str(path))


# ---------------------------------------------------------------------- TOML writing
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(data: dict) -> str:
    """Writes the subset of TOML training configs use: scalars, lists, tables and arrays of tables."""
    lines = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    for k, v in data.items():
        if _is_table_list(v):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def _is_table_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


# ---------------------------------------------------------------------- presets
def paper_stages(scale: float = 1.0) -> list[StageConfig]:
    """The paper's three stages (section 3.2, 4.1) with steps scaled by ``scale`` (paper: 200K, 50K, 50K)."""
    return [
        StageConfig("unpaired-512", "unpaired", 512, 8, max(1, int(200_000 * scale)), 2e-5, 2000),
        StageConfig("paired-512", "paired", 512, 8, max(1, int(50_000 * scale)), 2e-5, 2000),
        StageConfig("joint-1024", "both", 1024, 4, max(1, int(50_000 * scale)), 2e-5, 2000),
    ]


# Per-card presets, each sized by ``trainer.plan`` on the full-size models (``instantcharacter-studio train plan
# --preset NAME``; README's training section has the table). Parameter counts: the released image adapter has
# 2.79 B parameters (projector 1.36 B, character attention K/V 1.43 B); the text adapter at its default sizes 0.31 B.
# ``batch_sizes`` are global batches (micro batch x processes x accumulation).
_CACHED = {"cache_latents": True, "cache_text_embeddings": True, "cache_character_features": True}
TRAIN_PRESETS: dict[str, dict] = {
    "24gb": {"description": "one 24 GB card: LoRA rank 64 on the image adapter's character attention K/V "
                            "(0.05 B trained; the full 2.79 B adapter does not fit 24 GB), FLUX frozen in nf4 "
                            "(bitsandbytes, CUDA), latents, text embeddings and character features cached (no encoder on the "
                            "GPU), 8-bit AdamW, gradient checkpointing, micro batch 1",
             "trainable": ["image_adapter_lora"], "learning_rate": 1e-4,
             "models": {"base_quantization": "bnb-nf4"}, "lora": {"rank": 64, "targets": "attention"},
             "run": {"mixed_precision": "bf16", "gradient_checkpointing": True, "gradient_accumulation_steps": 4},
             "optimizer": {"use_8bit_adam": True}, "data": dict(_CACHED), "batch_sizes": (4, 4, 4)},
    "48gb": {"description": "one 48 GB card: the full image adapter (2.79 B: projector 1.36 B + attention K/V "
                            "1.43 B), FLUX frozen in int8 (quanto), encoders cached, 8-bit AdamW, "
                            "gradient checkpointing, micro batch 1",
             "trainable": ["image_adapter"], "models": {"base_quantization": "quanto-int8"},
             "run": {"mixed_precision": "bf16", "gradient_checkpointing": True, "gradient_accumulation_steps": 4},
             "optimizer": {"use_8bit_adam": True}, "data": dict(_CACHED), "batch_sizes": (4, 4, 4)},
    "80gb": {"description": "one 80 GB card: the image adapter and the text adapter (2.79 B + 0.31 B), FLUX frozen "
                            "in bf16, encoders cached, AdamW with float32 states, gradient checkpointing, micro "
                            "batch 1 (8 accumulation steps)",
             "trainable": ["image_adapter", "text_adapter"], "models": {},
             "run": {"mixed_precision": "bf16", "gradient_checkpointing": True, "gradient_accumulation_steps": 8},
             "optimizer": {"use_8bit_adam": False}, "data": dict(_CACHED), "batch_sizes": (8, 8, 8)},
    "multi-gpu": {"description": "8 GPUs of 80 GB (FSDP): the image adapter and the text adapter (3.10 B) with "
                                 "their float32 weights, gradients and AdamW states sharded over the GPUs, FLUX "
                                 "frozen in bf16 on each, encoders cached, gradient checkpointing, micro batch 2 "
                                 "at 512 and 1 at 1024; the same file runs on any number of GPUs that divides the "
                                 "batch",
                  "trainable": ["image_adapter", "text_adapter"], "models": {}, "processes": 8,
                  "run": {"mixed_precision": "bf16", "gradient_checkpointing": True,
                          "gradient_accumulation_steps": 1, "distributed": "fsdp"},
                  "optimizer": {"use_8bit_adam": False}, "data": dict(_CACHED), "batch_sizes": (16, 16, 8)},
}


def preset_config(name: str, output_dir: str = "runs/instantcharacter", unpaired: str | None = "data/unpaired",
                  paired: str | None = "data/paired.jsonl", steps_scale: float = 0.01) -> TrainConfig:
    """A starting config for a preset (``24gb``, ``48gb``, ``80gb``, ``multi-gpu``) with the paper's stages.

    ``steps_scale`` shrinks the paper's step counts (0.01: 2000/500/500), a fine-tune rather than pre-training.
    """
    if name not in TRAIN_PRESETS:
        raise ConfigError([f"unknown {name!r} (known: {', '.join(TRAIN_PRESETS)})"], "preset")
    preset = TRAIN_PRESETS[name]
    stages = paper_stages(steps_scale)
    for stage, batch in zip(stages, preset["batch_sizes"]):
        stage.batch_size = batch
        stage.learning_rate = preset.get("learning_rate", stage.learning_rate)
        stage.warmup_steps = min(stage.warmup_steps, max(1, stage.steps // 10))
    config = TrainConfig(
        output_dir=output_dir,
        stages=stages,
        trainable=list(preset["trainable"]),
        models=dataclasses.replace(ModelsConfig(), **preset["models"]),
        lora=dataclasses.replace(LoraConfig(), **preset.get("lora", {})),
        data=dataclasses.replace(DataConfig(unpaired=unpaired, paired=paired), **preset["data"]),
        run=dataclasses.replace(RunConfig(), **preset["run"]),
        optimizer=dataclasses.replace(OptimizerConfig(), **preset["optimizer"]),
    )
    return config

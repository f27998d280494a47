"""Memory plan of a training job: the GPU and RAM peak of each stage, before any weights load.

Every figure comes from the job's real component configs (the bundled full-size FLUX.1-dev, SigLIP, DINOv2
configs for ``models.source = "default"``, a local folder's ``config.json`` otherwise, the adapter's tensor
layout) and from one forward pass of the training model built on the ``meta`` device:

* **frozen weights**: FLUX's transformer as loaded (``models.base_quantization``: bf16, quanto int8 / fp8,
  bitsandbytes nf4 / int8, by :func:`core.loading.memory.weight_bytes`), the adapters that condition but do not
  train, and each encoder that stays on the GPU: the VAE unless ``data.cache_latents``, CLIP + T5 unless
  ``data.cache_text_embeddings``, SigLIP + DINOv2 unless ``data.cache_character_features`` (cached encoders
  are run once over the dataset before training and then moved off the GPU, see ``trainer.loop``);
* **trainable weights**: float32 master weights (4 bytes per parameter);
* **gradients**: float32 (4 bytes per parameter);
* **optimizer state**: AdamW 8 bytes per parameter; bitsandbytes' AdamW8bit 2 bytes plus a float32 scale per
  2048 (CUDA only: on the CPU the trainer falls back to AdamW, which the CPU plan counts);
* **autocast copies**: with bf16 / fp16 mixed precision, autocast keeps a 2-byte copy of each trainable weight
  for the forward pass and its backward;
* **activations**: the bytes autograd saves for backward, counted with ``torch.autograd.graph.saved_tensors_hooks``
  while the training model runs forward on ``meta`` tensors at the stage's resolution and micro batch. With
  gradient checkpointing, each transformer block keeps only its inputs, and backward recomputes one block at
  a time (its saved bytes on top).

Under FSDP (``run.distributed = "fsdp"``) the trainable weights, gradients and optimizer state are divided by
the number of processes; each process holds the frozen model whole, plus the float32 weights FSDP gathers
while they compute: the root group (the character attention K/V, gathered for the whole step) and the larger of
the projector and the text adapter (see ``trainer.sharding``).

Peak = frozen + trainable + optimizer + max(activations + autocast copies, gradients) + a working set: the larger
of the largest block's saved bytes (backward recomputes or walks one block at a time) and the forward pass's
temporaries (the largest excess of live over saved bytes, counted by ``trainer.memtrack`` on the meta tensors). A card fits a stage when the peak plus the CUDA context (0.75 GiB) stays
under 95 % of the card (fragmentation). The RAM peak is the loader's: the whole pipeline is read into RAM in
the load dtype before it moves to the GPU, plus a 3 GiB baseline (Python, torch, CUDA libraries).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.loading.quantization import quantization_backend

GiB = 2**30
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
USABLE_SHARE = 0.95
RAM_BASELINE_BYTES = 3 * GiB
BNB_8BIT_BLOCK = 2048  # bitsandbytes' blockwise 8-bit optimizer: one float32 absmax per block, per state
# GPU cards by memory: (label, GiB as the driver reports it)
CARDS = (("24 GB (RTX 3090 / 4090)", 24), ("32 GB (RTX 5090)", 32), ("48 GB (L40S / RTX 6000 Ada)", 48),
         ("80 GB (A100 / H100)", 80), ("141 GB (H200)", 141))


class PlanRefused(UserError, ValueError):
    """The job does not fit the card: the message gives the figures."""


@dataclass
class StagePlan:
    """Bytes per process at the peak of one stage (see the module docstring for the model)."""

    name: str
    resolution: int
    micro_batch: int
    frozen_bytes: int
    trainable_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    autocast_bytes: int
    activation_bytes: int  # as planned (with or without checkpointing, per the config)
    activation_bytes_no_checkpointing: int
    activation_bytes_checkpointing: int
    working_bytes: int
    ram_peak_bytes: int
    gathered_bytes: int = 0  # FSDP: the float32 weights gathered whole while a group computes
    details: dict = field(default_factory=dict)

    @property
    def gpu_peak_bytes(self) -> int:
        return (self.frozen_bytes + self.trainable_bytes + self.optimizer_bytes + self.gathered_bytes
                + max(self.activation_bytes + self.autocast_bytes, self.gradient_bytes) + self.working_bytes)

    @property
    def gpu_peak_gib(self) -> float:
        return self.gpu_peak_bytes / GiB

    def fits(self, card_gib: float) -> bool:
        return fits(self.gpu_peak_bytes, card_gib)


def fits(peak_bytes: int, card_gib: float) -> bool:
    return peak_bytes + CUDA_CONTEXT_BYTES <= card_gib * GiB * USABLE_SHARE


SMALL_JOB_GIB = 8  # a job that fits a card this small is not labelled with the 24 GB cards of the presets


def smallest_card(peak_bytes: int) -> str:
    """The smallest card of ``CARDS`` that fits ``peak_bytes``; for a small job, the memory it needs instead."""
    if fits(peak_bytes, SMALL_JOB_GIB):
        needed = (peak_bytes + CUDA_CONTEXT_BYTES) / USABLE_SHARE / GiB
        return f"any GPU with {max(needed, 0.1):.1f} GiB"
    for label, gib in CARDS:
        if fits(peak_bytes, gib):
            return label
    return "none of the single cards (shard it over more GPUs: run.distributed = \"fsdp\")"


@dataclass
class TrainingPlan:
    """A plan per stage, with the parameter counts it used."""

    stages: list[StagePlan]
    processes: int
    params: dict[str, int]  # trainable part -> parameters; "frozen:<name>" for frozen components
    notes: list[str]

    @property
    def gpu_peak_bytes(self) -> int:
        return max(s.gpu_peak_bytes for s in self.stages)

    def table(self) -> str:
        lines = []
        trained = ", ".join(f"{k} {v / 1e9:.2f} B" for k, v in self.params.items() if not k.startswith("frozen:"))
        lines.append(f"trainable: {trained}; per process of {self.processes}")
        head = (f"{'stage':<16} {'res':>5} {'mb':>3}  {'frozen':>7} {'train':>6} {'grads':>6} {'optim':>6} "
                f"{'acts':>6} {'(ckpt/none)':>13}   GPU peak         RAM peak   fits")
        lines.append(head)
        for s in self.stages:
            acts = f"{s.activation_bytes_checkpointing / GiB:.1f}/{s.activation_bytes_no_checkpointing / GiB:.1f}"
            lines.append(
                f"{s.name[:16]:<16} {s.resolution:>5} {s.micro_batch:>3}  {s.frozen_bytes / GiB:>7.2f} "
                f"{s.trainable_bytes / GiB:>6.2f} {s.gradient_bytes / GiB:>6.2f} {s.optimizer_bytes / GiB:>6.2f} "
                f"{s.activation_bytes / GiB:>6.2f} {acts:>13}   GPU peak {s.gpu_peak_gib:5.1f} GiB"
                f"   RAM peak {s.ram_peak_bytes / GiB:5.1f} GiB   {smallest_card(s.gpu_peak_bytes)}")
        lines.append("GiB = 2**30 bytes; columns in GiB per process; acts (ckpt/none): activations with / without "
                     "gradient checkpointing; mb: micro batch per process")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------- the model on meta
def _config_json(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _sources(config):
    from core.loading.sources import ModelSources, is_local

    m = config.models
    source = m.source
    if source not in ("default", "tiny") and not Path(source).is_absolute():
        source = str(config.resolve(source))
    sources = ModelSources.parse(source).override(base=m.base, siglip=m.siglip, dinov2=m.dinov2, adapter=m.adapter)
    return sources, is_local


def _adapter_layout(adapter: str | None, local: bool) -> tuple[dict, dict]:
    """({key: shape} of image_proj, of ip_adapter) from a local adapter file, else the released layout."""
    from core.loading.model_sizes import ADAPTER_LAYOUT

    if adapter and local and Path(adapter).is_file() and Path(adapter).suffix == ".safetensors":
        from safetensors import safe_open

        proj, ip = {}, {}
        with safe_open(str(adapter), "pt") as f:
            for key in f.keys():
                group, _, rest = key.partition(".")
                (proj if group == "image_proj" else ip)[rest] = list(f.get_slice(key).get_shape())
        return proj, ip
    layout = json.loads(ADAPTER_LAYOUT.read_text())
    ip = {f"{i}.{k}": v for i in range(layout["num_processors"]) for k, v in layout["processor"].items()}
    return dict(layout["image_proj"]), ip


@dataclass
class ModelDescription:
    """Configs of every component a training job loads (no weights)."""

    transformer: dict
    siglip: dict
    dinov2: dict
    flux_dir: str | None
    siglip_dir: str | None
    dinov2_dir: str | None
    projector_shapes: dict
    processor_shapes: dict

    @classmethod
    def for_config(cls, config) -> "ModelDescription":
        from core.loading.model_sizes import _read_config

        sources, is_local = _sources(config)
        flux = sources.base if is_local(sources.base) else None
        sig = sources.siglip if is_local(sources.siglip) else None
        dino = sources.dinov2 if is_local(sources.dinov2) else None
        proj, ip = _adapter_layout(sources.adapter, is_local(sources.adapter or ""))
        return cls(_read_config("transformer", flux), _read_config("siglip", sig), _read_config("dinov2", dino),
                   flux, sig, dino, proj, ip)


def build_meta_model(desc: ModelDescription, config, dtype):
    """The training model of ``config`` on the meta device (FLUX transformer, adapter, text adapter)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from core.loading.checkpoint import infer_config
    from core.models.attention import CharacterAttentionLayers
    from core.models.projector import CharacterProjector
    from core.models.text_adapter import TextAdapter, TextAdapterConfig

    from .objective import AdapterTrainingModel
    from .trainable import ImageAdapterPart, LoraImageAdapterPart, TextAdapterPart

    meta = {k: torch.empty(v, device="meta") for k, v in desc.projector_shapes.items()}
    meta_ip = {k: torch.empty(v, device="meta") for k, v in desc.processor_shapes.items()}
    ac = infer_config(meta, meta_ip)
    cfg = {k: v for k, v in desc.transformer.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(cfg)
        image = ImageAdapterPart(CharacterProjector(ac.projector),
                                 CharacterAttentionLayers(ac.num_attention_layers, ac.attention_width, ac.token_dim,
                                                          ac.head_dim))
        name = "image_adapter"
        if "image_adapter_lora" in config.trainable:
            name = "image_adapter_lora"
            image = LoraImageAdapterPart(image.image_proj, image.ip_adapter, config.lora.rank,
                                         config.lora.alpha or None, targets=config.lora.targets)
        parts = {name: image}
        if "text_adapter" in config.trainable:
            t = config.text_adapter
            tac = TextAdapterConfig(siglip_dim=desc.siglip["hidden_size"],
                                    attention_width=cfg["num_attention_heads"] * cfg["attention_head_dim"],
                                    head_dim=cfg["attention_head_dim"], num_layers=cfg["num_layers"], dim=t.dim,
                                    depth=t.depth, num_queries=t.num_queries, token_dim=t.token_dim)
            parts["text_adapter"] = TextAdapterPart(TextAdapter(tac))
    image.ip_adapter.install(transformer)
    if "text_adapter" in parts:
        parts["text_adapter"].text_adapter.install(transformer)
    trained = {k: v for k, v in parts.items() if k in config.trainable}
    frozen = {k: v.requires_grad_(False) for k, v in parts.items() if k not in config.trainable}
    model = AdapterTrainingModel(trained, transformer, config.objective, frozen)
    transformer.requires_grad_(False)
    for part in trained.values():
        part.requires_grad_(True)
        if hasattr(part, "prepare_for_training"):
            part.prepare_for_training(dtype)
    model.to(dtype)
    # torch's own cast: diffusers' ModelMixin.to warns about float32 modules even when the list is empty ([])
    torch.nn.Module.to(transformer, dtype)
    for part in frozen.values():
        part.to(dtype)
    return model, transformer


def _storage_key(t):
    return t.untyped_storage()._cdata


def _tensor_bytes(values) -> dict:
    import torch

    out = {}
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            out[_storage_key(v)] = v.untyped_storage().nbytes()
        elif isinstance(v, (list, tuple)):
            stack += list(v)
        elif isinstance(v, dict):
            stack += list(v.values())
    return out


class _FusedAttention:
    """Stands in for ``F.scaled_dot_product_attention`` on meta tensors with what a fused kernel (flash or
    memory-efficient attention, as on CUDA and the CPU) saves for backward: q, k, v, the output and a float32
    log-sum-exp per query. The meta kernel would save the full attention matrix, which no real run keeps."""

    def __init__(self):
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                out = q.new_empty(q.shape[:-1] + v.shape[-1:])
                ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
                return out

            @staticmethod
            def backward(ctx, grad):
                q, k, v, _, _ = ctx.saved_tensors
                return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        self.fn = Fn

    def __enter__(self):
        import torch.nn.functional as F

        self.original = F.scaled_dot_product_attention
        original, fn = self.original, self.fn

        def sdpa(query, key, value, *args, **kwargs):
            if query.device.type != "meta":
                return original(query, key, value, *args, **kwargs)
            return fn.apply(query, key, value)

        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self.original


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


def measure_activations(model, transformer, inputs) -> dict:
    """Saved-for-backward bytes of one forward pass of ``model`` on ``inputs`` (meta or real tensors).

    Returns ``total`` (no checkpointing), ``blocks`` (per transformer block, saved bytes inside it),
    ``block_inputs`` (distinct bytes of the blocks' input tensors, what checkpointing keeps) and
    ``checkpointing`` (total - inside blocks + block inputs + the largest block, recomputed in backward).
    """
    import torch
    from torch.autograd.graph import saved_tensors_hooks

    params = {_storage_key(p) for p in list(model.parameters()) + list(transformer.parameters())}
    params |= {_storage_key(b) for b in transformer.buffers()}
    seen: dict = {}

    def pack(t):
        key = _storage_key(t)
        if key not in params and key not in seen:
            seen[key] = t.untyped_storage().nbytes()
        return t

    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    marks, inside, block_inputs = {}, [], {}

    def pre(module, args, kwargs):
        marks[id(module)] = sum(seen.values())
        block_inputs.update(_tensor_bytes(list(args) + list(kwargs.values())))

    def post(module, args, kwargs, output):
        inside.append(sum(seen.values()) - marks[id(module)])

    from .memtrack import LiveTensorBytes

    class Transients(LiveTensorBytes):
        """The largest excess of live bytes over the saved ones during the forward pass (temporaries)."""

        excess = 0
        static = 0  # weights and inputs (their views are not new memory)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            floor = sum(seen.values()) + self.static
            if self._total - floor > self.excess:  # an upper bound; prune to the exact figure only then
                self.excess = max(self.excess, self.live - floor)
            return out

    handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in blocks]
    handles += [b.register_forward_hook(post, with_kwargs=True) for b in blocks]
    try:
        with _FusedAttention(), saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), \
                Transients(meta=True) as transients:
            transients.track(list(model.parameters()) + list(transformer.parameters()) + list(transformer.buffers())
                             + [t for t in _tensors(inputs)])
            transients.static = transients.live
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    total = sum(seen.values())
    inputs_bytes = sum(v for k, v in block_inputs.items() if k not in params)
    ckpt = total - sum(inside) + inputs_bytes + max(inside, default=0)
    return {"total": total, "blocks": inside, "block_inputs": inputs_bytes, "checkpointing": ckpt,
            "largest_block": max(inside, default=0), "transient": transients.excess}


def meta_inputs(desc: ModelDescription, config, batch: int, resolution: int, dtype):
    """Training inputs of one micro-batch on meta: packed latents, T5 and CLIP embeddings, one character."""
    import torch

    from core.models.encoders import LOW_RES

    from .batch import CharacterSlot, TrainingInputs

    tokens = (LOW_RES // desc.siglip["patch_size"]) ** 2
    channels = desc.siglip["hidden_size"] + desc.dinov2["hidden_size"]
    n = (resolution // 16) ** 2  # VAE 8x, then 2x2 packing
    length = config.data.max_sequence_length
    t = desc.transformer
    latent_c = t["in_channels"]

    def e(*shape, dt=dtype):
        return torch.empty(*shape, device="meta", dtype=dt)

    text_mask = e(batch, length) if "text_adapter" in config.trainable else None
    slot = CharacterSlot(e(batch, tokens, channels), e(batch, 3 * tokens, channels), e(batch, 4 * tokens, channels),
                         None, text_mask)
    f32 = torch.float32
    return TrainingInputs(e(batch, n, latent_c, dt=f32), e(batch, n, latent_c, dt=f32), e(batch, dt=f32),
                          e(n, 3), e(batch, length, t["joint_attention_dim"]), e(batch, t["pooled_projection_dim"]),
                          e(length, 3), [slot], [""] * batch, [{}] * batch)


# ---------------------------------------------------------------------- bytes
def _component_sizes(desc: ModelDescription):
    from core.loading.model_sizes import model_size, size_of_layout

    sizes = {name: model_size(name, desc.flux_dir) for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    sizes["siglip"] = model_size("siglip", desc.siglip_dir)
    sizes["dinov2"] = model_size("dinov2", desc.dinov2_dir)
    sizes["projector"] = size_of_layout("projector", desc.projector_shapes)
    sizes["adapter_processors"] = size_of_layout("adapter_processors", desc.processor_shapes)
    return sizes


def optimizer_bytes_per_param(config, cuda: bool = True) -> float:
    if config.optimizer.use_8bit_adam and cuda:
        return 2 + 2 * 4 / BNB_8BIT_BLOCK
    return 8.0


def plan_training(config, num_processes: int = 1, cuda: bool = True) -> TrainingPlan:
    """The memory plan of ``config`` on ``num_processes`` processes (see the module docstring).

    ``cuda``: plan for a CUDA card (bitsandbytes' 8-bit optimizer and quantizers available); False plans what the
    trainer does on the CPU (AdamW, no bitsandbytes).
    """
    import torch

    from core.loading.memory import weight_bytes

    desc = ModelDescription.for_config(config)
    sizes = _component_sizes(desc)
    mp = config.run.mixed_precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)
    dname = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    if not cuda:  # the CPU trainer runs "no" mixed precision for fp16 and keeps bf16 as given
        pass
    model, transformer = build_meta_model(desc, config, dtype)
    trained = {name: sum(p.numel() for p in part.parameters() if p.requires_grad)
               for name, part in model.parts.items()}
    trainable_params = sum(trained.values())
    linear_params = sum(m.weight.numel() for m in model.parts.modules()
                        if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)
    held = sum(p.numel() for p in model.parts.parameters() if not p.requires_grad)  # LoRA's frozen adapter
    held += sum(p.numel() for part in model.frozen_parts.values() for p in part.parameters())
    shards = num_processes if getattr(config.run, "distributed", "ddp") == "fsdp" else 1
    quant = getattr(config.models, "base_quantization", "") or None
    notes = []
    if quant and quantization_backend(quant).needs_cuda and not cuda:
        notes.append(f"{quant} needs CUDA: the CPU plan counts the transformer in {dname}")
        quant = None
    frozen = {"transformer": weight_bytes(sizes["transformer"], quant, dname)}
    if held:  # adapters that condition without training, in the weight dtype
        frozen["adapters"] = held * (2 if dtype != torch.float32 else 4)
    d = config.data
    resident = {"vae": not d.cache_latents, "text_encoder": not d.cache_text_embeddings,
                "text_encoder_2": not d.cache_text_embeddings, "siglip": not d.cache_character_features,
                "dinov2": not d.cache_character_features}
    for name, on in resident.items():
        if on:
            frozen[name] = weight_bytes(sizes[name], None, dname)
    frozen_total = sum(frozen.values())
    if config.optimizer.use_8bit_adam and not cuda:
        notes.append("use_8bit_adam needs CUDA: on the CPU the trainer uses torch AdamW (8 bytes per parameter)")
    opt = int(math.ceil(trainable_params * optimizer_bytes_per_param(config, cuda) / shards))
    master = trainable_params * 4 // shards
    grads = trainable_params * 4 // shards
    autocast = linear_params * 2 if dtype != torch.float32 else 0
    gathered = 0
    if shards > 1:  # trainer.sharding's groups: projector and text adapter on their own, the rest in the root
        groups = [sum(p.numel() for p in getattr(part, n).parameters() if p.requires_grad)
                  for part in model.parts.values() for n in ("image_proj", "text_adapter") if hasattr(part, n)]
        gathered = ((trainable_params - sum(groups)) + max(groups, default=0)) * 4
    load_dtype_bytes = 2 if dtype != torch.float32 else 4
    ram = RAM_BASELINE_BYTES + sum(s.params for s in sizes.values()) * load_dtype_bytes
    stages = []
    for stage in config.stages:
        micro = max(1, config.micro_batch(stage, num_processes))
        acts = measure_activations(model, transformer, meta_inputs(desc, config, micro, stage.resolution, dtype))
        planned = acts["checkpointing"] if config.run.gradient_checkpointing else acts["total"]
        stages.append(StagePlan(stage.name, stage.resolution, micro, frozen_total, master, grads, opt, autocast,
                                planned, acts["total"], acts["checkpointing"],
                                max(acts["largest_block"], acts["transient"]), ram,
                                gathered, {"frozen": frozen, "block_inputs": acts["block_inputs"]}))
    params = dict(trained)
    params.update({f"frozen:{k}": s.params for k, s in sizes.items()})
    return TrainingPlan(stages, num_processes, params, notes)


def detected_card_gib() -> float | None:
    """Total memory of CUDA device 0 in GiB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB


def check_fits(config, num_processes: int = 1, vram_gib: float | None = None) -> TrainingPlan | None:
    """Refuses (:class:`PlanRefused`, with the figures) a job whose plan exceeds the card, before any loading.

    The card is ``vram_gib`` when given, else the detected CUDA device; without either nothing is checked.
    """
    card = vram_gib if vram_gib is not None else detected_card_gib()
    if card is None:
        return None
    plan = plan_training(config, num_processes, cuda=True)
    over = [s for s in plan.stages if not s.fits(card)]
    if over:
        usable = card * USABLE_SHARE - CUDA_CONTEXT_BYTES / GiB
        worst = ", ".join(f"{s.name} GPU peak {s.gpu_peak_gib:.1f} GiB (frozen {s.frozen_bytes / GiB:.1f}, "
                          f"trainable+optimizer {(s.trainable_bytes + s.optimizer_bytes) / GiB:.1f}, activations "
                          f"{s.activation_bytes / GiB:.1f})" for s in over)
        raise PlanRefused(f"training refused: the plan does not fit a {card:.0f} GiB card ({usable:.1f} GiB usable): "
                          f"{worst}; see `instantcharacter-studio train plan CONFIG`, choose a smaller preset, or "
                          f"pass --vram to plan for another card")
    return plan

"""Memory presets and the planner that estimates a preset's peak GPU memory and system RAM.

Units: every ``*_bytes`` value is bytes. Tables print GiB (2**30 bytes). The published FLUX.1-dev figures this
planner is checked against (diffusers' quantization-backends benchmark, H100, 1024x1024) are labelled "GB" but are
GiB: their bf16 "memory after loading", 31.447, is exactly the bf16 weights of the four FLUX components counted
here (33.74e9 bytes = 31.42 GiB), i.e. ``torch.cuda.max_memory_allocated() / 2**30``. GPU makers' "GB" is GiB in
practice too (a "24 GB" RTX 4090 reports 24564 MiB), so ``--vram 24`` means 24 GiB.

The estimate is a peak of ``torch.cuda.max_memory_allocated`` (the allocator's view): weights resident at the
peak plus the live activations of the phase that peaks. The CUDA context and allocator fragmentation are not in
it; ``choose_preset`` keeps a reserve for them.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping

from core.loading.model_sizes import ComponentSize, all_sizes
from core.loading.quantization import backends, quantization_backend
from core.loading.torch_build import torch_may_see_a_gpu
from core.errors import UserError

GiB = 2**30

# The quantization backends (core.loading.quantization): quantizers hold tensor subclasses group offload cannot move;
# fp8 layerwise casting holds plain tensors, so group offloading can move them.
QUANTIZERS = tuple(b.name for b in backends() if not b.group_offloadable)
# the adapter is quantized after loading
ADAPTER_QUANTIZATIONS = tuple(b.name for b in backends() if not b.at_load)
# "group": diffusers group offloading from RAM; "disk": the same with ``offload_to_disk_path`` (weights on disk,
# read group by group: almost nothing held in RAM).
OFFLOAD_MODES = ("none", "model", "group", "disk")

TEXT_TOKENS = 512  # FluxPipeline's max_sequence_length: T5 tokens joined to the image tokens
# Live activations at the peak of one transformer call, in hidden-size-wide (inner_dim) tensors per token.
# Calibrated on the published bf16 + model-offload run (peak 23.271 GiB = 22.168 GiB transformer weights +
# 1.10 GiB at 4096 + 512 tokens of width 3072): a single-stream block holds the residual, norm, q/k/v, the 4x
# MLP before and after GELU, their 5x concatenation and the output at once.
DIT_LIVE_WIDTHS = 42
# The adapter's extra per-layer attention (its K/V over the character tokens and the added output): an
# assumption, there is no published measurement to calibrate it on.
ADAPTER_LIVE_WIDTHS = 4
# VAE decode: live tensors of the decoder's widest full-resolution activation (block_out_channels[1] channels at
# H x W in the compute dtype: the last upsampler's float32 round trip, GroupNorm, conv in/out, cuDNN workspace).
# Calibrated on the published bf16 run: its peak 36.166 GiB is 31.424 GiB of weights plus 4.74 GiB of decode.
VAE_LIVE_TENSORS = 9.5
VAE_TILE_PX = 512  # tile size apply_preset sets; FLUX's VAE would otherwise only tile above 1024 px
# Image encoders see the character at low resolution plus high-resolution crops; 5 images per encoder.
IMAGE_CROPS = 5
ENCODER_LIVE_WIDTHS = 6  # live intermediate-wide tensors per token in a ViT/T5 layer
RAM_BASELINE_BYTES = int(2.5 * GiB)  # Python, torch, CUDA libraries, the UI
# diffusers and transformers memory-map safetensors files: a file's pages count in RSS while its tensors are read
# (moved, cast or copied), but they are clean file pages the kernel drops under pressure, so they are in the RSS
# figure ("RAM peak") and not in what must fit ("RAM needed"). FLUX.1-dev's folder is sharded at 10 GB.
SHARD_BYTES = 10 * 10**9
# Kept for the CUDA context (not in the allocator's statistics) plus a share for fragmentation.
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
FRAGMENTATION_SHARE = 0.05


@dataclass(frozen=True)
class MemoryPreset:
    """How the pipeline is held in memory: quantization per component, offloading and VAE tiling.

    Attributes:
        name: ``full``, ``balanced``, ``low`` or ``minimal``.
        description: one line for the UI and ``plan``.
        transformer_quantization: one of ``core.loading.quantization.QUANTIZATIONS`` or None (compute dtype) for the FLUX transformer.
        text_encoder_quantization: the same for T5 (``text_encoder_2``); CLIP and the VAE stay unquantized.
        adapter_quantization: ``quanto-int8`` or None for the projector and the processors' K/V projections.
        offload: ``none`` (all on the GPU), ``model`` (accelerate moves one whole model at a time) or ``group``
            (diffusers group offloading moves blocks/leaves, prefetching on a CUDA stream where there is one).
        vae_tiling: decode in ``VAE_TILE_PX`` tiles.
        dtype: compute dtype name.
        disk_cache: keep prompt embeddings and character features on disk too (``load_pipeline``), so T5 and
            the image encoders run once per prompt and per character across restarts; under ``group``
            offloading the encoders themselves then stream from disk (``ENCODERS``), leaving RAM.
    """

    name: str
    description: str
    transformer_quantization: str | None = None
    text_encoder_quantization: str | None = None
    adapter_quantization: str | None = None
    offload: str = "none"
    vae_tiling: bool = False
    dtype: str = "bfloat16"
    disk_cache: bool = False

    def __post_init__(self) -> None:
        for q in (self.transformer_quantization, self.text_encoder_quantization, self.adapter_quantization):
            if q is not None:
                quantization_backend(q)  # raises, naming the choices
        if self.adapter_quantization not in (None,) + ADAPTER_QUANTIZATIONS:
            raise ValueError(f"adapter_quantization {self.adapter_quantization!r}: the adapter is quantized "
                             f"after loading, so only {', '.join(ADAPTER_QUANTIZATIONS)} or None")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload {self.offload!r} unknown; expected one of {OFFLOAD_MODES}")
        if self.offload in ("group", "disk") and any(q in QUANTIZERS for q in (
                self.transformer_quantization, self.text_encoder_quantization, self.adapter_quantization)):
            # quanto: diffusers issue #12610; bitsandbytes nf4: an illegal memory access on an H200 (our bench)
            raise ValueError("group offloading cannot move quantized weights (quanto or bitsandbytes): "
                             "use offload='group' with the compute dtype")

    @property
    def needs_bitsandbytes(self) -> bool:
        """True when the transformer or T5 is quantized with bitsandbytes (CUDA only)."""
        return any(q is not None and quantization_backend(q).library == "bitsandbytes"
                   for q in (self.transformer_quantization, self.text_encoder_quantization))

    def with_quantization(self, quantization: str | None) -> "MemoryPreset":
        """The same preset with the transformer and T5 quantized by ``quantization`` (e.g. the quanto alternative).

        A group-offloaded preset cannot hold quanto tensors (diffusers' group offloading moves ``param.data`` and
        leaves quanto's inner tensors behind, diffusers issue #12610), so its quanto alternative stays in the
        compute dtype, adapter included: more RAM, the same small GPU peak.
        """
        if not (self.transformer_quantization in QUANTIZERS or self.text_encoder_quantization in QUANTIZERS):
            return self  # bf16 or fp8 layerwise casting: no quantizer to swap
        return replace(self, transformer_quantization=quantization, text_encoder_quantization=quantization)


MEMORY_PRESETS: dict[str, MemoryPreset] = {
    p.name: p
    for p in (
        MemoryPreset("full", "bf16, everything on the GPU: fastest (48 GB+ cards)"),
        MemoryPreset("balanced", "bf16, one model on the GPU at a time (model CPU offload), VAE tiling",
                     offload="model", vae_tiling=True),
        MemoryPreset("fp8", "transformer, T5 and adapter stored in fp8 (layerwise casting, bf16 compute), "
                            "model CPU offload, VAE tiling: 24 GB cards",
                     transformer_quantization="fp8-layerwise", text_encoder_quantization="fp8-layerwise",
                     adapter_quantization="fp8-layerwise", offload="model", vae_tiling=True),
        # bf16: group offloading cannot move quantizers' weights (quanto: diffusers issue #12610; bitsandbytes nf4
        # crashed with an illegal memory access on an H200 in our bench). Blocks stream, so the GPU holds little.
        MemoryPreset("minimal", "bf16 with group offloading (streamed block by block from RAM), VAE tiling",
                     offload="group", vae_tiling=True),
        MemoryPreset("fp8-streamed", "fp8 storage (layerwise casting) streamed block by block from RAM; text and "
                                     "image encoders streamed from disk, their results kept on disk; VAE tiling: "
                                     "12-16 GB cards with 32 GB RAM",
                     transformer_quantization="fp8-layerwise", text_encoder_quantization="fp8-layerwise",
                     adapter_quantization="fp8-layerwise", offload="group", vae_tiling=True, disk_cache=True),
        MemoryPreset("low", "transformer and T5 in nf4 (bitsandbytes), adapter int8 (quanto), model CPU offload",
                     transformer_quantization="bnb-nf4", text_encoder_quantization="bnb-nf4",
                     adapter_quantization="quanto-int8", offload="model"),
        MemoryPreset("streamed", "bf16 streamed block by block from disk (group offloading to the user cache), "
                                 "embeddings kept on disk, VAE tiling: 8-12 GB cards, 16 GB RAM",
                     offload="disk", vae_tiling=True, disk_cache=True),
    )
}
# Best quality first, then fastest: auto takes the first one that fits both budgets, and out-of-memory advice
# walks down this list (bf16 before fp8 before nf4; on the GPU before streamed from RAM before streamed from disk).
PRESET_ORDER = ("full", "balanced", "fp8", "minimal", "fp8-streamed", "low", "streamed")
QUANTO_ALTERNATIVE = "quanto-int8"


def get_preset(name: str, quantization: str | None = None) -> MemoryPreset:
    """The preset called ``name``; ``quantization`` replaces its transformer/T5 quantization (e.g. ``quanto-int8``)."""
    if name not in MEMORY_PRESETS:
        raise ValueError(f"preset {name!r} unknown; expected one of {PRESET_ORDER} or 'auto'")
    preset = MEMORY_PRESETS[name]
    return preset.with_quantization(quantization) if quantization else preset


# ----------------------------------------------------------------------------------------------------------- bytes
# The compute dtypes, without importing torch (seconds) for ``plan``; any other name is asked of torch.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _dtype_bytes(dtype: str) -> int:
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    import torch

    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def weight_bytes(size: ComponentSize, quantization: str | None, dtype: str = "bfloat16",
                 kept_dtype: str | None = None) -> int:
    """Bytes of one component's weights held in ``quantization`` (None: all in ``dtype``).

    Quantizers convert ``nn.Linear`` weights only; biases, norms, embeddings, convolutions and the modules a
    model class keeps (T5's ``wo``) stay in ``dtype``. Per converted weight: nf4 0.5 byte + a float32 absmax per
    64 (0.5625 byte); LLM.int8 1 byte + a float32 statistic per row; quanto int8/fp8 1 byte + a ``dtype`` scale
    per row. ``kept_dtype`` (default ``dtype``) is the dtype of the kept modules: transformers 5 keeps them in
    the compute dtype; the 4.x bitsandbytes loaders (the published benchmark) upcast them to float32.
    """
    b = _dtype_bytes(dtype)
    if quantization is None:
        return size.params * b
    backend = quantization_backend(quantization)
    return backend.weight_bytes(size, b, _dtype_bytes(kept_dtype) if kept_dtype else b)


def _quantization_of(preset: MemoryPreset, component: str) -> str | None:
    if component == "transformer":
        return preset.transformer_quantization
    if component == "text_encoder_2":
        return preset.text_encoder_quantization
    if component in ("projector", "adapter_processors"):
        return preset.adapter_quantization
    if component == "controlnet":  # stored as the transformer; loaded unquantized, so quanto for bitsandbytes
        quant = preset.transformer_quantization
        return QUANTO_ALTERNATIVE if quant is not None and quantization_backend(quant).at_load else quant
    return None


# ----------------------------------------------------------------------------------------------------- activations
def _encoder_activation_bytes(cfg: Mapping, tokens: int, images: int, b: int) -> int:
    hidden = cfg.get("hidden_size") or cfg["d_model"]
    inner = cfg.get("intermediate_size") or cfg.get("d_ff") or hidden * cfg.get("mlp_ratio", 4)
    heads = cfg.get("num_attention_heads") or cfg["num_heads"]
    widths = ENCODER_LIVE_WIDTHS * inner + 4 * hidden
    scores = heads * tokens * 4  # one float32 attention row per token per head (eager softmax)
    return images * tokens * (widths * b + scores)


def phase_activation_bytes(sizes: Mapping[str, ComponentSize], width: int, height: int, vae_tiling: bool,
                           dtype: str = "bfloat16") -> dict[str, int]:
    """Live activation bytes at the peak of each phase for one ``width`` x ``height`` image (batch 1).

    Phases: ``text_encoder`` (CLIP, 77 tokens), ``text_encoder_2`` (T5, 512 tokens), ``siglip`` / ``dinov2`` (the
    character image and its crops), ``denoise`` (one transformer call on (H/16)(W/16) + 512 tokens; with the
    adapter, its attention and the projector) and ``vae`` (decode, tiled in ``VAE_TILE_PX`` tiles when asked).
    """
    b = _dtype_bytes(dtype)
    out: dict[str, int] = {}
    out["text_encoder"] = _encoder_activation_bytes(sizes["text_encoder"].config, 77, 1, b)
    out["text_encoder_2"] = _encoder_activation_bytes(sizes["text_encoder_2"].config, TEXT_TOKENS, 1, b)
    for name in ("siglip", "dinov2"):
        if name in sizes:
            cfg = sizes[name].config
            tokens = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
            out[name] = _encoder_activation_bytes(cfg, tokens, IMAGE_CROPS, b)
    tcfg = sizes["transformer"].config
    inner = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    tokens = (height // 16) * (width // 16) + TEXT_TOKENS
    widths = DIT_LIVE_WIDTHS + (ADAPTER_LIVE_WIDTHS if "adapter_processors" in sizes else 0)
    denoise = tokens * inner * widths * b
    if "projector" in sizes and "dinov2" in sizes:
        # The projector's widest activation: its feed-forward over the encoders' tokens (all crops).
        ff = max(s[0] for k, s in _projector_linear_shapes().items())
        enc_tokens = IMAGE_CROPS * sum((sizes[n].config["image_size"] // sizes[n].config["patch_size"]) ** 2 + 1
                                       for n in ("siglip", "dinov2"))
        denoise = max(denoise, 3 * enc_tokens * ff * b)
    if "controlnet" in sizes:
        # its residuals (one image-token-wide tensor per block) live through the transformer's call
        ccfg = sizes["controlnet"].config
        blocks = ccfg.get("num_layers", 0) + ccfg.get("num_single_layers", 0)
        denoise += blocks * (height // 16) * (width // 16) * inner * b
    out["denoise"] = denoise
    vcfg = sizes["vae"].config
    full_res_channels = vcfg["block_out_channels"][min(1, len(vcfg["block_out_channels"]) - 1)]
    tile_h, tile_w = (min(height, VAE_TILE_PX), min(width, VAE_TILE_PX)) if vae_tiling else (height, width)
    vae = VAE_LIVE_TENSORS * tile_h * tile_w * full_res_channels * b
    if vae_tiling and (tile_h, tile_w) != (height, width):
        vae += 2 * 3 * height * width * 4  # decoded tiles and the blended float32 image
    out["vae"] = int(vae)
    return out


def _projector_linear_shapes() -> dict[str, list[int]]:
    import json

    from core.loading.model_sizes import ADAPTER_LAYOUT

    layout = json.loads(ADAPTER_LAYOUT.read_text())["image_proj"]
    return {k: v for k, v in layout.items() if k.endswith(".weight") and len(v) == 2}


# ------------------------------------------------------------------------------------------------------- estimate
# Which components are on the GPU together while each phase runs (model offload moves whole models).
PHASE_COMPONENTS = {
    "text_encoder": ("text_encoder",),
    "text_encoder_2": ("text_encoder_2",),
    "siglip": ("siglip",),
    "dinov2": ("dinov2",),
    "denoise": ("transformer", "adapter_processors", "projector", "controlnet"),
    "vae": ("vae",),
}
# Under group offloading, components this small are simply kept on the GPU.
GROUP_OFFLOAD_MIN_BYTES = 1 * GiB


@dataclass(frozen=True)
class MemoryEstimate:
    """Expected peaks of one preset at one image size.

    Attributes:
        preset: the preset's name.
        width, height: image size in pixels.
        gpu_peak_bytes: peak GPU memory allocated by torch (bytes).
        ram_peak_bytes: peak process RAM as ``ru_maxrss`` counts it (bytes): ``ram_needed_bytes`` plus the pages
            of the memory-mapped weight file being read while loading.
        ram_needed_bytes: RAM that must fit (bytes): the baseline plus the weights held in process memory while
            loading or offloaded, whichever is larger; mapped file pages are left out (the kernel drops them
            under pressure).
        peak_phase: the phase at which the GPU peaks.
        weight_bytes: per component, bytes of its weights as held (quantized or not).
        activation_bytes: per phase, live activation bytes.
    """

    preset: str
    width: int
    height: int
    gpu_peak_bytes: int
    ram_peak_bytes: int
    peak_phase: str
    weight_bytes: dict[str, int] = field(default_factory=dict)
    activation_bytes: dict[str, int] = field(default_factory=dict)
    ram_needed_bytes: int = 0

    @property
    def ram_needed_gib(self) -> float:
        return self.ram_needed_bytes / GiB

    @property
    def gpu_peak_gib(self) -> float:
        return self.gpu_peak_bytes / GiB

    @property
    def ram_peak_gib(self) -> float:
        return self.ram_peak_bytes / GiB


def _group_resident_bytes(size: ComponentSize, stored_bytes: int, use_stream: bool) -> int:
    """GPU bytes of a group-offloaded component while it runs.

    ``apply_preset`` offloads the transformer block by block (its ungrouped embedders and final layers stay
    while it runs) and every other large component leaf by leaf; with a stream the next group is prefetched,
    so two groups are on the GPU.
    """
    per_param = stored_bytes / max(size.params, 1)
    groups = 2 if use_stream else 1
    if size.name == "transformer":
        return int(per_param * (size.ungrouped_params + groups * size.largest_block_params))
    return int(per_param * groups * size.largest_leaf_params)


ADAPTER_PARTS = ("projector", "adapter_processors")
# Components that ``disk`` offloading keeps in RAM: none (T5's tied embedding is untied first, see
# ``core.loading.presets.untie_weights``).
DISK_KEPT_IN_RAM: tuple[str, ...] = ()
# Models used once per prompt or per character: with ``disk_cache`` under group offloading they stream from disk
# (their results are kept on disk too), so they leave RAM after their work.
ENCODERS = ("text_encoder", "text_encoder_2", "siglip", "dinov2")


@dataclass(frozen=True)
class WeightFiles:
    """What the weight files are, for the RAM estimate.

    Attributes:
        transformer_bytes: bytes of a GGUF transformer's tensors as held (quantized; dequantized layer by layer
            as it runs), or None: the transformer is counted from its parameters under the preset.
        largest_file_bytes: the largest file read at once while loading (a shard of a diffusers folder, or a
            single-file checkpoint).
        transformer_file: the single file's path, for messages.
    """

    transformer_bytes: int | None = None
    largest_file_bytes: int = SHARD_BYTES
    transformer_file: str | None = None


def _ram_bytes(preset: MemoryPreset, sizes: Mapping[str, ComponentSize], stored: Mapping[str, int],
               files: WeightFiles | None) -> tuple[int, int]:
    """``(needed, peak)`` process RAM in bytes for ``preset``, as ``load_pipeline`` loads and offloads.

    Loading: safetensors (and GGUF) files are memory-mapped, so a component's weights cost nothing until read;
    what sits in process memory is the adapter (built from its checkpoint at the compute dtype), weights a
    quantizer made (bitsandbytes while loading, quanto and fp8 casting after), and, under group offloading from
    RAM, diffusers' pinned copy of the largest component while it is grouped. ``disk`` streams one component
    at a time to the user cache, so only the largest quantized copy is held. Running: ``none`` holds no weights
    on the CPU, ``model`` and ``group`` hold every component as stored, ``disk`` none. The peak adds the
    largest mapped file read at once (see ``SHARD_BYTES``). Calibrated on the one measured figure: ``full`` on
    an H200, 16.6 GiB peak RSS (estimate 17.0 GiB).
    """
    b = _dtype_bytes(preset.dtype)
    files = files or WeightFiles()
    adapter = sum(sizes[c].params * b for c in ADAPTER_PARTS if c in sizes)
    quantized = {c: stored[c] for c in sizes if _quantization_of(preset, c) and c not in ADAPTER_PARTS}
    if files.transformer_bytes is not None:
        quantized.pop("transformer", None)  # a GGUF file stays mapped until it is moved
    if preset.offload == "disk":
        in_ram = sum(stored[c] for c in DISK_KEPT_IN_RAM if c in stored)
        load_held = adapter + in_ram
        run_held = in_ram
    else:
        on_disk = set(ENCODERS) if preset.offload == "group" and preset.disk_cache else set()
        load_held = adapter + sum(quantized.values())  # apply_preset casts every model before offloading
        run_held = 0 if preset.offload == "none" else sum(v for c, v in stored.items() if c not in on_disk)
        if preset.offload == "group" and not group_low_cpu_mem_usage(preset):
            run_held += max(stored.values())  # pinned copies made while grouping, the originals freed after
    mapped = min(files.largest_file_bytes, max(s.params * b for s in sizes.values()))
    if files.transformer_bytes is not None:
        mapped = max(mapped, files.transformer_bytes)
    needed = RAM_BASELINE_BYTES + max(load_held, run_held)
    peak = RAM_BASELINE_BYTES + max(load_held + mapped, run_held)
    return needed, peak


def group_low_cpu_mem_usage(preset: MemoryPreset) -> bool:
    """Whether group offloading pins on the fly (``low_cpu_mem_usage``): no second copy in RAM. The fp8 and disk
    presets do (they are for 16-32 GB of RAM); ``minimal`` keeps diffusers' default (pinned copies, faster)."""
    return preset.offload == "disk" or preset.transformer_quantization == "fp8-layerwise"


def estimate(preset: MemoryPreset | str, width: int = 1024, height: int = 1024, *,
             sizes: Mapping[str, ComponentSize] | None = None, adapter: bool = True,
             use_stream: bool = True, bnb_keeps_float32: bool = False,
             files: "WeightFiles | None" = None, controlnet: bool = False) -> MemoryEstimate:
    """Estimate the GPU and RAM peaks of ``preset`` for one ``width`` x ``height`` image (pixels, batch 1).

    Args:
        preset: a ``MemoryPreset`` or its name.
        sizes: component counts (``core.loading.model_sizes.all_sizes``); default: full-size FLUX.1-dev with the
            released adapter and its two image encoders (or plain FLUX.1-dev when ``adapter`` is False).
        adapter: include SigLIP, DINOv2, the projector and the 57 processors.
        use_stream: group offloading prefetches the next group on a CUDA stream (two groups resident).
        bnb_keeps_float32: model transformers 4.x, whose bitsandbytes loaders kept T5's ``wo`` (1.0 B
            parameters) in float32 (+1.9 GiB): how the published figures were measured. transformers 5 keeps it
            in the compute dtype.
        files: what the weight files are (a single-file transformer's real size, the largest file mapped at
            once); default: the diffusers folders of FLUX.1-dev (10 GB shards).
        controlnet: count a ControlNet (Union-Pro-2.0's size) when ``sizes`` is not given: stored as the
            transformer, on the GPU with it while denoising, its residuals live through the transformer's call.

    GPU peak, by offload mode: ``none``: all weights + the largest phase activation; ``model``: the largest over
    phases of (that phase's models + its activations); ``group``: small components (< 1 GiB) resident + the
    largest over phases of (the running component's ungrouped params and one or two groups + activations).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    sizes = dict(sizes) if sizes is not None else all_sizes(adapter=adapter, controlnet=controlnet)
    stored = {}
    for name, s in sizes.items():
        quant = _quantization_of(preset, name)
        kept = ("float32" if bnb_keeps_float32 and quant is not None
                and quantization_backend(quant).library == "bitsandbytes" else None)
        stored[name] = weight_bytes(s, quant, preset.dtype, kept)
    if files is not None and files.transformer_bytes is not None and "transformer" in stored:
        stored["transformer"] = files.transformer_bytes  # a GGUF file: held as its quantized tensors
    acts = phase_activation_bytes(sizes, width, height, preset.vae_tiling, preset.dtype)
    phases = {p: [c for c in comps if c in sizes] for p, comps in PHASE_COMPONENTS.items() if p in acts}

    if preset.offload == "none":
        peak_phase = max(acts, key=acts.get)
        gpu = sum(stored.values()) + acts[peak_phase]
    elif preset.offload == "model":
        per_phase = {p: sum(stored[c] for c in comps) + acts[p] for p, comps in phases.items()}
        peak_phase = max(per_phase, key=per_phase.get)
        gpu = per_phase[peak_phase]
    else:
        small = {c for c, n in stored.items() if n < GROUP_OFFLOAD_MIN_BYTES}
        resident = sum(stored[c] for c in small)
        per_phase = {p: resident + acts[p] + sum(_group_resident_bytes(sizes[c], stored[c], use_stream)
                                                 for c in comps if c not in small)
                     for p, comps in phases.items()}
        peak_phase = max(per_phase, key=per_phase.get)
        gpu = per_phase[peak_phase]

    ram_needed, ram_peak = _ram_bytes(preset, sizes, stored, files)
    return MemoryEstimate(preset.name, width, height, int(gpu), int(ram_peak), peak_phase, stored, acts,
                          int(ram_needed))


# ------------------------------------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class DetectedMemory:
    """What this machine has, in bytes; ``vram_*`` None without a CUDA GPU."""

    vram_total_bytes: int | None
    vram_free_bytes: int | None
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    gpu_name: str | None = None


def _meminfo() -> tuple[int | None, int | None]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:
        pass
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, rest = line.split(":", 1)
                values[key] = int(rest.split()[0]) * 1024  # reported in kB (KiB)
    except OSError:
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable")


def swap_free_bytes() -> int:
    """Free swap space in bytes (psutil or /proc/meminfo); 0 when unknown."""
    try:
        import psutil

        return int(psutil.swap_memory().free)
    except (ImportError, RuntimeError, OSError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("SwapFree:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def detect_memory() -> DetectedMemory:
    """GPU memory (``torch.cuda.mem_get_info`` of the current device) and system RAM (psutil or /proc/meminfo)."""
    ram_total, ram_available = _meminfo()
    if not torch_may_see_a_gpu():
        return DetectedMemory(None, None, ram_total, ram_available)
    import torch

    if not torch.cuda.is_available():
        return DetectedMemory(None, None, ram_total, ram_available)
    free, total = torch.cuda.mem_get_info()
    return DetectedMemory(int(total), int(free), ram_total, ram_available, torch.cuda.get_device_name())


# ------------------------------------------------------------------------------------------------------- choosing
def usable_vram_bytes(vram_bytes: int) -> int:
    """GPU bytes a preset may plan to allocate: the card minus the CUDA context and a 5% fragmentation share."""
    return int(vram_bytes * (1 - FRAGMENTATION_SHARE)) - CUDA_CONTEXT_BYTES


def choose_preset(vram_bytes: int | None, ram_bytes: int | None, width: int = 1024, height: int = 1024, *,
                  bitsandbytes_ok: bool = True, sizes: Mapping[str, ComponentSize] | None = None,
                  files: WeightFiles | None = None, controlnet: bool = False
                  ) -> tuple[MemoryPreset, MemoryEstimate, str]:
    """The best preset whose estimate fits both budgets: ``(preset, estimate, reason)``. Pure: no detection here.

    Args:
        vram_bytes: the GPU's total memory in bytes, or None without a GPU.
        ram_bytes: system RAM in bytes, or None when unknown (then RAM is not checked).
        width, height: image size in pixels.
        bitsandbytes_ok: False swaps nf4 for ``quanto-int8`` (no bitsandbytes, or not on CUDA).
        files: the weight files (a GGUF transformer's real size); default: FLUX.1-dev's diffusers folders.
        controlnet: count a ControlNet for control images (:func:`estimate`).

    Presets are tried in ``PRESET_ORDER`` (bf16 on the GPU, fp8, streamed, nf4, streamed from disk). One fits
    when its GPU peak is at most ``usable_vram_bytes(vram_bytes)`` and the RAM it needs
    (``MemoryEstimate.ram_needed_bytes``) at most ``ram_bytes``. At 1024x1024 with the released adapter: 48 GB
    cards run ``full``; 24 GB ``fp8`` (15 GiB GPU, 25 GiB RAM); 12-16 GB with 32 GB RAM ``fp8-streamed``; 8 GB or
    16 GB of RAM ``streamed`` (from disk: 4 GiB GPU, 8 GiB RAM). When nothing fits, the preset that comes
    closest is returned and the reason names the budget that is short and what would help. Without a GPU, the
    choice is by RAM only.
    """
    candidates = [get_preset(n) for n in PRESET_ORDER]
    if not bitsandbytes_ok or vram_bytes is None:
        candidates = [p.with_quantization(QUANTO_ALTERNATIVE) if p.needs_bitsandbytes else p for p in candidates]
    estimates = [estimate(p, width, height, sizes=sizes, files=files, controlnet=controlnet) for p in candidates]
    size = f"{width}x{height}"

    def ram_ok(e: MemoryEstimate) -> bool:
        return ram_bytes is None or e.ram_needed_bytes <= ram_bytes

    if vram_bytes is None:
        for p, e in zip(candidates, estimates):
            if ram_ok(e):
                return p, e, (f"no CUDA GPU found: runs on the CPU, so GPU memory is no constraint; '{p.name}' is the "
                              f"best preset whose RAM ({e.ram_needed_gib:.1f} GiB) fits the system RAM")
        p, e = min(zip(candidates, estimates), key=lambda pe: pe[1].ram_needed_bytes)
        return p, e, (f"no CUDA GPU found, and even '{p.name}' needs {e.ram_needed_gib:.1f} GiB of RAM "
                      f"(have {ram_bytes / GiB:.1f} GiB): {_ram_help(files, ram_bytes, None, width, height, sizes)}")

    usable = usable_vram_bytes(vram_bytes)
    for p, e in zip(candidates, estimates):
        if e.gpu_peak_bytes <= usable and ram_ok(e):
            better = [q.name for q in candidates[: candidates.index(p)]]
            why_not = f" ({', '.join(better)} would not fit)" if better else ""
            return p, e, (f"'{p.name}' is the best preset that fits at {size}: GPU peak {e.gpu_peak_gib:.1f} GiB "
                          f"of {usable / GiB:.1f} GiB usable on a {vram_bytes / GiB:.0f} GiB card, RAM "
                          f"{e.ram_needed_gib:.1f} GiB{' of ' + format(ram_bytes / GiB, '.0f') + ' GiB' if ram_bytes else ''}"
                          f"{why_not}")
    gpu_fits = [pe for pe in zip(candidates, estimates) if pe[1].gpu_peak_bytes <= usable]
    ram_fits = [pe for pe in zip(candidates, estimates) if ram_ok(pe[1])]
    if gpu_fits:  # RAM is what is short: the preset needing the least RAM among those the GPU holds
        p, e = min(gpu_fits, key=lambda pe: pe[1].ram_needed_bytes)
        return p, e, (f"nothing fits at {size}: short of system RAM; the least, '{p.name}', needs "
                      f"{e.ram_needed_gib:.1f} GiB of RAM (have {ram_bytes / GiB:.1f} GiB): "
                      f"{_ram_help(files, ram_bytes, vram_bytes, width, height, sizes)}")
    p, e = min(ram_fits or list(zip(candidates, estimates)), key=lambda pe: pe[1].gpu_peak_bytes)
    both = "" if ram_fits else f" and RAM ({e.ram_needed_gib:.1f} GiB needed; {_ram_help(files)})"
    return p, e, (f"nothing fits at {size}: short of GPU memory{both}; the smallest, '{p.name}', peaks at "
                  f"{e.gpu_peak_gib:.1f} GiB of {usable / GiB:.1f} GiB usable: try a smaller image")


# city96's flux1-dev-Q4_K_S.gguf, the usual 4-bit file: about 6.8 GB
GGUF_Q4_BYTES = 6_810_000_000


def _ram_help(files: WeightFiles | None, ram_bytes: int | None = None, vram_bytes: int | None = None,
              width: int = 1024, height: int = 1024, sizes: Mapping[str, ComponentSize] | None = None) -> str:
    """What would help a RAM shortage: swap, and a 4-bit GGUF transformer file only where one would make some
    preset fit ``ram_bytes`` (and ``vram_bytes``); a smaller image never helps RAM."""
    advice = "add swap space or close other programs"
    if files is not None and files.transformer_bytes is not None or ram_bytes is None:
        return advice
    gguf = replace(files or WeightFiles(), transformer_bytes=GGUF_Q4_BYTES, largest_file_bytes=GGUF_Q4_BYTES)
    for name in PRESET_ORDER:
        e = estimate(name, width, height, sizes=sizes, files=gguf)
        if e.ram_needed_bytes <= ram_bytes and (vram_bytes is None or e.gpu_peak_bytes <= usable_vram_bytes(vram_bytes)):
            return advice + f", or use a 4-bit GGUF transformer file (--base flux1-dev-Q4_K_S.gguf: '{name}' fits)"
    return advice


def format_plan(vram_gb: float | None = None, ram_gb: float | None = None, width: int = 1024, height: int = 1024,
                *, detect: bool = True, files: WeightFiles | None = None, controlnet: bool = False) -> str:
    """The ``plan`` command's table: each preset's GPU peak, RAM needed and RAM peak (GiB), and what ``auto``
    picks and why.

    Args:
        vram_gb, ram_gb: GPU memory and RAM in GiB (GPU makers' "GB"); None: detected (when ``detect``).
        width, height: image size in pixels.
        files: the weight files (``core.loading.single_file.weight_files``); default: FLUX.1-dev's folders.
        controlnet: count a ControlNet of Union-Pro-2.0's size (control images).
    """
    detected = detect_memory() if detect and (vram_gb is None or ram_gb is None) else None
    vram = vram_gb * GiB if vram_gb is not None else (detected.vram_total_bytes if detected else None)
    ram = ram_gb * GiB if ram_gb is not None else (detected.ram_total_bytes if detected else None)
    bnb_ok = quantization_backend("bnb-nf4").unavailable("cuda") is None if vram_gb is None else True
    chosen, _, reason = choose_preset(vram, ram, width, height, bitsandbytes_ok=bnb_ok, files=files,
                                      controlnet=controlnet)
    where = (f"GPU {vram / GiB:.1f} GiB" if vram is not None else "no GPU") + \
            (f", RAM {ram / GiB:.1f} GiB" if ram is not None else ", RAM unknown")
    what = f", transformer {files.transformer_file}" if files is not None and files.transformer_file else ""
    control = " + ControlNet (Union-Pro-2.0)" if controlnet else ""
    lines = [f"Memory plan for {width}x{height}, FLUX.1-dev + InstantCharacter{control} ({where}{what})", ""]
    lines.append(f"  {'preset':<13} {'GPU peak':>9} {'RAM need':>9} {'RAM peak':>9}  description")
    for name in PRESET_ORDER:
        p = get_preset(name)
        if name == chosen.name:
            p = chosen  # shows the quanto alternative when auto swapped it in
        e = estimate(p, width, height, files=files, controlnet=controlnet)
        mark = "*" if name == chosen.name else " "
        swapped = p.transformer_quantization != get_preset(name).transformer_quantization
        quant = f" [as {p.transformer_quantization or p.dtype}: no bitsandbytes]" if swapped else ""
        lines.append(f"{mark} {name:<13} {e.gpu_peak_gib:>5.1f} GiB {e.ram_needed_gib:>5.1f} GiB "
                     f"{e.ram_peak_gib:>5.1f} GiB  {p.description}{quant}")
    lines += ["", "RAM need: what must fit in RAM; RAM peak: peak RSS, which also counts memory-mapped weight "
              "pages the system drops when short", f"auto -> {chosen.name}: {reason}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- RAM budget
class RamBudgetError(UserError, MemoryError):
    """A load that would not fit the RAM available: refused before it starts (the OS would kill the process)."""


def check_ram_budget(e: MemoryEstimate, available_bytes: int, files: WeightFiles | None = None,
                     sizes: Mapping[str, ComponentSize] | None = None) -> None:
    """Raise :class:`RamBudgetError` when ``e`` needs more RAM than ``available_bytes`` (free RAM plus free swap).

    The process's own baseline (Python, torch) is already in use when this is asked, so it is not counted
    again. The message gives both figures and what would help, naming the preset that needs the least RAM.
    """
    needed = e.ram_needed_bytes - RAM_BASELINE_BYTES
    if needed <= available_bytes:
        return
    least = min((estimate(n, e.width, e.height, sizes=sizes, files=files) for n in PRESET_ORDER),
                key=lambda x: x.ram_needed_bytes)
    alternative = (f"preset '{least.preset}' needs about {(least.ram_needed_bytes - RAM_BASELINE_BYTES) / GiB:.1f} "
                   f"GiB; " if least.preset != e.preset and least.ram_needed_bytes < e.ram_needed_bytes else "")
    raise RamBudgetError(f"not loading with preset '{e.preset}': it needs about {needed / GiB:.1f} GiB of RAM and "
                         f"{available_bytes / GiB:.1f} GiB is available (free RAM + swap); {alternative}"
                         f"{_ram_help(files, available_bytes + RAM_BASELINE_BYTES, None, e.width, e.height, sizes)}")


# --------------------------------------------------------------------------------------------- out of memory
class MemoryAdviceError(UserError, RuntimeError):
    """The GPU ran out of memory; the message (one line) names the preset to try next.

    Attributes:
        preset: the preset that ran out; next_preset: the suggestion, or None when none is smaller.
    """

    def __init__(self, message: str, preset: str, next_preset: str | None):
        super().__init__(message)
        self.preset = preset
        self.next_preset = next_preset


def next_preset(preset: MemoryPreset | str, vram_bytes: int | None = None, width: int = 1024,
                height: int = 1024, *, bitsandbytes_ok: bool | None = None) -> MemoryPreset | None:
    """The next preset after ``preset`` in ``PRESET_ORDER`` that needs less GPU memory; with ``vram_bytes``, the
    first such one estimated to fit.

    A quanto ``preset`` keeps quanto; ``bitsandbytes_ok`` False (default: whether the bitsandbytes backend runs on
    CUDA here) swaps bitsandbytes for ``quanto-int8``. Returns None when no later preset needs less GPU memory
    (``fp8-streamed``, ``streamed``); when none is estimated to fit ``vram_bytes``, the smallest one.
    """
    name = preset.name if isinstance(preset, MemoryPreset) else preset
    quant = preset.transformer_quantization if isinstance(preset, MemoryPreset) else None
    if quant not in QUANTIZERS:
        quant = None
    if bitsandbytes_ok is None:
        bitsandbytes_ok = quantization_backend("bnb-nf4").unavailable("cuda") is None
    if quant is None and not bitsandbytes_ok:
        quant = QUANTO_ALTERNATIVE

    def build(n: str) -> MemoryPreset:
        p = get_preset(n)
        # keep the user's quantization backend (quanto stays quanto)
        return p.with_quantization(quant) if quant else p

    current = estimate(build(name), width, height).gpu_peak_bytes
    smaller = [p for p in (build(n) for n in PRESET_ORDER[PRESET_ORDER.index(name) + 1:])
               if estimate(p, width, height).gpu_peak_bytes < current]
    if not smaller:
        return None
    if vram_bytes is not None:
        for p in smaller:
            if estimate(p, width, height).gpu_peak_bytes <= usable_vram_bytes(vram_bytes):
                return p
        return min(smaller, key=lambda p: estimate(p, width, height).gpu_peak_bytes)
    return smaller[0]


def free_memory() -> None:
    """Drop unreachable tensors and return cached CUDA blocks to the driver (no-op without CUDA)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def out_of_memory_advice(preset: MemoryPreset | str, vram_bytes: int | None = None, width: int = 1024,
                         height: int = 1024, *, bitsandbytes_ok: bool | None = None) -> Iterator[None]:
    """Turn ``torch.OutOfMemoryError`` raised inside into a ``MemoryAdviceError`` naming the next preset.

    Memory is freed (``free_memory``) before raising, so the app can keep serving requests.
    """
    import torch

    name = preset.name if isinstance(preset, MemoryPreset) else preset
    try:
        yield
    except torch.OutOfMemoryError as error:
        del error  # the traceback holds the frames (and their tensors) alive; let them go before freeing
        free_memory()
        nxt = next_preset(preset, vram_bytes, width, height, bitsandbytes_ok=bitsandbytes_ok)
        if nxt is None:
            message = (f"Out of GPU memory with preset '{name}', the smallest one: try a smaller image "
                       f"than {width}x{height}.")
        else:
            message = (f"Out of GPU memory with preset '{name}' at {width}x{height}: free memory was released; "
                       f"choose preset '{nxt.name}' and try again.")
        raise MemoryAdviceError(message, name, nxt.name if nxt else None) from None


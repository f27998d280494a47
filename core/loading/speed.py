"""Speed options for the loaded pipeline, applied with the libraries' own APIs after loading.

A :class:`SpeedOptions` names what runs faster; :func:`apply_speed` applies it once, after the memory preset, and
returns one line per option (what was done, or why it was left off). Every option off is exactly today's pipeline.

- ``fused_qkv``: diffusers' ``fuse_qkv_projections`` (one ``to_qkv`` / ``to_added_qkv`` matmul instead of three;
  the character processors read the projections through diffusers' ``_get_qkv_projections``, fused or not).
- ``attention_backend``: ``transformer.set_attention_backend(name)`` (``diffusers.attention_dispatch``); the
  character attention dispatches through the same backend. ``auto``: FlashAttention-3 when installed, cuDNN
  attention on a CUDA card of compute capability 9.0 or newer, else PyTorch's default SDPA.
- ``fp8``: torchao float8 dynamic activations and weights (per row) on the transformer blocks' linear layers;
  needs a CUDA card of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and torchao.
- ``compile``: ``transformer.compile_repeated_blocks(fullgraph=True)``: each FLUX block compiled once per
  process and shape (the 19 double-stream blocks share one graph, the 38 single-stream blocks another).
- draft (per request, :func:`set_step_cache`): diffusers' First Block Cache on the transformer (threshold
  ``draft_threshold``): a step whose first block changed little reuses the other blocks' last residual.

Modes (:data:`SPEED_MODES`): ``off`` (today), ``full`` (lossless: compile + fused QKV + the fastest exact
attention backend there), ``fast`` (``full`` + fp8).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace

import torch

from core.errors import UserError

log = logging.getLogger(__name__)

DRAFT_THRESHOLD = 0.35  # First Block Cache threshold of the public FLUX.1-dev benchmark


class SpeedOptionError(UserError, ValueError):
    """A speed option that does not exist (an unknown mode or attention backend); the message lists the valid ones."""


@dataclass(frozen=True)
class SpeedOptions:
    """What :func:`apply_speed` does to a loaded pipeline; all off (the default) changes nothing.

    Attributes:
        compile: compile the transformer's repeated blocks (``fullgraph=True``).
        attention_backend: a ``diffusers.attention_dispatch.AttentionBackendName`` value, ``auto``, or ``None``
            (diffusers' default, PyTorch SDPA).
        fused_qkv: fuse the attention layers' Q, K and V projections.
        fp8: torchao float8 dynamic matmuls in the transformer blocks (CUDA, compute capability 8.9+).
        draft_threshold: the First Block Cache threshold used by requests that ask for a draft.
    """

    compile: bool = False
    attention_backend: str | None = None
    fused_qkv: bool = False
    fp8: bool = False
    draft_threshold: float = DRAFT_THRESHOLD

    @property
    def off(self) -> bool:
        return not (self.compile or self.attention_backend or self.fused_qkv or self.fp8)

    @property
    def name(self) -> str:
        """The mode's name when it is one of :data:`SPEED_MODES`, else ``custom``."""
        for name, options in SPEED_MODES.items():
            if replace(options, draft_threshold=self.draft_threshold) == self:
                return name
        return "custom"

    @classmethod
    def mode(cls, name: str | None, **overrides) -> "SpeedOptions":
        """The options of mode ``name`` (``off``, ``full``, ``fast``; ``None`` is ``off``), with ``overrides``."""
        key = (name or "off").strip().lower()
        if key not in SPEED_MODES:
            raise SpeedOptionError(f"speed mode {name!r}: use one of {', '.join(SPEED_MODES)}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides.get("attention_backend") is not None:
            check_attention_backend(overrides["attention_backend"])
        return replace(SPEED_MODES[key], **overrides)


SPEED_MODES = {
    "off": SpeedOptions(),
    "full": SpeedOptions(compile=True, attention_backend="auto", fused_qkv=True),
    "fast": SpeedOptions(compile=True, attention_backend="auto", fused_qkv=True, fp8=True),
}


def attention_backend_names() -> list[str]:
    """The backend names diffusers knows (``diffusers.attention_dispatch.AttentionBackendName``), plus ``auto``."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return ["auto"] + [b.value for b in AttentionBackendName]


def check_attention_backend(name: str) -> str:
    """``name`` lower-cased when diffusers knows it; raises :class:`SpeedOptionError` otherwise."""
    names = attention_backend_names()
    if str(name).lower() not in names:
        raise SpeedOptionError(f"attention backend {name!r} is unknown: use one of {', '.join(names)}")
    return str(name).lower()


def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError):  # ZeroGPU before a GPU is attached
        return None


def choose_attention_backend(device: torch.device) -> tuple[str | None, str]:
    """``(backend or None, why)`` for ``auto``: the fastest exact attention backend on ``device``."""
    from diffusers.models import attention_dispatch as dispatch

    capability = _cuda_capability(device)
    if capability is None:
        return None, f"PyTorch's default attention (no CUDA: the device is {device.type})"
    if getattr(dispatch, "_CAN_USE_FLASH_ATTN_3", False) and capability[0] == 9:
        return "_flash_3", "FlashAttention-3 (installed, Hopper card)"
    if capability >= (9, 0):
        return "_native_cudnn", "cuDNN attention (compute capability 9.0 or newer)"
    return None, f"PyTorch's default attention (compute capability {capability[0]}.{capability[1]})"


def _fp8_unavailable(pipe, device: torch.device) -> str | None:
    """Why float8 matmuls cannot run here, or None when they can."""
    capability = _cuda_capability(device)
    if capability is None:
        return f"needs a CUDA GPU of compute capability 8.9 or newer; the device is {device.type}"
    if capability < (8, 9):
        return f"needs compute capability 8.9 or newer (Ada, Hopper); this card is {capability[0]}.{capability[1]}"
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao)"
    if _is_quantized(pipe.transformer):
        return "the memory preset already quantized the transformer"
    return None


def _is_quantized(module: torch.nn.Module) -> bool:
    if getattr(module, "hf_quantizer", None) is not None or getattr(module, "is_loaded_in_4bit", False):
        return True
    return any(type(p).__module__.split(".")[0] in ("optimum", "bitsandbytes", "torchao") for p in module.parameters())


def _block_linear(module: torch.nn.Module, name: str) -> bool:
    """The transformer blocks' linear layers with float8-friendly sizes (multiples of 16)."""
    return (isinstance(module, torch.nn.Linear) and "transformer_blocks." in name
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def apply_fp8(transformer: torch.nn.Module) -> None:
    """torchao float8 dynamic activation + float8 weight (per-row scales) on the blocks' linear layers."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_block_linear)


def apply_speed(pipe, options: SpeedOptions | None, device: str | torch.device | None = None) -> list[str]:
    """Applies ``options`` to ``pipe`` (after the memory preset); returns one line per option that is on.

    Order: fused QKV (from the bf16 weights), fp8, the attention backend, compile last (it traces what the others
    made). An option that cannot run here is left off with its line saying why; the others still apply.
    """
    options = options or SpeedOptions()
    if options.off:
        return []
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    transformer = pipe.transformer
    steps = []
    if options.fused_qkv:
        if _is_quantized(transformer):
            steps.append("fused QKV: off (the memory preset quantized the transformer)")
        else:
            transformer.fuse_qkv_projections()
            steps.append("fused QKV projections (to_qkv, to_added_qkv)")
    if options.fp8:
        why = _fp8_unavailable(pipe, device)
        if why is None:
            apply_fp8(transformer)
            steps.append("fp8: torchao float8 dynamic matmuls (per-row scales) in the transformer blocks")
        else:
            steps.append(f"fp8: off ({why})")
    if options.attention_backend:
        steps.append(_set_attention_backend(transformer, options.attention_backend, device))
    if options.compile:
        steps.append(_compile(transformer))
    for line in steps:
        log.info("speed: %s", line)
    return steps


def _set_attention_backend(transformer, name: str, device: torch.device) -> str:
    name = check_attention_backend(name)
    why = ""
    if name == "auto":
        name, why = choose_attention_backend(device)
        if name is None:
            return f"attention: {why}"
    try:
        transformer.set_attention_backend(name)
    except (RuntimeError, ImportError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"attention: PyTorch's default (backend {name} unavailable: {reason[:160]})"
    return f"attention backend {name}" + (f": {why}" if why else "")


def _compile(transformer) -> str:
    if not hasattr(torch, "compile") or not getattr(transformer, "_repeated_blocks", None):
        return "compile: off (this torch or transformer has no regional compilation)"
    transformer.compile_repeated_blocks(fullgraph=True)
    transformer._speed_compiled = True
    return "compiled the repeated transformer blocks (fullgraph; once per process and image size, on first use)"


def set_fused_for_loras(pipe, options: SpeedOptions, has_loras: bool) -> str | None:
    """Keeps fused QKV only while no style LoRA is on: a LoRA wraps ``to_q`` / ``to_k`` / ``to_v``, which a fused
    layer no longer calls. Unfuses when LoRAs come, fuses again when they go; returns a line when it changed."""
    if not options.fused_qkv:
        return None
    attention = [m for m in pipe.transformer.modules() if getattr(m, "_supports_qkv_fusion", False)
                 and hasattr(m, "to_q")]
    fused = any(m.fused_projections for m in attention)
    if _is_quantized(pipe.transformer):
        if has_loras and fused:
            raise SpeedOptionError("style LoRAs change to_q, to_k and to_v, which speed mode fast has fused and "
                                   "quantized to fp8: use speed full or off with LoRAs")
        return None
    if has_loras and fused:
        pipe.transformer.unfuse_qkv_projections()
        return "fused QKV: off while style LoRAs are on (they change to_q, to_k, to_v)"
    if not has_loras and not fused:
        pipe.transformer.fuse_qkv_projections()
        return "fused QKV projections again (no style LoRA)"
    return None


# Compiled shapes are capped: a size outside these buckets (the studio's size presets), or past
# MAX_COMPILED_SHAPES distinct shapes, runs its blocks eagerly, so a client choosing sizes cannot make the server
# compile again and again (torch's own recompile limit would be the only bound otherwise).
COMPILE_SIZES = frozenset({(1024, 1024), (896, 1152), (1152, 896), (1344, 768), (768, 1344), (512, 512),
                           (128, 128)})
MAX_COMPILED_SHAPES = 8


def compile_decision(compiled: set, shape: tuple) -> str:
    """``"reuse"``, ``"compile"`` or ``"eager"`` for a request of ``shape`` (``(width, height, ...)``) on a compiled
    transformer that has compiled the shapes in ``compiled`` so far."""
    if shape in compiled:
        return "reuse"
    if tuple(shape[:2]) in COMPILE_SIZES and len(compiled) < MAX_COMPILED_SHAPES:
        return "compile"
    return "eager"


def run_eagerly() -> None:
    """This request's transformer calls run without compilation (the next request sets the stance again)."""
    torch.compiler.set_stance("force_eager")


def is_compiled(pipe) -> bool:
    """Whether :func:`apply_speed` compiled ``pipe``'s repeated transformer blocks (and :func:`forget_compilation`
    has not dropped them since)."""
    return bool(getattr(getattr(pipe, "transformer", None), "_speed_compiled", False))


def forget_compilation(transformer) -> None:
    """Drops the JIT-compiled repeated blocks of ``transformer``: it runs eagerly until compiled again (what
    ``app.spaces`` does before it compiles ahead of time)."""
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:  # torch's own slot for ``module.compile()``
            module._compiled_call_impl = None
    transformer._speed_compiled = False


def step_cache_threshold(transformer) -> float | None:
    """The threshold of the draft step cache on ``transformer`` (:func:`set_step_cache`); ``None`` when off."""
    return getattr(transformer, "_speed_step_cache", None)


def set_step_cache(pipe, draft: bool, threshold: float = DRAFT_THRESHOLD) -> str | None:
    """Turns the draft step cache (diffusers' First Block Cache) on or off on ``pipe.transformer``.

    Idempotent; returns a line when the state changed. On a compiled transformer the draft's calls run the
    blocks eagerly (``torch.compiler.set_stance("force_eager")``): the cache's skip decision is a Python branch
    on a tensor value, which ``fullgraph`` compilation cannot hold.
    """
    from diffusers.hooks import FirstBlockCacheConfig

    transformer = getattr(pipe, "transformer", None)
    if transformer is None:  # a stand-in pipeline (tests) or one without a FLUX transformer: nothing to cache
        return None
    if is_compiled(pipe):  # every request: the stance is process-wide (another engine may have left it)
        torch.compiler.set_stance("force_eager" if draft else "default")
    current = step_cache_threshold(transformer)
    wanted = float(threshold) if draft else None
    if current == wanted:
        return None
    if current is not None:
        transformer.disable_cache()
    if wanted is not None:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=wanted))
    transformer._speed_step_cache = wanted
    return f"draft: First Block Cache at threshold {wanted:g}" if draft else "draft: off"

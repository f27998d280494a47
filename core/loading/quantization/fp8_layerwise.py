"""fp8 layerwise casting (diffusers' ``apply_layerwise_casting``): Linear/conv weights stored in float8_e4m3fn and
cast to the compute dtype layer by layer as each runs. Plain tensors, so group offloading can move them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.loading.model_sizes import kept_module_names
from core.loading.quantization.base import QuantizationBackend, register

FP8_STORAGE = "float8_e4m3fn"  # the torch dtype's name (torch is not imported for the planner)


def cast_layerwise_fp8(module, compute_dtype, skip: list[str] | None = None) -> None:
    """Store ``module``'s Linear/conv weights in float8_e4m3fn, cast to ``compute_dtype`` per layer as it runs.

    diffusers' ``apply_layerwise_casting``, skipping norms and positional embeddings (diffusers' defaults, the
    model's ``_skip_layerwise_casting_patterns``), embeddings (a model's ``dtype`` is its first parameter's), the
    modules transformers keeps unconverted (T5's ``wo``, whose parent casts its input to the weight's dtype) and
    the regular expressions in ``skip``.
    """
    import torch
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = list(DEFAULT_SKIP_MODULES_PATTERN) + list(getattr(module, "_skip_layerwise_casting_patterns", None)
                                                         or [])
    patterns += [rf"(^|\.){re.escape(k)}$" for k in kept_module_names(module)] + list(skip or [])
    apply_layerwise_casting(module, storage_dtype=getattr(torch, FP8_STORAGE), compute_dtype=compute_dtype,
                            skip_modules_pattern=tuple(patterns), skip_modules_classes=(torch.nn.Embedding,))


def _compute_dtype(module):
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _subtrees(names) -> list[str]:
    """Regular expressions matching the modules called ``names`` and everything inside them."""
    return [rf"^{re.escape(n)}(\.|$)" for n in names]


@dataclass(frozen=True)
class LayerwiseFp8Backend(QuantizationBackend):
    library: str = "diffusers"
    group_offloadable: bool = True
    trains_frozen_base: bool = False

    def linear_bytes(self, params: int, rows: int, dtype_bytes: int) -> float:
        return params  # one byte per weight, no scales

    def weight_bytes(self, size, dtype_bytes: int, kept_bytes: int) -> int:
        # one byte per Linear weight but those the cast skips (norm-named modulation, see ComponentSize) and T5's
        # kept ``wo`` (its parent casts inputs to its dtype)
        skipped = size.cast_skipped_params
        return int(size.quantizable_params - skipped + (size.other_params + skipped) * dtype_bytes)

    def apply(self, module, exclude=()) -> None:
        cast_layerwise_fp8(module, _compute_dtype(module), skip=_subtrees(exclude))

    def applied(self, name: str) -> str:
        return f"{name} stored in fp8 (layerwise casting)"

    def apply_to_adapter(self, transformer, processors, components) -> list[str]:
        inside = [transformer.get_submodule(n) for n in processors] if transformer is not None else []
        for module in inside + [m for _, m in components]:
            # the projector's dtype is its proj.fc1 weight's, which the pipeline casts features to: kept
            cast_layerwise_fp8(module, _compute_dtype(module), skip=[r"^proj\.fc1$"])
        return ["adapter stored in fp8 (layerwise casting)"]


FP8_LAYERWISE = register(LayerwiseFp8Backend("fp8-layerwise"))

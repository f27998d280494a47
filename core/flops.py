"""FLOP accounting of one full-size denoising step, counted by torch on meta tensors (no weights, no GPU).

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention (2 FLOPs per
multiply-add) while the real module code runs on ``meta`` tensors, so the count follows the code, not a formula.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.model_sizes import CONFIG_DIR

TEXT_TOKENS = 512


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one denoising step.

    Attributes:
        total: all FLOPs counted (base transformer call plus the adapter's, when given).
        base: FLOPs of the transformer call alone (no adapter installed).
        adapter: FLOPs the adapter added (``total - base``): its attention and ``per_step`` work.
        by_module: FLOPs of the counted calls' modules and their direct children (e.g.
            ``FluxTransformer2DModel.proj_out``).
    """

    total: int
    base: int
    adapter: int = 0
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def adapter_share(self) -> float:
        """Adapter FLOPs as a fraction of the base step."""
        return self.adapter / self.base if self.base else 0.0


def _flux_inputs(config: dict, width: int, height: int, text_tokens: int) -> dict:
    """Meta inputs of one FluxTransformer2DModel call for a ``width`` x ``height`` image (batch 1)."""
    tokens = (height // 16) * (width // 16)
    return dict(
        hidden_states=torch.empty(1, tokens, config["in_channels"], device="meta"),
        encoder_hidden_states=torch.empty(1, text_tokens, config["joint_attention_dim"], device="meta"),
        pooled_projections=torch.empty(1, config["pooled_projection_dim"], device="meta"),
        timestep=torch.empty(1, device="meta"),
        guidance=torch.empty(1, device="meta") if config.get("guidance_embeds") else None,
        img_ids=torch.zeros(tokens, 3, device="meta"),
        txt_ids=torch.zeros(text_tokens, 3, device="meta"),
        return_dict=False,
    )


def _count(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()
                  if name != "Global" and name.count(".") <= 1}
    return int(counter.get_total_flops()), per_module


def count_step_flops(config: dict | None = None, width: int = 1024, height: int = 1024,
                     text_tokens: int = TEXT_TOKENS,
                     install_adapter: Callable[[torch.nn.Module], None] | None = None,
                     per_step: Callable[[], object] | None = None) -> StepFlops:
    """Count one denoising step of FLUX (default: full-size FLUX.1-dev) at ``width`` x ``height`` pixels.

    The transformer is built on the meta device from ``config`` and called once (FLUX.1-dev is guidance-
    distilled: one call per step, no classifier-free batch).

    Args:
        config: a FluxTransformer2DModel config; default ``assets/configs/flux1-dev-transformer.json``.
        text_tokens: T5 tokens (512 in FluxPipeline).
        install_adapter: called with the meta transformer after the base count, to install the adapter
            (e.g. ``set_attn_processor`` with meta-built processors); the transformer is then counted again.
        per_step: extra work of each step outside the transformer (e.g. the projector recomputed every step,
            built on meta by the caller); counted once and added to the adapter's share.

    Returns:
        ``StepFlops`` with ``base`` the plain transformer call and ``adapter`` what the two hooks added.
    """
    from diffusers import FluxTransformer2DModel

    if config is None:
        config = json.loads((CONFIG_DIR / "flux1-dev-transformer.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config).eval()
    inputs = _flux_inputs(config, width, height, text_tokens)
    base, by_module = _count(lambda: transformer(**inputs))
    total = base
    if install_adapter is not None:
        install_adapter(transformer)
        total, by_module = _count(lambda: transformer(**inputs))
    if per_step is not None:
        extra, extra_modules = _count(per_step)
        total += extra
        by_module = {**by_module, **{f"per_step.{k}": v for k, v in extra_modules.items()}}
    return StepFlops(total=total, base=base, adapter=total - base, by_module=by_module)

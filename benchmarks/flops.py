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

from core.loading.model_sizes import CONFIG_DIR

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
                     per_step: Callable[[], object] | None = None,
                     joint_attention_kwargs: dict | None = None) -> StepFlops:
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
        joint_attention_kwargs: passed to the transformer call with the adapter installed (e.g. the
            ``character_conditions`` the adapter's processors need to do their work).

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
        total, by_module = _count(lambda: transformer(**inputs, joint_attention_kwargs=joint_attention_kwargs))
    if per_step is not None:
        extra, extra_modules = _count(per_step)
        total += extra
        by_module = {**by_module, **{f"per_step.{k}": v for k, v in extra_modules.items()}}
    return StepFlops(total=total, base=base, adapter=total - base, by_module=by_module)


# ------------------------------------------------------------------------------------------- with the adapter
@dataclass(frozen=True)
class AdapterFlops:
    """FLOPs of one denoising step with the released adapter shapes, and its overheads.

    Attributes:
        width, height: image size in pixels.
        base: the plain FLUX transformer call.
        attention: what the character attention adds inside the 57 attention layers (K/V of the character
            tokens and the image queries' attention to them): needed every step by any faithful adapter.
        resampler: the time resampler, once per step on the cached context (this pipeline).
        projector: the whole projector from the encoder features (what the released code runs every step);
            it includes the resampler.
    """

    width: int
    height: int
    base: int
    attention: int
    resampler: int
    projector: int

    @property
    def ours(self) -> int:
        """Adapter FLOPs per step in this pipeline: character attention + resampler (context cached)."""
        return self.attention + self.resampler

    @property
    def as_released(self) -> int:
        """Adapter FLOPs per step in the released code: character attention + the whole projector."""
        return self.attention + self.projector

    def share(self, flops: int) -> float:
        """``flops`` as a fraction of the base step."""
        return flops / self.base

    def rows(self) -> list[tuple[str, int]]:
        """(label, FLOPs) rows of :meth:`table`."""
        return [
            ("FLUX.1-dev step (base)", self.base),
            ("character attention (57 layers)", self.attention),
            ("projector, recomputed every step", self.projector),
            ("  of which the time resampler", self.resampler),
            ("adapter overhead, this pipeline", self.ours),
            ("adapter overhead, as released", self.as_released),
        ]

    def table(self) -> str:
        """A plain-text table in TFLOP and % of the base step."""
        lines = [(f"One denoising step at {self.width}x{self.height}, FLUX.1-dev + InstantCharacter "
                  "(torch flop counter, meta tensors)"), "",
                 f"  {'':<34} {'TFLOP':>8} {'% base':>8}"]
        for label, flops in self.rows():
            lines.append(f"  {label:<34} {flops / 1e12:>8.2f} {100 * self.share(flops):>7.1f}%")
        return "\n".join(lines)


def character_feature_shapes(encoder_tokens: int = 729, width: int = 2688) -> dict[str, tuple[int, ...]]:
    """Shapes of one character's encoder features (batch 1): ``N`` tokens per 384 view, SigLIP + DINOv2 width.

    The projector sees the low-res view's deep features (N), three shallow layers (3N) and the four high-res
    crops' deep features (4N); see :class:`core.models.encoders.CharacterFeatures`.
    """
    return {"low_res_deep": (1, encoder_tokens, width), "low_res_shallow": (1, 3 * encoder_tokens, width),
            "high_res_deep": (1, 4 * encoder_tokens, width)}


def count_adapter_flops(width: int = 1024, height: int = 1024, text_tokens: int = TEXT_TOKENS,
                        config: dict | None = None, projector_config=None, encoder_tokens: int = 729
                        ) -> AdapterFlops:
    """Count one step of FLUX (default FLUX.1-dev) with the InstantCharacter adapter, on meta tensors.

    The real modules run: :class:`~core.models.attention.CharacterAttentionLayers` installed on the meta transformer and
    called with one ``CharacterCondition`` (as the pipeline passes it), and
    :class:`~core.models.projector.CharacterProjector` (default: the released size) on meta encoder features.

    Args:
        width, height: image size in pixels.
        config: a FluxTransformer2DModel config (default FLUX.1-dev).
        projector_config: a :class:`~core.models.projector.ProjectorConfig` (default: the released one).
        encoder_tokens: tokens per 384-pixel view of the image encoders (729 for patch 14).
    """
    from core.models.attention import CharacterAttentionLayers, CharacterCondition
    from core.models.projector import CharacterProjector, ProjectorConfig

    if config is None:
        config = json.loads((CONFIG_DIR / "flux1-dev-transformer.json").read_text())
    projector_config = projector_config or ProjectorConfig()
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    layers = config["num_layers"] + config["num_single_layers"]
    with torch.device("meta"):
        # no grad on the parameters: the flop counter's module tracker trips over views of them made in no_grad
        projector = CharacterProjector(projector_config).eval().requires_grad_(False)
        processors = CharacterAttentionLayers(layers, heads * head_dim, projector_config.output_dim, head_dim)
        features = {k: torch.empty(shape) for k, shape in
                    character_feature_shapes(encoder_tokens, projector_config.inner_dim).items()}
        timestep = torch.empty(1)
        tokens = torch.empty(1, projector_config.num_queries, projector_config.output_dim)
    with torch.no_grad():
        context = projector(**features)  # on meta: shapes only, nothing computed
    conditions = {"character_conditions": [CharacterCondition(tokens, 0.9, None)], "text_seq_len": text_tokens}

    with_attention = count_step_flops(config, width, height, text_tokens, install_adapter=processors.install,
                                      joint_attention_kwargs=conditions)
    resampler, _ = _count(lambda: projector(context=context, timestep=timestep))
    whole, _ = _count(lambda: projector(**features, timestep=timestep))
    return AdapterFlops(width, height, with_attention.base, with_attention.adapter, resampler, whole)


if __name__ == "__main__":
    print(count_adapter_flops().table())

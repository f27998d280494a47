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


# ------------------------------------------------------------------------------------------- several characters
@dataclass(frozen=True)
class CharactersFlops:
    """FLOPs of one step (batch 1, no true CFG) with ``characters`` characters whose regions partition the image.

    Attributes:
        base: the plain FLUX transformer call.
        attention: the characters' attention in all layers, each from the image tokens of its own region only.
        attention_everywhere: the same attending from every image token (before per-region attention).
        resampler: the time resampler, once per character.
        regional_text: what the regional-text mask adds in a masked step (0 unless ``base_ratio`` > 0: a masked
            attention costs the counter what an unmasked one does).
    """

    width: int
    height: int
    characters: int
    layout: str
    base_ratio: float
    base: int
    attention: int
    attention_everywhere: int
    resampler: int
    regional_text: int

    @property
    def adapter(self) -> int:
        return self.attention + self.resampler

    def to_json(self) -> dict:
        def tflop(flops: int) -> float:
            return round(flops / 1e12, 3)

        return {"width": self.width, "height": self.height, "characters": self.characters, "layout": self.layout,
                "base_tflop": tflop(self.base), "adapter_tflop": tflop(self.adapter),
                "adapter_share": round(self.adapter / self.base, 4),
                "attention_tflop": tflop(self.attention), "resampler_tflop": tflop(self.resampler),
                "adapter_tflop_attending_everywhere": tflop(self.attention_everywhere + self.resampler),
                "adapter_share_attending_everywhere": round((self.attention_everywhere + self.resampler) / self.base,
                                                            4),
                "regional_text_base_ratio": self.base_ratio,
                "regional_text_tflop_per_masked_step": tflop(self.regional_text)}


def partition_masks(count: int, rows: int, cols: int, layout: str = "strips") -> list[torch.Tensor]:
    """(rows*cols,) routing weights of ``count`` regions partitioning the token grid: vertical ``strips`` or a
    ``grid`` (as square as the count allows), through the engine's own routing."""
    from core.conditioning.masks import RoutingMask, auto_layout
    from core.conditioning.routing import route_characters

    if layout == "strips":
        masks = auto_layout(count)
    elif layout == "grid":
        grid_rows = max(r for r in range(1, int(count ** 0.5) + 1) if count % r == 0)
        grid_cols = count // grid_rows
        masks = [RoutingMask.from_spec(f"grid:{grid_rows}x{grid_cols}:{i + 1}") for i in range(count)]
    else:
        raise ValueError(f"layout {layout!r}: use strips or grid")
    weights = route_characters(masks, rows, cols).weights
    return [torch.ones(rows * cols) if w is None else w for w in weights]


def count_characters_flops(width: int = 1024, height: int = 1024, characters: int = 1, layout: str = "strips",
                           base_ratio: float = 0.0, text_tokens: int = TEXT_TOKENS, config: dict | None = None,
                           projector_config=None) -> CharactersFlops:
    """Count one step with ``characters`` characters (released adapter shapes, FLUX.1-dev by default), each
    routed to its part of a partition of the image, through the real modules on meta tensors (as the pipeline
    passes them: batch-1 tokens, each condition's ``reach``; one character covers the whole image)."""
    from core.conditioning.regional_text import RegionalText, RegionalTextMask
    from core.models.attention import CharacterAttentionLayers, CharacterCondition, mask_reach
    from core.models.projector import CharacterProjector, ProjectorConfig

    if config is None:
        config = json.loads((CONFIG_DIR / "flux1-dev-transformer.json").read_text())
    projector_config = projector_config or ProjectorConfig()
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    layers = config["num_layers"] + config["num_single_layers"]
    rows, cols = height // 16, width // 16
    masks = [None] if characters == 1 else partition_masks(characters, rows, cols, layout)
    with torch.device("meta"):
        projector = CharacterProjector(projector_config).eval().requires_grad_(False)
        processors = CharacterAttentionLayers(layers, heads * head_dim, projector_config.output_dim, head_dim)
        context = torch.empty(1, 2 * 729, projector_config.inner_dim)
        timestep = torch.empty(1)
        tokens = torch.empty(1, projector_config.num_queries, projector_config.output_dim)

    def conditions(per_region: bool, regional: bool = False) -> dict:
        reaches = [mask_reach(m) if per_region else None for m in masks]
        conds = [CharacterCondition(tokens, 0.9, None if m is None else m.to("meta")[None],
                                    reach=None if r is None else r.to("meta")) for m, r in zip(masks, reaches)]
        kwargs = {"character_conditions": conds, "text_seq_len": text_tokens}
        if regional:
            size = text_tokens + rows * cols
            kwargs["regional_text"] = RegionalTextMask(torch.empty(1, 1, size, size, dtype=torch.bool, device="meta"),
                                                       text_tokens, RegionalText("on", base_ratio=base_ratio))
        return kwargs

    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config).eval()
    inputs = _flux_inputs(config, width, height, text_tokens)
    base, _ = _count(lambda: transformer(**inputs))
    processors.install(transformer)

    def attention(per_region: bool, regional: bool = False) -> int:
        kwargs = conditions(per_region, regional)
        return _count(lambda: transformer(**inputs, joint_attention_kwargs=kwargs))[0] - base

    ours, everywhere = attention(True), attention(False)
    masked = attention(True, regional=True) if characters > 1 else ours
    resampler, _ = _count(lambda: projector(context=context, timestep=timestep))
    return CharactersFlops(width, height, characters, layout, base_ratio, base, ours, everywhere,
                           characters * resampler, masked - ours)


def _size(text: str) -> tuple[int, int]:
    """``1024`` or ``1024x768`` (width x height) -> (width, height)."""
    import argparse

    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use N or WxH in pixels") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p < 16 or p % 16 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: use N or WxH, multiples of 16")
    return parts[0], parts[1]


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops",
                                     description="FLOPs of one FLUX.1-dev + InstantCharacter step (meta tensors)")
    parser.add_argument("--size", type=_size, default=(1024, 1024), help="N or WxH pixels (default 1024)")
    parser.add_argument("--characters", type=int, default=None,
                        help="count this many characters, regions partitioning the image (1 to 8)")
    parser.add_argument("--layout", choices=("strips", "grid"), default="strips")
    parser.add_argument("--base-ratio", type=float, default=0.0, help="regional text's base ratio (0 to 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    width, height = args.size
    if args.characters is None:
        result = count_adapter_flops(width, height)
        print(json.dumps({"base_tflop": round(result.base / 1e12, 3), "adapter_tflop": round(result.ours / 1e12, 3),
                          "adapter_share": round(result.share(result.ours), 4)}) if args.json else result.table())
        return
    if not 1 <= args.characters <= 8:
        parser.error(f"--characters {args.characters}: must be 1 to 8")
    result = count_characters_flops(width, height, args.characters, args.layout, args.base_ratio)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for key, value in result.to_json().items():
            print(f"{key:<40} {value}")


if __name__ == "__main__":
    main()

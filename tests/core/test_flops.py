"""FLOP accounting on meta tensors: one full-size FLUX.1-dev step and the adapter hooks."""

import pytest
import torch

from benchmarks.flops import count_step_flops

TINY = dict(attention_head_dim=16, num_attention_heads=2, num_layers=1, num_single_layers=1, joint_attention_dim=32,
            pooled_projection_dim=16, in_channels=16, guidance_embeds=True, axes_dims_rope=[4, 6, 6])


def test_per_step_work_is_counted_as_adapter():
    lin = torch.nn.Linear(64, 48, device="meta")
    plain = count_step_flops(TINY, width=64, height=64, text_tokens=8)
    with_extra = count_step_flops(TINY, width=64, height=64, text_tokens=8,
                                  per_step=lambda: lin(torch.empty(1, 10, 64, device="meta")))
    assert plain.adapter == 0 and plain.total == plain.base > 0
    assert with_extra.base == plain.base
    assert with_extra.adapter == 2 * 10 * 64 * 48  # one multiply-add = 2 FLOPs


def test_installed_adapter_is_counted_against_the_base():
    def install(transformer):
        # stand-in adapter: a wider output projection
        transformer.proj_out = torch.nn.Linear(transformer.proj_out.in_features, 2 * transformer.proj_out.out_features,
                                               device="meta")

    r = count_step_flops(TINY, width=64, height=64, text_tokens=8, install_adapter=install)
    tokens, width = (64 // 16) ** 2, TINY["num_attention_heads"] * TINY["attention_head_dim"]
    assert r.adapter == 2 * tokens * width * TINY["in_channels"]


@pytest.mark.slow
def test_full_size_flux_step_is_74_4_tflop():
    r = count_step_flops()  # FLUX.1-dev, 1024x1024, 512 text tokens
    print(f"\nFLUX.1-dev denoising step at 1024x1024: {r.total / 1e12:.2f} TFLOP")
    assert r.total == pytest.approx(74.4e12, rel=0.02)
    assert r.by_module["FluxTransformer2DModel.proj_out"] == 2 * 4096 * 3072 * 64


def test_character_attention_and_projector_are_counted_through_the_real_modules():
    from benchmarks.flops import count_adapter_flops
    from core.models.projector import ProjectorConfig

    small = ProjectorConfig(inner_dim=64, num_layers=1, resampler_dim=64, resampler_depth=1, num_queries=8,
                            output_dim=32)
    r = count_adapter_flops(64, 64, text_tokens=8, config=TINY, projector_config=small, encoder_tokens=9)
    layers = TINY["num_layers"] + TINY["num_single_layers"]
    width = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    image_tokens, queries, token_dim = (64 // 16) ** 2, small.num_queries, small.output_dim
    # per layer: K and V of the character tokens, then the image queries' scores and weighted sum
    assert r.attention == layers * (2 * 2 * queries * token_dim * width + 2 * 2 * image_tokens * queries * width)
    assert 0 < r.resampler < r.projector
    assert r.ours == r.attention + r.resampler and r.as_released == r.attention + r.projector
    assert "as released" in r.table()


@pytest.mark.slow
def test_adapter_overheads_at_full_size_match_the_issue():
    from benchmarks.flops import count_adapter_flops

    r = count_adapter_flops()  # released adapter shapes, FLUX.1-dev, 1024x1024
    print("\n" + r.table())
    assert r.base == pytest.approx(74.4e12, rel=0.01)
    assert 100 * r.share(r.attention) == pytest.approx(7.9, abs=1.0)
    assert 100 * r.share(r.resampler) == pytest.approx(0.4, abs=1.0)
    assert 100 * r.share(r.ours) == pytest.approx(8.3, abs=1.0)
    assert 100 * r.share(r.projector) == pytest.approx(3.6, abs=1.0)
    assert 100 * r.share(r.as_released) == pytest.approx(11.5, abs=1.0)

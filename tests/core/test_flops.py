"""FLOP accounting on meta tensors: one full-size FLUX.1-dev step and the adapter hooks."""

import pytest
import torch

from core.flops import count_step_flops

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

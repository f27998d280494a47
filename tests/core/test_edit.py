"""Editing on the tiny models: image-to-image (strength, steps), inpainting (exact pixels outside the feathered
region, characters routed to the region), and the bad inputs, each with its message."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.conditioning.character import Character
from core.conditioning.edit import (EditError, character_masks, check_strength, load_region, outside, output_size,
                                    paste_alpha, paste_back)
from core.conditioning.masks import RoutingMask
from core.io.images import ImageInputError
from core.models.pipeline import GenerationInputError, InstantCharacterPipeline

SIZE = 64


def _gen(seed=1):
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def source():
    return Image.fromarray((np.random.RandomState(0).rand(SIZE, SIZE, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def region():
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[16:40, 20:44] = 1
    return RoutingMask.from_spec(mask)


def _call(pipe, **kwargs):
    args = dict(prompt="a cat", num_inference_steps=4, height=SIZE, width=SIZE, generator=_gen())
    args.update(kwargs)
    return pipe(**args)


def test_strength_zero_returns_the_vae_round_trip(tiny_pipe, source):
    out = _call(tiny_pipe, image=source, strength=0.0, num_inference_steps=10).images[0]
    with torch.no_grad():
        pixels = tiny_pipe.image_processor.preprocess(source, SIZE, SIZE)
        decoded = tiny_pipe.vae.decode(tiny_pipe.vae.encode(pixels).latent_dist.mode(), return_dict=False)[0]
    round_trip = tiny_pipe.image_processor.postprocess(decoded)[0]
    # the pipeline scales and shifts the latents and packs them (and back) before decoding: float32 rounding of
    # about 1e-7 that can move a pixel across a rounding boundary of the 8-bit image, so one level is allowed
    difference = np.abs(np.asarray(out).astype(int) - np.asarray(round_trip).astype(int))
    assert difference.max() <= 1


@pytest.mark.parametrize("steps, strength, expected", [(10, 1.0, 10), (10, 0.5, 5), (10, 0.25, 3), (8, 0.01, 1),
                                                       (6, 0.0, 0)])
def test_denoising_steps_follow_strength(tiny_pipe, source, steps, strength, expected):
    seen = []
    _call(tiny_pipe, image=source, strength=strength, num_inference_steps=steps,
          callback_on_step_end=lambda pipe, i, t, tensors: seen.append(float(t)) or {})
    assert len(seen) == expected == tiny_pipe._num_timesteps
    full = []  # the last steps of a generation's own schedule
    _call(tiny_pipe, num_inference_steps=steps, output_type="latent",
          callback_on_step_end=lambda pipe, i, t, tensors: full.append(float(t)) or {})
    assert seen == full[len(full) - expected:]


def test_strength_one_ignores_the_source(tiny_pipe, source):
    plain = _call(tiny_pipe, output_type="latent").images
    edited = _call(tiny_pipe, image=source, strength=1.0, output_type="latent").images
    other = _call(tiny_pipe, image=Image.new("RGB", (SIZE, SIZE), "white"), strength=1.0, output_type="latent").images
    assert torch.allclose(plain, edited, atol=1e-5) and torch.allclose(edited, other, atol=1e-5)


def test_image_to_image_depends_on_the_source(tiny_pipe, source):
    a = _call(tiny_pipe, image=source, strength=0.5, output_type="latent").images
    b = _call(tiny_pipe, image=Image.new("RGB", (SIZE, SIZE), "white"), strength=0.5, output_type="latent").images
    assert (a - b).abs().max() > 1e-2


def test_no_source_is_exactly_generation(tiny_pipe):
    """The edit arguments left at their defaults change nothing (tests/core/test_golden.py checks the numbers)."""
    plain = _call(tiny_pipe, output_type="latent").images
    again = _call(tiny_pipe, output_type="latent", image=None, strength=0.3, mask_image=None).images
    assert torch.equal(plain, again)


@pytest.mark.parametrize("output_type", ["pil", "np"])
def test_inpainting_keeps_every_pixel_outside_the_feathered_region(tiny_pipe, source, region, output_type):
    out = _call(tiny_pipe, image=source, strength=1.0, mask_image=region, output_type=output_type).images[0]
    result = np.asarray(out) if output_type == "pil" else np.round(out * 255).astype(np.uint8)
    keep = outside(region, SIZE, SIZE)
    assert keep.sum() > SIZE * SIZE / 2
    assert np.array_equal(result[keep], np.asarray(source)[keep])
    inside = region.image.astype(bool)
    assert np.abs(result[inside].astype(int) - np.asarray(source)[inside].astype(int)).mean() > 10


def test_inpainting_latents_outside_follow_the_source(tiny_pipe, source, region):
    """Diffusers' latent blending: outside the region the final latents are the source's own (no paste needed)."""
    latents = _call(tiny_pipe, image=source, strength=0.8, mask_image=region, output_type="latent").images
    encoded = _call(tiny_pipe, image=source, strength=0.0, output_type="latent").images
    keep = 1 - _packed_region(tiny_pipe, region)
    assert torch.allclose(latents * keep, encoded * keep, atol=1e-5)


def _packed_region(pipe, region):
    from core.conditioning.edit import latent_region

    cells = latent_region(region, SIZE // 8, SIZE // 8)[None, None].expand(1, 16, SIZE // 8, SIZE // 8)
    return pipe._pack_latents(cells, 1, 16, SIZE // 8, SIZE // 8)


def test_a_character_without_a_mask_acts_in_the_region(tiny_pipe, source, region, monkeypatch):
    seen = []
    original = tiny_pipe._routing
    monkeypatch.setattr(tiny_pipe, "_routing", lambda chars, *a: seen.append(list(chars)) or original(chars, *a))
    mia = Character(Image.new("RGB", (32, 32), (200, 0, 0)), name="Mia")
    bob = Character(Image.new("RGB", (32, 32), (0, 0, 200)), name="Bob", mask="left")
    out = _call(tiny_pipe, prompt="[Mia] and [Bob]", characters=[mia, bob], image=source, strength=0.9,
                mask_image=region)
    placed = {c.name: c.mask for c in seen[0]}
    assert placed["Mia"] is region and placed["Bob"].label == "left"
    assert "the character acts in the inpainting region" in out.notes
    assert mia.mask is None  # the caller's character is not changed


def test_several_unmasked_characters_share_the_region(region):
    masks, notes = character_masks([None, None], region)
    left, right = (m.image > 0 for m in masks)
    assert not (left & right).any() and left.any() and right.any() and notes
    whole = (np.asarray(Image.fromarray(region.image).resize((256, 256))) > 0.5)
    assert ((left | right) <= whole).all()


def test_paste_alpha_is_a_feathered_edge(region):
    alpha = np.asarray(paste_alpha(region, SIZE, SIZE))
    assert (alpha[region.image > 0] == 255).all()
    assert ((alpha > 0) & (alpha < 255)).any()  # a soft edge
    assert (alpha[outside(region, SIZE, SIZE)] == 0).all()


def test_paste_back_is_exact_outside(source, region):
    generated = Image.new("RGB", source.size, (0, 255, 0))
    pasted = np.asarray(paste_back(generated, source, region))
    keep = outside(region, SIZE, SIZE)
    assert np.array_equal(pasted[keep], np.asarray(source)[keep])
    assert (pasted[region.image > 0] == (0, 255, 0)).all()


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_strength_outside_0_to_1(tiny_pipe, source, strength):
    with pytest.raises(GenerationInputError, match=r"strength=.*must be from 0 \(keep the source\) to 1 \(ignore it\)"):
        _call(tiny_pipe, image=source, strength=strength)


def test_strength_message_names_the_flag():
    with pytest.raises(EditError, match=r"^--strength=2\.0: must be from 0"):
        check_strength(2.0, "--strength")


def test_empty_region(tiny_pipe, source):
    with pytest.raises(GenerationInputError, match="the inpaint mask is empty: paint the area to redo"):
        _call(tiny_pipe, image=source, mask_image=RoutingMask.from_spec(np.zeros((SIZE, SIZE), np.float32)))


def test_source_that_is_not_an_image(tiny_pipe, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ImageInputError, match="the source image is not an image file Pillow can read"):
        _call(tiny_pipe, image=str(bad))


def test_mask_without_a_source(tiny_pipe, region):
    with pytest.raises(GenerationInputError, match="mask_image needs a source image"):
        _call(tiny_pipe, mask_image=region)


def test_source_and_mask_of_different_sizes_are_resized_with_a_note(tiny_pipe, source):
    small = Image.new("L", (16, 16), 0)
    small.paste(255, (4, 4, 10, 10))
    mask, notes = load_region(small, source.size)
    assert notes == ["the inpaint mask is 16x16, the source 64x64: the mask was resized to the source"]
    out = _call(tiny_pipe, image=source.resize((80, 48)), strength=0.5, mask_image=mask)
    assert "the source image is 80x48: resized to 64x64 (the output size)" in out.notes
    assert out.images[0].size == (SIZE, SIZE)


def test_fill_base_is_refused_plainly(source):
    stub = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(in_channels=384)),
                           vae=SimpleNamespace(config=SimpleNamespace(latent_channels=16)))
    with pytest.raises(GenerationInputError, match=r"takes 384 input channels \(FLUX.1 Fill\?\).*needs FLUX.1-dev"):
        InstantCharacterPipeline._edit_inputs(stub, source, 0.5, None, SIZE, SIZE)


def test_output_size_follows_the_source():
    assert output_size(Image.new("RGB", (100, 70))) == (96, 64)
    assert output_size(Image.new("RGB", (3000, 1500))) == (1024, 512)


@pytest.mark.slow
@pytest.mark.parametrize("preset", __import__("core.loading.memory", fromlist=["PRESET_ORDER"]).PRESET_ORDER)
def test_inpainting_under_every_memory_preset(tiny_models, source, region, preset):
    """Through the engine, as every surface runs it (on this CPU a preset's GPU placement is not exercised)."""
    from core.engine import Engine
    from core.request import GenerationRequest

    mia = Character(Image.new("RGB", (32, 32), (200, 0, 0)), name="Mia")
    result = Engine(str(tiny_models), preset=preset).generate(GenerationRequest(
        "[Mia] waves", characters=[mia], steps=4, width=SIZE, height=SIZE, seed=1, source_image=source,
        strength=0.75, inpaint_region=region))
    keep = outside(region, SIZE, SIZE)
    assert np.array_equal(np.asarray(result.images[0])[keep], np.asarray(source)[keep])
    assert result.records[0].edit["strength"] == 0.75

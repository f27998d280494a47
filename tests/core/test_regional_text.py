"""Regional text: the mask blocks what core.conditioning.regional_text's table says, in the mask and in a block's
hidden states; off is today's attention; on changes the image of two masked characters with descriptions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.conditioning.character import Character
from core.conditioning.regional_text import (RegionalText, RegionalTextError, RegionalTextMask, joint_attention_mask,
                                             masked_backend)

# text: 0 scene, 1-2 words of A, 3 words of B, 4 scene; image: 0-1 region A, 2-3 region B, 4-5 background
WORDS_A = torch.tensor([0, 1, 1, 0, 0], dtype=torch.bool)
WORDS_B = torch.tensor([0, 0, 0, 1, 0], dtype=torch.bool)
REGION_A = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
REGION_B = torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool)
T = 5


def _kind(index: int) -> str:
    if index < T:
        return "A words" if WORDS_A[index] else "B words" if WORDS_B[index] else "scene"
    i = index - T
    return "A image" if REGION_A[i] else "B image" if REGION_B[i] else "background"


ALLOWED = {  # (query, key) pairs the design lets through; everything else is blocked
    ("scene", "scene"), ("scene", "A image"), ("scene", "B image"), ("scene", "background"),
    ("A words", "A words"), ("A words", "A image"), ("B words", "B words"), ("B words", "B image"),
    ("A image", "scene"), ("A image", "A words"), ("B image", "scene"), ("B image", "B words"),
    ("background", "scene"),
} | {(a, b) for a in ("A image", "B image", "background") for b in ("A image", "B image", "background")}


def test_the_mask_is_the_documented_table():
    mask = joint_attention_mask([WORDS_A, WORDS_B], [REGION_A, REGION_B])
    assert mask.shape == (T + 6, T + 6) and mask.dtype == torch.bool
    for q in range(T + 6):
        for k in range(T + 6):
            assert bool(mask[q, k]) == ((_kind(q), _kind(k)) in ALLOWED), (q, k, _kind(q), _kind(k))
    assert torch.equal(mask, mask.T)  # both ways


def test_a_token_two_regions_reach_sees_both_characters_words():
    b_and_token_1 = REGION_B | torch.tensor([0, 1, 0, 0, 0, 0], dtype=torch.bool)
    mask = joint_attention_mask([WORDS_A, WORDS_B], [REGION_A, b_and_token_1])
    assert mask[T + 1, 1] and mask[T + 1, 3]  # image token 1 is in both regions
    assert mask[T + 0, 1] and not mask[T + 0, 3]


def test_settings_defaults_steps_and_blocks():
    s = RegionalText()
    assert (s.mode, s.steps, s.blocks, s.base_ratio) == ("auto", 0.4, "all", 0.0)
    assert s.masked_steps(24) == 10 and s.masked_steps(28) == 11 and s.masked_steps(1) == 1
    assert RegionalText(steps=0.0).masked_steps(28) == 0
    assert not s.active_for(1) and s.active_for(2)
    assert RegionalText("on").active_for(1) and not RegionalText("off").active_for(8)
    assert RegionalText(blocks="double").applies_to(0, False) and not RegionalText(blocks="double").applies_to(1, True)
    assert [RegionalText(blocks="alternate").applies_to(i, False) for i in range(4)] == [True, False, True, False]
    assert RegionalText.parse(RegionalText("on").to_json()) == RegionalText("on")
    assert RegionalText.parse(False).mode == "off" and RegionalText.parse(None).mode == "auto"


@pytest.mark.parametrize("value, message", [
    ("sometimes", "regional text 'sometimes': use one of auto, on, off"),
    ({"mode": "on", "steps": 1.5}, "regional text steps 1.5: must be a number from 0 to 1"),
    ({"blocks": "most"}, "regional text blocks 'most': use one of all, double, single, alternate"),
    ({"base_ratio": -0.1}, "regional text base ratio -0.1: must be a number from 0 to 1"),
    ({"colour": 1}, "regional text: unknown setting 'colour'"),
])
def test_bad_settings_say_which_in_one_line(value, message):
    with pytest.raises(RegionalTextError) as info:
        RegionalText.parse(value)
    assert str(info.value) == message


def test_backends_that_take_a_mask_keep_theirs_the_others_fall_back():
    assert masked_backend(None) is None
    for name in ("native", "_native_math", "_native_efficient", "_native_cudnn", "xformers"):
        assert masked_backend(name) == name
    for name in ("flash", "_flash_3", "flash_varlen", "sage", "_native_flash", "flex"):
        assert masked_backend(name) == "native"


# ------------------------------------------------------------------------------------------- in a real block
def _block_inputs(transformer, rows=2, cols=3, text=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    image = torch.randn(1, rows * cols, width, generator=g)
    words = torch.randn(1, text, width, generator=g)
    temb = torch.randn(1, width, generator=g)
    img_ids = torch.zeros(rows * cols, 3)
    img_ids[:, 1] = torch.arange(rows).repeat_interleave(cols).float()
    img_ids[:, 2] = torch.arange(cols).repeat(rows).float()
    rotary = transformer.pos_embed(torch.cat([torch.zeros(text, 3), img_ids]))
    return image, words, temb, rotary


@pytest.mark.parametrize("stream", ["double", "single"])
def test_one_characters_words_do_not_reach_the_other_region_in_a_masked_block(tiny_pipe, stream):
    transformer = tiny_pipe.transformer
    image, words, temb, rotary = _block_inputs(transformer)
    # words: 0 scene, 1-2 character A, 3 character B, 4 scene; image 2x3: A the left column, B the middle one
    region_a = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    region_b = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)
    mask = joint_attention_mask([WORDS_A, WORDS_B], [region_a, region_b])
    regional = RegionalTextMask(mask[None, None], T, RegionalText("on"))
    perturbed = words.clone()
    perturbed[:, 1:3] += 3.0 * torch.randn(1, 2, words.shape[-1], generator=torch.Generator().manual_seed(1))

    def run(text, kwargs):
        with torch.no_grad():
            if stream == "double":
                block = transformer.transformer_blocks[0]
                return block(image, text, temb, rotary, joint_attention_kwargs=kwargs)
            block = transformer.single_transformer_blocks[0]
            enc, img = block(image, text, temb, rotary, joint_attention_kwargs=kwargs)
            return enc, img

    enc0, img0 = run(words, {"regional_text": regional})
    enc1, img1 = run(perturbed, {"regional_text": regional})
    keep = ~region_a  # region B and the background
    assert torch.equal(img1[:, keep], img0[:, keep])
    assert not torch.allclose(img1[:, region_a], img0[:, region_a])  # A's region does hear A's words
    assert torch.equal(enc1[:, 3], enc0[:, 3])  # B's words
    assert torch.equal(enc1[:, [0, 4]], enc0[:, [0, 4]])  # the scene
    # without the mask the same perturbation reaches region B: the check above is not vacuous
    _, free0 = run(words, None)
    _, free1 = run(perturbed, None)
    assert not torch.allclose(free1[:, region_b], free0[:, region_b])


# ------------------------------------------------------------------------------------------- through the pipeline
def _two(descriptions=True, masks=("left", "right")):
    red = Character(Image.new("RGB", (40, 40), (200, 0, 0)), name="Red", mask=masks[0],
                    description="a red fox with a scarf" if descriptions else None)
    blue = Character(Image.new("RGB", (40, 40), (0, 0, 200)), name="Blue", mask=masks[1],
                     description="a blue robot" if descriptions else None)
    return [red, blue]


def _latents(pipe, characters, regional=None, **kwargs):
    args = dict(characters=characters, num_inference_steps=2, height=32, width=48, max_sequence_length=32,
                generator=torch.Generator().manual_seed(3), output_type="latent", **kwargs)
    if regional is not None:
        args["regional_text"] = regional
    return pipe("[Red] and [Blue] walk down a pier", **args)


def test_on_changes_the_image_of_two_masked_characters_with_descriptions(tiny_pipe):
    off = _latents(tiny_pipe, _two(), "off")
    auto = _latents(tiny_pipe, _two())
    on = _latents(tiny_pipe, _two(), "on")
    assert torch.equal(auto.images, on.images)  # two bound characters: auto is on
    assert not torch.allclose(on.images, off.images)
    assert any("regional text" in n for n in auto.notes) and not any("regional text" in n for n in off.notes)


def test_auto_is_off_with_fewer_than_two_bound_characters(tiny_pipe):
    one_region = _two(masks=("left", None))
    assert torch.equal(_latents(tiny_pipe, one_region).images, _latents(tiny_pipe, one_region, "off").images)
    unnamed = tiny_pipe("two friends on a pier", characters=_two(), num_inference_steps=1, height=32, width=48,
                        max_sequence_length=32, output_type="latent", generator=torch.Generator().manual_seed(3))
    assert not any("regional text" in n for n in unnamed.notes)


@pytest.mark.parametrize("settings", [RegionalText("on", blocks="double"), RegionalText("on", base_ratio=0.3),
                                      RegionalText("on", steps=0.0)])
def test_settings_reach_the_attention(tiny_pipe, settings):
    on = _latents(tiny_pipe, _two(), "on").images
    result = _latents(tiny_pipe, _two(), settings).images
    if settings.steps == 0:
        assert torch.equal(result, _latents(tiny_pipe, _two(), "off").images)
    else:
        assert not torch.equal(result, on)


def test_combines_with_true_cfg_and_a_batch(tiny_pipe):
    cfg = _latents(tiny_pipe, _two(), "on", negative_prompt="blurry", true_cfg_scale=2.0,
                   num_images_per_prompt=2)
    assert cfg.images.shape[0] == 2 and torch.isfinite(cfg.images).all()

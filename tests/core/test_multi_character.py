"""Several characters: routing masks reduce exactly to the released behaviour; prompt tags; masks of any shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.conditioning.character import Character
from core.conditioning.masks import MaskError, RoutingMask, normalize_overlaps, parse_layout
from core.conditioning.prompt import PromptError, resolve_prompt, token_indices


def _latents(pipe, case, characters, prompt=None):
    return pipe(
        prompt or case["prompt"], characters=characters, num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"], height=case["height"], width=case["width"],
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        max_sequence_length=case["max_sequence_length"], output_type="latent",
    ).images


@pytest.fixture(scope="module")
def subject_image(golden_dir, golden_case):
    return Image.open(golden_dir / golden_case["subject_image"]).convert("RGB")


@pytest.fixture(scope="module")
def single(golden_pipe, golden_case, subject_image):
    return _latents(golden_pipe, golden_case, [Character(subject_image, scale=0.9)])


def test_all_ones_mask_equals_no_mask_equals_reference(golden_pipe, golden_case, subject_image, single,
                                                       golden_expected):
    for mask in (Image.new("L", (37, 53), 255), "whole", (0.0, 0.0, 1.0, 1.0)):
        masked = _latents(golden_pipe, golden_case, [Character(subject_image, scale=0.9, mask=mask)])
        assert torch.equal(masked, single)
    assert np.abs(single.numpy() - golden_expected["latents_with_subject"]).max() < 1e-3


def test_zero_mask_character_is_like_leaving_it_out(golden_pipe, golden_case, subject_image, single):
    other = Character(Image.new("RGB", (64, 64), (0, 90, 200)), name="other", mask=Image.new("L", (20, 20), 0))
    result = golden_pipe(golden_case["prompt"], characters=[Character(subject_image, name="girl"), other],
                         num_inference_steps=golden_case["num_inference_steps"], height=32, width=32,
                         generator=torch.Generator("cpu").manual_seed(golden_case["seed"]),
                         max_sequence_length=64, output_type="latent")
    assert torch.equal(result.images, single)
    assert any("mask of [other] is empty" in note for note in result.notes)


def test_identical_characters_with_complementary_masks(golden_pipe, golden_case, subject_image, single):
    left = Character(subject_image, name="a", mask="left")
    right = Character(subject_image, name="b", mask="right")
    assert torch.equal(_latents(golden_pipe, golden_case, [left, right]), single)
    painted = Image.new("L", (300, 200), 0)
    painted.paste(255, (0, 0, 300, 100))  # top half painted, any resolution and aspect ratio
    top = Character(subject_image, name="a", mask=painted)
    bottom = Character(subject_image, name="b", mask="bottom")
    assert torch.equal(_latents(golden_pipe, golden_case, [top, bottom]), single)


def test_masks_follow_any_size_and_aspect(tiny_pipe):
    a = Character(Image.new("RGB", (40, 40), (200, 0, 0)), name="Ann", mask=Image.new("L", (123, 45), 255))
    b = Character(Image.new("RGB", (40, 40), (0, 0, 200)), name="Bob", mask="box:0.5,0,1,1")
    image = tiny_pipe("[Ann] and [Bob]", characters=[a, b], num_inference_steps=1, height=32, width=80).images[0]
    assert image.size == (80, 32)


def test_automatic_layout_follows_prompt_order(tiny_pipe):
    ann = Character(Image.new("RGB", (40, 40), (200, 0, 0)), name="Ann")
    bob = Character(Image.new("RGB", (40, 40), (0, 0, 200)), name="Bob")
    auto = tiny_pipe("[Bob] waves at [Ann]", characters=[ann, bob], num_inference_steps=1, height=32, width=32,
                     generator=torch.Generator().manual_seed(0), output_type="latent")
    assert any("left to right" in n for n in auto.notes)
    explicit = tiny_pipe("[Bob] waves at [Ann]",
                         characters=[Character(bob.image, name="Bob", mask="left"),
                                     Character(ann.image, name="Ann", mask="right")],
                         num_inference_steps=1, height=32, width=32, generator=torch.Generator().manual_seed(0),
                         output_type="latent")
    assert torch.equal(auto.images, explicit.images)


def test_mask_weights_are_area_averages():
    mask = RoutingMask.from_spec("box:0.25,0,0.75,1")
    assert mask.weights(1, 2).tolist() == [0.5, 0.5]
    soft = RoutingMask.from_spec(Image.new("L", (10, 10), 128))
    assert abs(float(soft.weights(2, 2)[0]) - 128 / 255) < 1e-6
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 2, 2))
    assert RoutingMask.from_spec(rgba).weights(1, 2).tolist() == [1.0, 0.0]
    assert parse_layout("grid:2x2:4") == (0.5, 0.5, 1.0, 1.0)
    total = sum(normalize_overlaps([torch.ones(4), torch.ones(4)]))
    assert torch.allclose(total, torch.ones(4))


@pytest.mark.parametrize("spec, needle", [
    ("box:0,0,1.2,1", "outside [0, 1]"),
    ("box:0.5,0.5,0.5,0.9", "is empty"),
    ("box:1,2", "four numbers"),
    ("middle", "unknown layout 'middle'"),
    ("grid:2x2:5", "does not exist"),
])
def test_bad_masks(spec, needle):
    with pytest.raises(MaskError) as exc:
        RoutingMask.from_spec(spec)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def _chars(*names):
    return [Character(Image.new("RGB", (32, 32)), name=n) for n in names]


def test_prompt_tags():
    resolved = resolve_prompt("[Ann] hugs [Bob], then [ann] smiles", _chars("Ann", "Bob"))
    assert resolved.text == "Ann hugs Bob, then Ann smiles"
    assert resolved.spans == {0: [(0, 3), (19, 22)], 1: [(9, 12)]}
    assert resolved.order == [0, 1]
    with pytest.raises(PromptError, match=r"names \[Zed\].*characters: \[Ann\], \[Bob\]"):
        resolve_prompt("[Zed] waves", _chars("Ann", "Bob"))
    notes = resolve_prompt("[Ann] alone", _chars("Ann", "Bob")).notes
    assert notes == ["[Bob] is never named in the prompt; it is still placed by its mask"]
    described = [Character(Image.new("RGB", (32, 32)), name="Ann", description="a red fox")]
    assert resolve_prompt("[Ann] runs", described).text == "a red fox runs"


def test_tag_tokens_are_recorded(tiny_pipe):
    resolved = resolve_prompt("a photo of [Ann] on a bike", _chars("Ann"))
    indices = token_indices(tiny_pipe.tokenizer_2, resolved.text, resolved.spans[0], 64)
    tokens = tiny_pipe.tokenizer_2(resolved.text)["input_ids"]
    assert tiny_pipe.tokenizer_2.decode([tokens[i] for i in indices]).strip() == "Ann"

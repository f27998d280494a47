"""External truth: our pipeline with control images and no character equals diffusers' ``FluxControlNetPipeline``
on the tiny models (stock FLUX components loaded afresh, a tiny ``FluxControlNetModel``), with one ControlNet,
two ControlNets, one net reading two images, step ranges, true CFG and image-to-image's neighbour (none: diffusers'
text-to-image ControlNet pipeline is the reference). float32 on the CPU: the same operations on the same inputs,
so exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel, FluxPipeline
from PIL import Image

from core.conditioning.control import ControlImage
from core.loading.tiny import build_tiny_controlnet
from core.models.pipeline import InstantCharacterPipeline

SIZE, STEPS = 64, 4


def _image(seed):
    return Image.fromarray((np.random.RandomState(seed).rand(SIZE, SIZE, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def stock(tiny_models):
    pipe = FluxPipeline.from_pretrained(str(tiny_models / "flux"), dtype=torch.float32)
    return pipe


@pytest.fixture(scope="module")
def ours(tiny_models):
    pipe = InstantCharacterPipeline.from_pretrained(str(tiny_models), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def nets():
    return build_tiny_controlnet(seed=3), build_tiny_controlnet(seed=4, num_single_layers=0)


def _reference(stock, controlnet, images, scales, start=0.0, end=1.0, **kwargs):
    ref = FluxControlNetPipeline(controlnet=controlnet, **{k: v for k, v in stock.components.items()
                                                         if k not in ("image_encoder", "feature_extractor")})
    ref.set_progress_bar_config(disable=True)
    single = not isinstance(controlnet, FluxMultiControlNetModel)
    out = {}
    for output_type in ("latent", "np"):
        out[output_type] = ref(prompt="a cat on a bike", control_image=images[0] if single else images,
                               controlnet_conditioning_scale=scales[0] if single else scales,
                               control_guidance_start=start, control_guidance_end=end, height=SIZE, width=SIZE,
                               num_inference_steps=STEPS, guidance_scale=3.5, output_type=output_type,
                               generator=torch.Generator("cpu").manual_seed(7), **kwargs).images
    return out


def _ours(ours, controlnet, controls, **kwargs):
    ours.load_controlnet(controlnet)
    try:
        return {output_type: ours(prompt="a cat on a bike", control=controls, height=SIZE, width=SIZE,
                                  num_inference_steps=STEPS, guidance_scale=3.5, output_type=output_type,
                                  generator=torch.Generator("cpu").manual_seed(7), **kwargs).images
                for output_type in ("latent", "np")}
    finally:
        ours.unload_controlnet()


def _assert_same(a, b):
    assert torch.equal(a["latent"], b["latent"])
    assert np.array_equal(a["np"], b["np"])


def test_one_controlnet_equals_diffusers(stock, ours, nets):
    image = _image(1)
    expected = _reference(stock, nets[0], [image], [0.7])
    got = _ours(ours, nets[0], [ControlImage(image, "pose", 0.7)])
    _assert_same(got, expected)
    plain = ours(prompt="a cat on a bike", height=SIZE, width=SIZE, num_inference_steps=STEPS,
                 output_type="latent", generator=torch.Generator("cpu").manual_seed(7)).images
    assert (plain - got["latent"]).abs().max() > 1e-3  # the control changed the image


def test_two_controlnets_equal_diffusers_multi(stock, ours, nets):
    images = [_image(1), _image(2)]
    multi = FluxMultiControlNetModel(list(nets))
    expected = _reference(stock, multi, images, [0.6, 0.4], start=[0.0, 0.25], end=[0.75, 1.0])
    got = _ours(ours, multi, [ControlImage(images[0], "pose", 0.6, 0.0, 0.75),
                              ControlImage(images[1], "depth", 0.4, 0.25, 1.0)])
    _assert_same(got, expected)


def test_one_net_reading_two_images_equals_diffusers(stock, ours, nets):
    images = [_image(1), _image(2)]
    # the step ranges as lists: given single numbers, diffusers makes one range per *net* and its zip with the
    # scales then drops the second image (only the first would act); with a range per image it reads both
    expected = _reference(stock, FluxMultiControlNetModel([nets[0]]), images, [0.5, 0.8], start=[0.0, 0.0],
                          end=[1.0, 1.0])
    got = _ours(ours, nets[0], [ControlImage(images[0], "pose", 0.5), ControlImage(images[1], "canny", 0.8)])
    _assert_same(got, expected)


def test_step_range_and_true_cfg_equal_diffusers(stock, ours, nets):
    image = _image(3)
    expected = _reference(stock, nets[0], [image], [0.9], start=0.25, end=0.5, negative_prompt="blurry",
                          true_cfg_scale=2.0)
    got = _ours(ours, nets[0], [ControlImage(image, "depth", 0.9, 0.25, 0.5)], negative_prompt="blurry",
                true_cfg_scale=2.0)
    _assert_same(got, expected)

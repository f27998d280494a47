"""Per-character work runs once per character image, not once per step or per call."""

from __future__ import annotations

import torch
from PIL import Image

from core.conditioning.character import Character


class _Counter:
    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


def test_character_work_is_not_repeated(tiny_pipe):
    pipe = tiny_pipe
    pipe.clear_caches()
    siglip = _Counter(pipe.siglip)
    dinov2 = _Counter(pipe.dinov2)
    stacks = _Counter(pipe.image_proj.cross_layer_blocks[0])
    resampler = _Counter(pipe.image_proj.resampler)
    transformer = _Counter(pipe.transformer)
    character = Character(Image.new("RGB", (80, 60), (200, 30, 30)), scale=0.8)
    steps = 3
    for seed in (1, 2):
        pipe("a red thing", characters=[character], num_inference_steps=steps, height=32, width=32,
             generator=torch.Generator().manual_seed(seed), output_type="latent")
    # one encoding per image set: a low-res call and a four-crop call per encoder, on the first call only
    assert siglip.count == 2 and dinov2.count == 2
    assert stacks.count == 1  # the timestep-independent projector ran once in all
    assert resampler.count == 2 * steps  # once per step per call
    assert transformer.count == 2 * steps
    # a new Character object with the same pixels hits the cache too
    same = Character(character.image.copy())
    pipe("a red thing", characters=[same], num_inference_steps=1, height=32, width=32, output_type="latent")
    assert siglip.count == 2 and stacks.count == 1


def test_prompt_embeddings_are_reused(tiny_pipe):
    pipe = tiny_pipe
    pipe.clear_caches()
    t5 = _Counter(pipe.text_encoder_2)
    for seed in (1, 2, 3):
        pipe("the same prompt", num_inference_steps=1, height=32, width=32,
             generator=torch.Generator().manual_seed(seed), output_type="latent")
    assert t5.count == 1

"""The text adapter: zero-initialized output (no change until trained), save/load, trainable through FLUX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.attention import CharacterCondition
from core.conditioning.character import Character
from core.models.text_adapter import (
    TextAdapter,
    TextAdapterConfig,
    TextAdapterError,
    text_adapter_parameter_count,
)

SMALL = dict(dim=64, depth=1, num_queries=4, token_dim=32)


def test_untrained_text_adapter_changes_nothing(golden_pipe, golden_dir, golden_case, golden_expected):
    subject = Character(Image.open(golden_dir / golden_case["subject_image"]), name="girl", scale=0.9)
    kwargs = dict(num_inference_steps=4, height=32, width=32, guidance_scale=3.5, max_sequence_length=64,
                  output_type="latent")
    prompt = "a [girl] riding a bike in the snow"  # the tag resolves to the golden prompt
    without = golden_pipe(prompt, characters=[subject], generator=torch.Generator().manual_seed(42), **kwargs)
    assert without.prompt == golden_case["prompt"]
    golden_pipe.load_text_adapter(TextAdapter(TextAdapterConfig.for_pipeline(golden_pipe, **SMALL)))
    try:
        calls = []
        hook = golden_pipe.text_adapter.register_forward_hook(lambda *a: calls.append(1))
        with_adapter = golden_pipe(prompt, characters=[subject], generator=torch.Generator().manual_seed(42), **kwargs)
        hook.remove()
    finally:
        golden_pipe.unload_text_adapter()
    assert calls, "the text adapter must run"
    assert torch.equal(with_adapter.images, without.images)
    assert np.abs(with_adapter.images.numpy() - golden_expected["latents_with_subject"]).max() < 1e-3


def test_save_and_load_round_trip(tmp_path, tiny_pipe):
    adapter = TextAdapter(TextAdapterConfig.for_pipeline(tiny_pipe, **SMALL))
    torch.nn.init.normal_(adapter.layers[0].to_out.weight)
    path = adapter.save(tmp_path / "text.safetensors")
    assert (tmp_path / "text.json").is_file()
    loaded = TextAdapter.load(path)
    assert loaded.config == adapter.config
    for (k, a), b in zip(adapter.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_text_adapter_files(tmp_path, tiny_models):
    with pytest.raises(TextAdapterError, match="not found"):
        TextAdapter.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(TextAdapterError, match="not a readable safetensors"):
        TextAdapter.load(junk)
    with pytest.raises(TextAdapterError, match="not an InstantCharacter text adapter"):
        TextAdapter.load(tiny_models / "adapter.safetensors")


def test_text_adapter_for_another_model_is_refused(tiny_pipe, golden_pipe):
    adapter = TextAdapter(TextAdapterConfig.for_pipeline(golden_pipe, **SMALL))
    with pytest.raises(TextAdapterError, match="SigLIP"):
        tiny_pipe.load_text_adapter(adapter)


def test_gradients_reach_the_text_adapter_through_flux(tiny_pipe):
    pipe = tiny_pipe
    adapter = TextAdapter(TextAdapterConfig.for_pipeline(pipe, **SMALL))
    pipe.load_text_adapter(adapter)
    try:
        character = Character(Image.new("RGB", (40, 40), (200, 30, 30)), name="Ann")
        with torch.no_grad():
            embeds, pooled, text_ids = pipe.encode_prompt("a photo of Ann", prompt_2=None, max_sequence_length=16)
            latents, image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, 32, 32,
                                                      embeds.dtype, "cpu", torch.Generator().manual_seed(0), None)
        features = pipe.encode_character(character)
        context = pipe.character_context(character).clone()
        siglip = features.low_res_deep[..., : pipe.siglip.config.hidden_size].clone()
        text_mask = torch.zeros(1, embeds.shape[1])
        text_mask[0, 1:4] = 1.0

        def loss():
            t = torch.tensor([500.0])
            tokens = pipe.image_proj(context=context, timestep=t)
            cond = CharacterCondition(tokens, 0.9, None, adapter(siglip, t), text_mask)
            out = pipe.transformer(hidden_states=latents, timestep=t / 1000, guidance=torch.tensor([3.5]),
                                   pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                   img_ids=image_ids, joint_attention_kwargs={"character_conditions": [cond],
                                                                              "text_seq_len": embeds.shape[1]},
                                   return_dict=False)[0]
            return out.pow(2).mean()

        loss().backward()
        assert adapter.layers[0].to_out.weight.grad.abs().sum() > 0
        # once the zero output projection has moved, gradients flow back into the Q-Former as well
        with torch.no_grad():
            adapter.layers[0].to_out.weight.normal_(std=0.1)
        adapter.zero_grad()
        loss().backward()
        assert adapter.qformer.latents.grad.abs().sum() > 0
        assert adapter.layers[0].to_k.weight.grad.abs().sum() > 0
    finally:
        pipe.unload_text_adapter()


def test_full_size_parameter_count():
    count = text_adapter_parameter_count()
    print(f"text adapter parameters at full size: {count:,}")
    assert 250e6 < count < 400e6

"""FLUX parts written in the layouts ComfyUI and Forge users hold, built from the libraries' own conversions.

Why these are references and not our own writer agreeing with our own reader:

- VAE (BFL/ldm ``ae.safetensors``): diffusers ships the ldm -> diffusers direction only
  (``convert_ldm_vae_checkpoint``, with its table ``DIFFUSERS_TO_LDM_MAPPING["vae"]`` and the block renames of
  ``update_vae_resnet_ldm_to_diffusers`` / ``update_vae_attentions_ldm_to_diffusers``). :func:`vae_to_ldm` applies
  that table and those renames backwards (attention projections as the ldm 1x1 convolutions), then runs diffusers'
  own converter on the result and requires it to give back every tensor exactly: the file is, by diffusers' own
  definition, an ldm-layout VAE.
- CLIP-L (``clip_l.safetensors``): transformers' own reverse conversion (``revert_weight_conversion`` with the
  ``CLIPTextModel`` conversion mapping, whose ``PrefixChange("text_model")`` is how transformers 5 reads the
  ``text_model.``-prefixed checkpoints everyone has).
- T5-XXL (``t5xxl_fp16.safetensors``): transformers' ``revert_weight_conversion`` of ``T5EncoderModel``; the
  token embedding kept once, as ``shared.weight``. The fp8 file casts its 2-D weights to ``float8_e4m3fn``, as
  ``t5xxl_fp8_e4m3fn.safetensors`` stores them (a dtype change, no layout of ours).
- Transformer: the BFL layout of :func:`core.loading.single_file.write_transformer_file`, which issue 12 checked
  against diffusers' own ``convert_flux_transformer_checkpoint_to_diffusers`` at FLUX's width (that converter
  hard-codes width 3072, so it cannot read the tiny model itself).
- All-in-one (Comfy-Org's ``flux1-dev-fp8.safetensors``): the four above under the prefixes diffusers'
  ``single_file_utils`` knows: ``model.diffusion_model.`` (LDM_UNET_KEY), ``vae.`` (LDM_VAE_KEYS),
  ``text_encoders.clip_l.transformer.`` (CHECKPOINT_KEY_NAMES["clip_sd3"]) and ``text_encoders.t5xxl.transformer.``
  (``is_t5_in_single_file``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.loading.single_file import _bfl_state_dict


def vae_to_ldm(vae) -> dict:
    """A diffusers ``AutoencoderKL``'s tensors under the ldm names diffusers' converter reads (checked)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_ldm_vae_checkpoint

    config = dict(vae.config)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(config["up_block_types"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, tensor in sd.items():
        if key in top:
            out[top[key]] = tensor
            continue
        new = key.replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", r"encoder.down.\1.downsample.conv", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets",
                     lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.block", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv",
                     lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m.group(1)) + 1}", new)
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ours, ldm in attention.items():
                new = new.replace(f".{ours}.", f".{ldm}.")
            if tensor.ndim == 2:  # ldm's attention projections are 1x1 convolutions
                tensor = tensor[:, :, None, None].contiguous()
        out[new] = tensor
    back = convert_ldm_vae_checkpoint(dict(out), config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd), \
        "diffusers' converter does not read the ldm layout back"
    return out


def clip_to_original(clip) -> dict:
    """A ``CLIPTextModel``'s tensors as ``clip_l.safetensors`` holds them (transformers' reverse conversion)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import revert_weight_conversion

    clip._weight_conversions = get_model_conversion_mapping(clip, add_legacy=False)  # as from_pretrained sets it
    out = revert_weight_conversion(clip, clip.state_dict())
    assert all(k.startswith("text_model.") for k in out)
    return {k: v.contiguous() for k, v in out.items()}


def t5_to_original(t5, dtype=None) -> dict:
    """A ``T5EncoderModel``'s tensors as ``t5xxl_*.safetensors`` holds them; ``dtype`` float8_e4m3fn casts the 2-D
    weights (the fp8 files), another dtype every tensor (fp16/bf16 files)."""
    from transformers.core_model_loading import revert_weight_conversion

    out = dict(revert_weight_conversion(t5, t5.state_dict()))
    out.pop("encoder.embed_tokens.weight", None)  # the same tensor as shared.weight, stored once
    if dtype == torch.float8_e4m3fn:
        out = {k: v.to(dtype) if v.ndim == 2 else v for k, v in out.items()}
    elif dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


def all_in_one(transformer, vae, clip, t5, dtype=None) -> dict:
    """Every part under the prefixes of an all-in-one checkpoint (Comfy-Org's layout); ``dtype`` float8_e4m3fn
    makes the transformer's and T5's 2-D weights fp8 as in ``flux1-dev-fp8.safetensors``."""
    bfl = _bfl_state_dict(transformer)
    if dtype == torch.float8_e4m3fn:
        bfl = {k: v.to(dtype) if v.ndim == 2 else v for k, v in bfl.items()}
    out = {f"model.diffusion_model.{k}": v for k, v in bfl.items()}
    out.update({f"vae.{k}": v for k, v in vae_to_ldm(vae).items()})
    out.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_to_original(clip).items()})
    out.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5_to_original(t5, dtype).items()})
    return out


def write(tensors: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return path


def write_t5_gguf(t5, path: Path, qtype: str = "Q8_0") -> Path:
    """A ``T5EncoderModel`` as a T5 encoder GGUF (city96's ``t5-v1_1-xxl-encoder-Q8_0.gguf`` layout): tensor names
    from gguf-py's own T5-encoder name map (the table llama.cpp's converter applies), 2-D weights quantized by
    gguf-py's quantizer where their rows allow, the rest float32, and the metadata transformers' GGUF reader needs
    to rebuild the config (so transformers' own ``from_pretrained(gguf_file=...)`` can read the file as a check)."""
    import gguf
    import numpy as np

    config = t5.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, config.num_layers)
    quant = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[quant][0]
    writer = gguf.GGUFWriter(str(path), arch="t5encoder")
    writer.add_name("t5-v1_1-tiny-encoder")
    writer.add_context_length(512)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_key_length(config.d_kv)
    writer.add_value_length(config.d_kv)
    writer.add_layer_norm_rms_eps(config.layer_norm_epsilon)
    writer.add_relative_attn_buckets_count(config.relative_attention_num_buckets)
    writer.add_vocab_size(config.vocab_size)
    for key, tensor in t5.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue  # the same tensor as shared.weight (token_embd)
        name = names.get_name(key.removesuffix(".weight")) + ".weight"
        array = tensor.detach().float().numpy()
        if array.ndim == 2 and array.shape[1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, quant), raw_dtype=quant)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

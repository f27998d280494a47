"""FLUX attention processors that inject characters into the image tokens (the checkpoint's ``ip_adapter``).

Every FLUX attention layer (19 double-stream, then 38 single-stream blocks in FLUX.1-dev) gets one
:class:`CharacterAttnProcessor`. It computes the layer's usual joint attention exactly as diffusers'
``FluxAttnProcessor`` does, then, for the image tokens, adds for each character ``i``::

    H += M_i * scale_i * Attn(norm_ip_q(Q_raw), norm_ip_k(to_k_ip(c_i)), to_v_ip(c_i))

where ``Q_raw`` is the image tokens' ``to_q`` output split into heads, before the layer's own query norm and
without rotary embedding, ``c_i`` the character's per-step tokens and ``M_i`` its optional routing mask over the
image tokens (paper Eq. 3). Each character attends only among its own tokens. With one unmasked character this
is the released computation. Double-stream layers add before ``to_out``; single-stream layers to the image part.

Per-region work: a masked character's attention runs only for the image tokens its mask reaches (weight above 0,
soft edges included) and is scattered back; elsewhere ``M_i`` is 0, so the sum is the same. Each row of an
attention depends on its own query only, so this equals attending from every token within float error (the
kernels may block a shorter query differently; measured equal on the CPU). The character's K/V are computed once
per layer and step: from batch-1 tokens they are broadcast to every image of the batch, and a condition's
``kv_cache`` (shared by the true-CFG passes of a step) hands them from the first pass to the second.

Regional text (:mod:`core.conditioning.regional_text`): with a ``regional_text`` mask, the layers it applies to
run the joint attention under that mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections
from torch import nn

from core.conditioning.regional_text import RegionalTextMask, masked_backend


@dataclass
class CharacterCondition:
    """One character's input to the attention layers for one denoising step (built by the engine and the trainer
    from :func:`core.conditioning.routing.route_characters`).

    Attributes:
        tokens: character tokens (B, Q, D) from the projector's resampler; always given.
        scale: strength of the character (the released default is 0.9).
        mask: routing weights over the packed image tokens, (B or 1, N_image); ``None`` means the whole image (the
            same result as all ones, without the multiply).
        text_tokens: the text adapter's tokens for this step (B, Q_T, D_T), or ``None`` without a text adapter.
        text_mask: weights over the text tokens, 1 on the tokens that came from the character's tag (B or 1, L);
            ``None``: the text tokens are left alone (so are they without ``text_tokens``).
        reach: indices (K,) of the image tokens ``mask`` reaches (:func:`mask_reach`): the attention runs for
            those only; ``None``: for every image token (then multiplied by ``mask``).
        kv_cache: a dict shared by the conditions of one step's passes (true CFG): the first pass stores each
            layer's K/V of these tokens, the second takes them; ``None``: computed in every pass.
    """

    tokens: torch.Tensor
    scale: float = 1.0
    mask: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    reach: torch.Tensor | None = None
    kv_cache: dict | None = None

    def __post_init__(self):
        if not isinstance(self.tokens, torch.Tensor):
            raise TypeError(f"a character condition needs its image tokens, got {type(self.tokens).__name__}")
        # the scale as a 0-dim tensor: a compiled block reads it as an input, not as a constant to recompile for
        # (multiplying by it rounds exactly as multiplying by the Python float does)
        self.scale_tensor = torch.tensor(float(self.scale), dtype=torch.float32)


def mask_reach(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Indices of the image tokens where routing weights ``mask`` ((B or 1, N) or (N,)) are above 0 in any row;
    ``None`` when that is every token (or there is no mask)."""
    if mask is None:
        return None
    reached = (mask > 0).reshape(-1, mask.shape[-1]).any(0)
    return None if bool(reached.all()) else reached.nonzero().squeeze(1)


class RMSNorm(nn.Module):
    """``scale * x / (||x||_2 / sqrt(d) + eps)`` over the last dimension (eps outside the square root)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5
        return self.scale * (x / (rms + self.eps))


class CharacterAttnProcessor(nn.Module):
    """Joint FLUX attention plus masked character attention for the image tokens.

    Args:
        hidden_size: the FLUX attention width (heads x head size; 3072 in FLUX.1-dev).
        token_dim: width of the character tokens (4096 in the released model).
        head_dim: FLUX attention head size (128).
    """

    _attention_backend = None
    _parallel_config = None
    text_injection = None  # set by core.models.text_adapter.TextAdapter.install on double-stream layers

    def __init__(self, hidden_size: int, token_dim: int, head_dim: int = 128, layer_index: int = 0):
        super().__init__()
        self.layer_index = layer_index  # position among the transformer's attention layers (regional text)
        self.norm_ip_q = RMSNorm(head_dim)
        self.to_k_ip = nn.Linear(token_dim, hidden_size)
        self.norm_ip_k = RMSNorm(head_dim)
        self.to_v_ip = nn.Linear(token_dim, hidden_size)

    def character_kv(self, attn, cond: CharacterCondition, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The character's (key, value), each (B_tokens, Q, heads, head_dim), from ``cond.kv_cache`` when an
        earlier pass of the step left them there."""
        cache = cond.kv_cache
        found = cache.pop(id(self), None) if cache is not None else None
        if found is not None and found[0].dtype == dtype:
            return found
        tokens = cond.tokens.to(dtype)
        key = self.norm_ip_k(self.to_k_ip(tokens).unflatten(-1, (-1, attn.head_dim)))
        value = self.to_v_ip(tokens).unflatten(-1, (-1, attn.head_dim))
        if cache is not None:
            cache[id(self)] = (key, value)
        return key, value

    def character_attention(self, attn, raw_query: torch.Tensor, conditions) -> torch.Tensor | None:
        """Sum over characters of their weighted attention outputs, (B, N_image, heads * head_dim)."""
        if not conditions:
            return None
        query = self.norm_ip_q(raw_query)
        batch = query.shape[0]
        total = None
        for cond in conditions:
            key, value = self.character_kv(attn, cond, query.dtype)
            if key.shape[0] != batch:  # batch-1 tokens: the same K/V for every image
                key, value = key.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1)
            reach = cond.reach
            if reach is not None and reach.device != query.device:
                reach = reach.to(query.device)
            q = query if reach is None else query.index_select(1, reach)
            out = dispatch_attention_fn(q, key, value, backend=self._attention_backend)
            out = out.flatten(2, 3).to(raw_query.dtype) * cond.scale_tensor
            if cond.mask is not None:
                mask = cond.mask if reach is None else cond.mask.index_select(1, reach.to(cond.mask.device))
                out = out * mask[..., None].to(out.dtype)
            if reach is not None:
                # adding exact zeros where the mask is 0 is what the multiply by M_i did there
                base = torch.zeros_like(raw_query.flatten(2, 3)) if total is None else total
                out = base.index_add(1, reach, out)
                total = out
            else:
                total = out if total is None else total + out
        return total

    def regional_attention(self, query, key, value, regional_text: RegionalTextMask) -> torch.Tensor:
        """The joint attention under the regional-text mask, the image tokens blended with an unmasked pass by
        the base ratio; (B, T+N, heads, head_dim)."""
        mask = regional_text.mask.to(query.device)
        masked = dispatch_attention_fn(query, key, value, attn_mask=mask,
                                       backend=masked_backend(self._attention_backend))
        ratio = regional_text.settings.base_ratio
        if ratio <= 0:
            return masked
        text_len = regional_text.text_len
        plain = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                      parallel_config=self._parallel_config)
        image = (1 - ratio) * masked[:, text_len:] + ratio * plain[:, text_len:].to(masked.dtype)
        return torch.cat([masked[:, :text_len], image], dim=1)

    def inject_text(self, raw_text_query, text_out, conditions):
        """Adds each character's text-adapter output to the text tokens of its tag (paper Eq. 4)."""
        for cond in conditions:
            if cond.text_tokens is None or cond.text_mask is None:
                continue
            update = self.text_injection(raw_text_query, cond.text_tokens, backend=self._attention_backend)
            text_out = text_out + update * cond.text_mask[..., None].to(update.dtype)
        return text_out

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        character_conditions: list[CharacterCondition] | None = None,
        text_seq_len: int | None = None,
        regional_text: RegionalTextMask | None = None,
    ):
        """Args beyond diffusers' processor signature (passed through ``joint_attention_kwargs``):

        character_conditions: the characters for this step (empty or ``None``: plain FLUX attention).
        text_seq_len: number of text tokens at the front of single-stream ``hidden_states``.
        regional_text: the joint attention mask binding characters' words to their regions for this step
            (``None``: unmasked, today's attention).
        """
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        single_stream = encoder_hidden_states is None
        raw_image_query = query[:, text_seq_len:] if single_stream else query

        query = attn.norm_q(query)
        key = attn.norm_k(key)
        raw_text_query = None if single_stream else encoder_query.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if regional_text is not None and attention_mask is None and regional_text.applies_to(self.layer_index,
                                                                                               single_stream):
            hidden_states = self.regional_attention(query, key, value, regional_text)
        else:
            hidden_states = dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        extra = self.character_attention(attn, raw_image_query, character_conditions)

        if single_stream:
            if extra is not None:
                if text_seq_len is None:
                    raise ValueError("text_seq_len is required in single-stream layers when characters are given")
                hidden_states = torch.cat([hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:] + extra], 1)
            return hidden_states

        text_len = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states[:, :text_len], hidden_states[:, text_len:]
        if extra is not None:
            hidden_states = hidden_states + extra
        if self.text_injection is not None and character_conditions:
            encoder_hidden_states = self.inject_text(raw_text_query, encoder_hidden_states, character_conditions)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states


class CharacterAttentionLayers(nn.ModuleList):
    """One :class:`CharacterAttnProcessor` per FLUX attention layer, in ``transformer.attn_processors`` order.

    The state dict keys are ``{n}.to_k_ip.weight`` etc., as in the released ``ip_adapter`` entry.
    """

    def __init__(self, num_layers: int, hidden_size: int, token_dim: int, head_dim: int = 128):
        super().__init__(CharacterAttnProcessor(hidden_size, token_dim, head_dim, layer_index=n)
                         for n in range(num_layers))

    def install(self, transformer) -> None:
        """Sets these processors on every attention layer of a ``FluxTransformer2DModel``."""
        names = list(transformer.attn_processors.keys())
        if len(names) != len(self):
            raise ValueError(
                f"the adapter has {len(self)} attention layers but the base model has {len(names)}: "
                "this adapter was made for another base model"
            )
        transformer.set_attn_processor(dict(zip(names, self)))


def transformer_attention_layout(transformer) -> tuple[int, int, int]:
    """(number of attention layers, attention width, head size) of a FLUX transformer."""
    cfg = transformer.config
    return (cfg.num_layers + cfg.num_single_layers, cfg.num_attention_heads * cfg.attention_head_dim,
            cfg.attention_head_dim)

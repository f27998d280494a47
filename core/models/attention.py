"""FLUX attention processors that inject characters into the image tokens (the checkpoint's ``ip_adapter``).

Every FLUX attention layer (19 double-stream, then 38 single-stream blocks in FLUX.1-dev) gets one
:class:`CharacterAttnProcessor`. It computes the layer's usual joint attention exactly as diffusers'
``FluxAttnProcessor`` does, then, for the image tokens, adds for each character ``i``::

    H += M_i * scale_i * Attn(norm_ip_q(Q_raw), norm_ip_k(to_k_ip(c_i)), to_v_ip(c_i))

where ``Q_raw`` is the image tokens' ``to_q`` output split into heads, before the layer's own query norm and
without rotary embedding, ``c_i`` the character's per-step tokens and ``M_i`` its optional routing mask over the
image tokens (paper Eq. 3). Each character attends only among its own tokens. With one unmasked character this
is the released computation. Double-stream layers add before ``to_out``; single-stream layers to the image part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections
from torch import nn


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
    """

    tokens: torch.Tensor
    scale: float = 1.0
    mask: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.tokens, torch.Tensor):
            raise TypeError(f"a character condition needs its image tokens, got {type(self.tokens).__name__}")
        # the scale as a 0-dim tensor: a compiled block reads it as an input, not as a constant to recompile for
        # (multiplying by it rounds exactly as multiplying by the Python float does)
        self.scale_tensor = torch.tensor(float(self.scale), dtype=torch.float32)


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

    def __init__(self, hidden_size: int, token_dim: int, head_dim: int = 128):
        super().__init__()
        self.norm_ip_q = RMSNorm(head_dim)
        self.to_k_ip = nn.Linear(token_dim, hidden_size)
        self.norm_ip_k = RMSNorm(head_dim)
        self.to_v_ip = nn.Linear(token_dim, hidden_size)

    def character_attention(self, attn, raw_query: torch.Tensor, conditions) -> torch.Tensor | None:
        """Sum over characters of their weighted attention outputs, (B, N_image, heads * head_dim)."""
        if not conditions:
            return None
        query = self.norm_ip_q(raw_query)
        total = None
        for cond in conditions:
            tokens = cond.tokens.to(query.dtype)
            key = self.norm_ip_k(self.to_k_ip(tokens).unflatten(-1, (-1, attn.head_dim)))
            value = self.to_v_ip(tokens).unflatten(-1, (-1, attn.head_dim))
            out = dispatch_attention_fn(query, key, value, backend=self._attention_backend)
            out = out.flatten(2, 3).to(raw_query.dtype) * cond.scale_tensor
            if cond.mask is not None:
                out = out * cond.mask[..., None].to(out.dtype)
            total = out if total is None else total + out
        return total

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
    ):
        """Args beyond diffusers' processor signature (passed through ``joint_attention_kwargs``):

        character_conditions: the characters for this step (empty or ``None``: plain FLUX attention).
        text_seq_len: number of text tokens at the front of single-stream ``hidden_states``.
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
        super().__init__(CharacterAttnProcessor(hidden_size, token_dim, head_dim) for _ in range(num_layers))

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

"""The InstantCharacter image projector (the released checkpoint's ``image_proj``).

Two stacks of transformer blocks refine the low-res deep features: the cross-layer stack cross-attends to the
shallow features, the cross-scale stack to the high-res crops. Their outputs, with an MLP of the deep features,
form the timestep-independent ``context`` tokens. A timestep-aware perceiver resampler then maps the context to a
fixed number of query tokens of the FLUX text width, once per denoising step.

Parameter names equal the released state dict's keys, so loading is ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

HEAD_DIM = 64  # head size of the projector and resampler attention in the released model
TIMESTEP_CHANNELS = 320


@dataclass(frozen=True)
class ProjectorConfig:
    """Sizes of the projector; all are inferable from a checkpoint's tensor shapes.

    Released full-size values in parentheses.
    """

    inner_dim: int = 2688  # SigLIP width + DINOv2 width (1152 + 1536)
    num_layers: int = 4  # blocks per stack (cross-layer and cross-scale)
    resampler_dim: int = 1280
    resampler_depth: int = 4
    num_queries: int = 1024
    output_dim: int = 4096  # FLUX joint attention (T5) width
    ff_mult: int = 4
    timestep_channels: int = TIMESTEP_CHANNELS

    def to_dict(self) -> dict:
        return asdict(self)


class Mlp(nn.Module):
    """Two linear layers with a tanh-approximated GELU between them (hidden = 2x width)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PerceiverAttention(nn.Module):
    """Latent queries attend to ``[inputs, latents]``; the normalized latents are modulated by adaLN shift/scale."""

    def __init__(self, dim: int, heads: int, head_dim: int = HEAD_DIM):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x, latents, shift, scale):
        x = self.norm1(x)
        latents = self.norm2(latents) * (1 + scale[:, None]) + shift[:, None]
        q = self._split_heads(self.to_q(latents))
        k, v = (self._split_heads(t) for t in self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1))
        # scaling q and k by head_dim ** -0.25 each keeps the logits small in half precision
        s = 1 / math.sqrt(math.sqrt(self.head_dim))
        weights = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).flatten(2)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # indices 0..3 are the checkpoint's key names: 0 LayerNorm, 1 Linear, 2 GELU, 3 Linear
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class TimeResampler(nn.Module):
    """Perceiver resampler conditioned on the diffusion timestep (0-1000 scale).

    Input (B, L, embedding_dim) -> output (B, num_queries, output_dim).
    """

    def __init__(self, embedding_dim: int, dim: int, depth: int, num_queries: int, output_dim: int,
                 ff_mult: int = 4, timestep_channels: int = TIMESTEP_CHANNELS):
        super().__init__()
        if dim < HEAD_DIM:
            raise ValueError(f"a resampler of width {dim} has no attention head: its width must be at least {HEAD_DIM}")
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, heads=dim // HEAD_DIM),
                _feed_forward(dim, ff_mult),
                nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim)),  # adaLN: shift/scale for attention and FF
            ])
            for _ in range(depth)
        )
        self.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(timestep_channels, dim, act_fn="silu")

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_embedding(self.time_proj(timestep).to(x.dtype))
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x) + temb[:, None]
        for attn, ff, ada_ln in self.layers:
            shift_attn, scale_attn, shift_ff, scale_ff = ada_ln(temb).chunk(4, dim=1)
            latents = latents + attn(x, latents, shift_attn, scale_attn)
            norm, rest = ff[0], ff[1:]
            latents = latents + rest(norm(latents) * (1 + scale_ff[:, None]) + shift_ff[:, None])
        return self.norm_out(self.proj_out(latents))


class CharacterProjector(nn.Module):
    """The full ``image_proj``: encoder features -> per-step character tokens.

    Use :meth:`context` once per character image (timestep-independent) and :meth:`resample` once per step.
    """

    def __init__(self, config: ProjectorConfig = ProjectorConfig()):
        super().__init__()
        self.config = config
        d = config.inner_dim

        def stack():
            return nn.ModuleList(
                BasicTransformerBlock(d, d // HEAD_DIM, HEAD_DIM, cross_attention_dim=d, activation_fn="geglu",
                                      attention_bias=False, norm_eps=1e-6, ff_bias=True, attention_out_bias=True)
                for _ in range(config.num_layers)
            )

        self.cross_layer_blocks = stack()
        self.cross_scale_blocks = stack()
        self.proj = Mlp(d, 2 * d)
        self.proj_cross_layer = Mlp(d, 2 * d)
        self.proj_cross_scale = Mlp(d, 2 * d)
        self.resampler = TimeResampler(d, config.resampler_dim, config.resampler_depth, config.num_queries,
                                       config.output_dim, config.ff_mult, config.timestep_channels)

    @property
    def device(self) -> torch.device:
        return self.proj.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.fc1.weight.dtype

    def context(self, low_res_deep, low_res_shallow, high_res_deep) -> torch.Tensor:
        """The timestep-independent tokens (B, 2N, inner_dim) from the encoder features."""
        cross_layer = low_res_deep
        for block in self.cross_layer_blocks:
            cross_layer = block(cross_layer, encoder_hidden_states=low_res_shallow)
        cross_scale = low_res_deep
        for block in self.cross_scale_blocks:
            cross_scale = block(cross_scale, encoder_hidden_states=high_res_deep)
        tokens = self.proj(low_res_deep) + self.proj_cross_scale(cross_scale)
        return torch.cat([tokens, self.proj_cross_layer(cross_layer)], dim=1)

    def resample(self, context: torch.Tensor, timestep) -> torch.Tensor:
        """Character tokens (B, num_queries, output_dim) for ``timestep`` on the scheduler's 0-1000 scale."""
        return self.resampler(context, timestep)

    def forward(self, low_res_deep=None, low_res_shallow=None, high_res_deep=None, timestep=None, context=None):
        """Features -> context; with ``timestep`` also -> tokens; ``context`` + ``timestep`` -> tokens.

        Going through ``forward`` (rather than :meth:`context` / :meth:`resample`) lets offload hooks move the
        module to the execution device.
        """
        if context is None:
            context = self.context(low_res_deep, low_res_shallow, high_res_deep)
        return context if timestep is None else self.resample(context, timestep)

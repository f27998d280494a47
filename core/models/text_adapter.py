"""The text adapter (paper section 3.1.2): each character's SigLIP features, injected into the words that name it.

A timestep-aware Q-Former (the same :class:`~core.models.projector.TimeResampler` family as the image adapter's) turns a
character's SigLIP features into a few learnable tokens ``F_T``. In every double-stream FLUX block, the text tokens
``H_T`` that came from the character's ``[Name]`` tag attend to ``F_T`` and add the result (Eq. 4)::

    H_T += to_out(Attention(norm_q(H_T^Q), norm_k(to_k(F_T)), to_v(F_T)))

``H_T^Q`` is the text tokens' raw ``add_q_proj`` output (before the layer's own norm, no rotary embedding), mirroring
the image adapter. Only double-stream blocks are used: there the text stream has its own projections, so the
injection stays on the character's words; single-stream blocks mix text and image in one projection.
``to_out`` starts at zero, so an untrained text adapter changes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core.models.attention import RMSNorm
from core.io.paths import atomic_path
from core.models.projector import TimeResampler
from core.errors import UserError


class TextAdapterError(UserError, ValueError):
    """A text adapter file that cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class TextAdapterConfig:
    """Sizes of a text adapter (full-size defaults for FLUX.1-dev with SigLIP-so400m)."""

    siglip_dim: int = 1152
    dim: int = 768  # Q-Former width
    depth: int = 4
    num_queries: int = 16
    token_dim: int = 768  # width of the character's text tokens F_T
    attention_width: int = 3072  # FLUX heads x head size
    head_dim: int = 128
    num_layers: int = 19  # double-stream blocks of FLUX.1-dev

    @classmethod
    def for_pipeline(cls, pipe, **overrides) -> "TextAdapterConfig":
        cfg = pipe.transformer.config
        base = dict(siglip_dim=pipe.siglip.config.hidden_size, attention_width=cfg.num_attention_heads * cfg.attention_head_dim,
                    head_dim=cfg.attention_head_dim, num_layers=cfg.num_layers)
        return cls(**(base | overrides))


class TextInjection(nn.Module):
    """The per-layer cross-attention of the character's text tokens to its F_T tokens."""

    def __init__(self, token_dim: int, width: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm_q = RMSNorm(head_dim)
        self.to_k = nn.Linear(token_dim, width)
        self.norm_k = RMSNorm(head_dim)
        self.to_v = nn.Linear(token_dim, width)
        self.to_out = nn.Linear(width, width)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, raw_text_query: torch.Tensor, tokens: torch.Tensor, backend=None) -> torch.Tensor:
        """raw_text_query (B, L, heads, head_dim); tokens (B, Q, token_dim) -> (B, L, width)."""
        query = self.norm_q(raw_text_query)
        tokens = tokens.to(query.dtype)
        key = self.norm_k(self.to_k(tokens).unflatten(-1, (-1, self.head_dim)))
        value = self.to_v(tokens).unflatten(-1, (-1, self.head_dim))
        out = dispatch_attention_fn(query, key, value, backend=backend).flatten(2, 3)
        return self.to_out(out.to(raw_text_query.dtype))


class TextAdapter(nn.Module):
    """Q-Former + one :class:`TextInjection` per double-stream block."""

    def __init__(self, config: TextAdapterConfig = TextAdapterConfig()):
        super().__init__()
        self.config = config
        self.qformer = TimeResampler(config.siglip_dim, config.dim, config.depth, config.num_queries,
                                     config.token_dim)
        self.layers = nn.ModuleList(TextInjection(config.token_dim, config.attention_width, config.head_dim)
                                    for _ in range(config.num_layers))

    @property
    def device(self) -> torch.device:
        return self.qformer.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.qformer.latents.dtype

    def forward(self, siglip_features: torch.Tensor, timestep) -> torch.Tensor:
        """The character's F_T tokens (B, num_queries, token_dim) from SigLIP features (B, N, siglip_dim)."""
        return self.qformer(siglip_features, timestep)

    def install(self, transformer) -> None:
        """Hands each double-stream block's processor its injection module (not registered as its child)."""
        processors = [transformer.transformer_blocks[i].attn.processor for i in range(len(transformer.transformer_blocks))]
        if len(processors) != len(self.layers):
            raise TextAdapterError(
                f"the text adapter has {len(self.layers)} layers but the base model has {len(processors)} "
                "double-stream blocks: it was made for another base model"
            )
        for processor, layer in zip(processors, self.layers):
            if not hasattr(processor, "text_injection"):
                raise TextAdapterError("install the image adapter's processors before the text adapter")
            object.__setattr__(processor, "text_injection", layer)

    @staticmethod
    def uninstall(transformer) -> None:
        for block in transformer.transformer_blocks:
            if hasattr(block.attn.processor, "text_injection"):
                object.__setattr__(block.attn.processor, "text_injection", None)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes safetensors with the config in its metadata and a ``.json`` config beside it, atomically."""
        path = Path(path)
        config = json.dumps(asdict(self.config))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": "instantcharacter-text-adapter", "config": config})
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(config)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextAdapter":
        """Reads a text adapter written by :meth:`save` (strict)."""
        path = Path(path)
        if not path.is_file():
            raise TextAdapterError(f"text adapter file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise TextAdapterError(f"{path} is not a readable safetensors file ({exc})") from None
        if metadata.get("format") != "instantcharacter-text-adapter" or "config" not in metadata:
            raise TextAdapterError(f"{path} is not an InstantCharacter text adapter")
        adapter = cls(TextAdapterConfig(**json.loads(metadata["config"])))
        expected = adapter.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            key = (missing or unexpected)[0]
            raise TextAdapterError(f"{path}: {'missing' if missing else 'unexpected'} key '{key}'")
        adapter.load_state_dict(state, strict=True)
        return adapter.eval()


def text_adapter_parameter_count(config: TextAdapterConfig = TextAdapterConfig()) -> int:
    """Number of parameters of a text adapter, counted on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in TextAdapter(config).parameters())

"""Loading and saving InstantCharacter adapter checkpoints.

Two file formats are read:

* the released ``.bin``: a ``torch.save`` pickle of ``{"image_proj": state_dict, "ip_adapter": state_dict}``, always
  read with ``torch.load(..., weights_only=True)``; after the first load a safetensors copy is kept in the cache so
  later loads are fast and pickle-free;
* ``.safetensors`` with the same keys flattened as ``image_proj.<key>`` and ``ip_adapter.<key>``.

All sizes are inferred from tensor shapes; loading is strict and errors name the offending key.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.models.attention import CharacterAttentionLayers
from core.io.paths import atomic_path, cache_dir
from core.models.projector import CharacterProjector, ProjectorConfig
from core.errors import UserError


class CheckpointError(UserError, ValueError):
    """An adapter file that cannot be used; the message says why in one line."""


@dataclass
class AdapterConfig:
    """Sizes of an adapter, inferred from its tensors."""

    projector: ProjectorConfig
    num_attention_layers: int
    attention_width: int  # FLUX heads x head size
    head_dim: int
    token_dim: int


@dataclass
class AdapterWeights:
    """The two state dicts of an adapter checkpoint and the sizes inferred from them."""

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]
    config: AdapterConfig
    source: str


def _count_indices(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _shape(sd: dict, key: str, where: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{where}: missing key '{key}': not an InstantCharacter adapter")
    return sd[key].shape


def infer_config(image_proj: dict, ip_adapter: dict, where: str = "adapter") -> AdapterConfig:
    """Infers all sizes of an adapter from the shapes of its tensors."""
    inner = _shape(image_proj, "proj.fc1.weight", where)[1]
    res_dim, _ = _shape(image_proj, "resampler.proj_in.weight", where)
    depth = _count_indices(image_proj, "resampler.layers.")
    layers = _count_indices(image_proj, "cross_layer_blocks.")
    if _count_indices(image_proj, "cross_scale_blocks.") != layers:
        raise CheckpointError(f"{where}: cross-layer and cross-scale stacks have different depths")
    ff_hidden = _shape(image_proj, "resampler.layers.0.1.1.weight", where)[0]
    projector = ProjectorConfig(
        inner_dim=inner,
        num_layers=layers,
        resampler_dim=res_dim,
        resampler_depth=depth,
        num_queries=_shape(image_proj, "resampler.latents", where)[1],
        output_dim=_shape(image_proj, "resampler.proj_out.weight", where)[0],
        ff_mult=ff_hidden // res_dim,
        timestep_channels=_shape(image_proj, "resampler.time_embedding.linear_1.weight", where)[1],
    )
    width, token_dim = _shape(ip_adapter, "0.to_k_ip.weight", where)
    config = AdapterConfig(
        projector=projector,
        num_attention_layers=_count_indices(ip_adapter, ""),
        attention_width=width,
        head_dim=_shape(ip_adapter, "0.norm_ip_q.scale", where)[0],
        token_dim=token_dim,
    )
    if token_dim != projector.output_dim:
        raise CheckpointError(
            f"{where}: attention layers take {token_dim}-wide tokens but the projector makes {projector.output_dim}"
        )
    return config


def _split_flat(flat: dict[str, torch.Tensor], where: str):
    image_proj, ip_adapter = {}, {}
    for key, value in flat.items():
        group, _, rest = key.partition(".")
        if group == "image_proj":
            image_proj[rest] = value
        elif group == "ip_adapter":
            ip_adapter[rest] = value
        else:
            raise CheckpointError(f"{where}: unexpected key '{key}' (expected image_proj.* and ip_adapter.*)")
    return image_proj, ip_adapter


def _read_bin(path: Path):
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not {"image_proj", "ip_adapter"} <= set(data):
        keys = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not an InstantCharacter adapter (expected 'image_proj' and 'ip_adapter', got {keys})")
    return dict(data["image_proj"]), dict(data["ip_adapter"])


def _bin_cache_path(path: Path) -> Path:
    real = path.resolve()
    stat = real.stat()
    digest = hashlib.sha256(f"{real}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    return cache_dir("adapters") / f"{real.stem}-{digest}.safetensors"


def save_adapter(path: str | os.PathLike, image_proj: dict, ip_adapter: dict, metadata: dict | None = None) -> Path:
    """Writes an adapter as flat safetensors (``image_proj.*``, ``ip_adapter.*``), atomically."""
    path = Path(path)
    flat = {f"image_proj.{k}": v.detach().contiguous().cpu() for k, v in image_proj.items()}
    flat.update({f"ip_adapter.{k}": v.detach().contiguous().cpu() for k, v in ip_adapter.items()})
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"format": "instantcharacter", **(metadata or {})})
    return path


def read_adapter(path: str | os.PathLike, use_cache: bool = True) -> AdapterWeights:
    """Reads an adapter file (``.bin`` or ``.safetensors``) and infers its sizes.

    A ``.bin`` is converted once to a cached safetensors copy, which later calls read instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            flat = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
        image_proj, ip_adapter = _split_flat(flat, str(path))
    else:
        cached = _bin_cache_path(path) if use_cache else None
        if cached is not None and cached.is_file():
            image_proj, ip_adapter = _split_flat(load_file(str(cached)), str(cached))
        else:
            image_proj, ip_adapter = _read_bin(path)
            infer_config(image_proj, ip_adapter, str(path))  # validate before caching
            if cached is not None:
                save_adapter(cached, image_proj, ip_adapter, {"source": str(path.resolve())})
    return AdapterWeights(image_proj, ip_adapter, infer_config(image_proj, ip_adapter, str(path)), str(path))


def _load_strict(module: torch.nn.Module, state_dict: dict, what: str, source: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: {what} is missing key '{missing[0]}' ({len(missing)} missing)")
    if unexpected:
        raise CheckpointError(f"{source}: {what} has unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {what} key '{key}' has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state_dict, strict=True)


def check_compatible(config: AdapterConfig, transformer, encoder_width: int | None, source: str) -> None:
    """Raises :class:`CheckpointError` if the adapter does not fit the base model or the image encoders."""
    cfg = transformer.config
    layers = cfg.num_layers + cfg.num_single_layers
    width = cfg.num_attention_heads * cfg.attention_head_dim
    if config.num_attention_layers != layers or config.attention_width != width or config.head_dim != cfg.attention_head_dim:
        raise CheckpointError(
            f"{source}: adapter is for a base model with {config.num_attention_layers} attention layers of width "
            f"{config.attention_width} (head {config.head_dim}), but the base model has {layers} of width {width} "
            f"(head {cfg.attention_head_dim})"
        )
    if encoder_width is not None and config.projector.inner_dim != encoder_width:
        raise CheckpointError(
            f"{source}: adapter expects {config.projector.inner_dim}-wide image features but SigLIP + DINOv2 give "
            f"{encoder_width}"
        )


def build_adapter(weights: AdapterWeights, dtype: torch.dtype | None = None):
    """Builds the projector and attention layers from checkpoint weights (strict)."""
    cfg = weights.config
    projector = CharacterProjector(cfg.projector)
    _load_strict(projector, weights.image_proj, "image_proj", weights.source)
    layers = CharacterAttentionLayers(cfg.num_attention_layers, cfg.attention_width, cfg.token_dim, cfg.head_dim)
    _load_strict(layers, weights.ip_adapter, "ip_adapter", weights.source)
    if dtype is not None:
        projector.to(dtype)
        layers.to(dtype)
    return projector.eval(), layers.eval()

"""Sharded training (``run.distributed = "fsdp"``): torch FSDP2 ``fully_shard`` over the trainable parts.

Each process keeps 1/N of the trainable parts' float32 weights, their gradients (reduce-scattered in backward)
and the optimizer state built on them; the frozen FLUX transformer stays whole on every process (it is held
outside the training model's module tree). The projector and the text adapter are their own FSDP groups
(gathered for their forward, freed after); the rest (the character attention K/V, called by the transformer's
attention layers) is the root group, gathered for the whole forward and backward.

Checkpoints go through ``torch.distributed.checkpoint``: every process writes its shards (weights and optimizer
state) into ``sharded/``, and the main process also writes the gathered ``trainable.safetensors`` that
``train export`` and a run on another number of processes read. Export gathers the full weights to the main
process and writes the engine's format from a copy of the parts built on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHARDED_DIR = "sharded"


def shard_model(model, device) -> torch.nn.Module:
    """Shards ``model`` (an ``AdapterTrainingModel``) in place over the default process group."""
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    for part in model.parts.values():
        for name in ("image_proj", "text_adapter"):
            child = getattr(part, name, None)
            if isinstance(child, torch.nn.Module) and any(p.requires_grad for p in child.parameters()):
                fully_shard(child)
    fully_shard(model)
    return model


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole weights on the main process (CPU, float32 as trained); empty on the others. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(folder: Path, model, optimizer) -> None:
    """Every process writes its shards of weights and optimizer state to ``folder/sharded``. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(Path(folder) / SHARDED_DIR))


def load_sharded(folder: Path, model, optimizer) -> None:
    """Reads ``folder/sharded`` into the sharded model and optimizer (any number of processes). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def export_copy(config, weights: dict[str, torch.Tensor]):
    """A CPU training model with ``weights`` (from :func:`full_state_dict`), for ``export_adapter``."""
    from .plan import ModelDescription, build_meta_model

    model, _ = build_meta_model(ModelDescription.for_config(config), config, torch.float32)
    model.load_state_dict(weights, strict=True, assign=True)
    return model

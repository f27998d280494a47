"""The trainable parts: which modules train, as a registry of factories.

:data:`TRAINABLE_PARTS` maps a config name to a factory of :class:`TrainablePart` modules (add one with
:func:`register_trainable`). Built in: ``image_adapter`` (projector + character attention K/V),
``image_adapter_lora`` (LoRA on it) and ``text_adapter`` (:class:`core.models.text_adapter.TextAdapter`: each
character's SigLIP features injected into the T5 tokens of its ``[Name]`` tag, paper Eq. 4). The image adapter gives
one :class:`CharacterCondition` per character slot; the text adapter's tokens and tag masks are added to those
conditions.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from core.errors import UsageError
from core.models.attention import CharacterCondition

from .batch import TrainingInputs


# ---------------------------------------------------------------------- trainable parts
class TrainablePart(nn.Module):
    """A set of trainable modules that conditions the frozen transformer.

    Subclasses register their modules as attributes whose names are the exported state dict groups, and return
    the ``joint_attention_kwargs`` they contribute for a micro-batch: ``character_conditions`` (one
    :class:`CharacterCondition` per slot) or ``character_text`` (per slot, text tokens and text mask for the
    slot's condition), or any other processor argument.
    """

    name = "part"

    def attention_kwargs(self, inputs: TrainingInputs, timesteps: torch.Tensor) -> dict:
        raise NotImplementedError

    def export_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{group: state_dict}`` as written to the adapter file (e.g. ``image_proj``, ``ip_adapter``)."""
        return {name: module.state_dict() for name, module in self.named_children()}

    def install(self, pipe) -> None:
        """Puts these modules back into ``pipe`` (for sampling, and after loading a checkpoint)."""

    def export(self, path, metadata: dict) -> list | None:
        """Writes this part for the engine at ``path`` (a ``.safetensors`` path) and returns the files written;
        ``None`` lets :func:`trainer.checkpoints.export_adapter` write the flat groups."""
        return None


class ImageAdapterPart(TrainablePart):
    """The image adapter: projector (``image_proj``) and character attention K/V layers (``ip_adapter``)."""

    name = "image_adapter"

    def __init__(self, image_proj: nn.Module, ip_adapter: nn.Module):
        super().__init__()
        self.image_proj = image_proj
        self.ip_adapter = ip_adapter

    def attention_kwargs(self, inputs: TrainingInputs, timesteps: torch.Tensor) -> dict:
        conditions = []
        for slot in inputs.characters:
            context = self.image_proj(slot.low_res_deep, slot.low_res_shallow, slot.high_res_deep)
            tokens = self.image_proj(context=context, timestep=timesteps.to(context.dtype))
            conditions.append(CharacterCondition(tokens, 1.0, slot.mask))
        return {"character_conditions": conditions}

    def install(self, pipe) -> None:
        pipe.image_proj = self.image_proj
        pipe.character_layers = self.ip_adapter
        self.ip_adapter.install(pipe.transformer)


class TextAdapterPart(TrainablePart):
    """The text adapter (``text_adapter``): a Q-Former on each character's SigLIP features, and per double-stream
    block a cross-attention from the character's tag tokens to its Q-Former tokens.

    It contributes ``character_text``: per slot, its tokens and text mask, added to the image adapter's condition.
    Slots without a tag in any row get an all-zero text mask, so every parameter stays in the graph (DDP needs
    each one to get a gradient, even a zero one).
    """

    name = "text_adapter"

    def __init__(self, text_adapter: nn.Module):
        super().__init__()
        self.text_adapter = text_adapter

    def attention_kwargs(self, inputs: TrainingInputs, timesteps: torch.Tensor) -> dict:
        width = self.text_adapter.config.siglip_dim
        length = inputs.prompt_embeds.shape[1]
        conditions = []
        for slot in inputs.characters:
            siglip = slot.low_res_deep[..., :width]  # CharacterFeatures.low_res_deep = [SigLIP | DINOv2]
            tokens = self.text_adapter(siglip.to(self.text_adapter.dtype), timesteps.to(siglip.dtype))
            mask = slot.text_mask
            if mask is None:
                mask = torch.zeros(siglip.shape[0], length, device=siglip.device)
            conditions.append((tokens, mask))
        return {"character_text": conditions}

    def export_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"text_adapter": self.text_adapter.state_dict()}

    def install(self, pipe) -> None:
        adapter = self.text_adapter
        tcfg = pipe.transformer.config
        if adapter.config.siglip_dim != pipe.siglip.config.hidden_size:
            raise UsageError(f"the text adapter expects {adapter.config.siglip_dim}-wide SigLIP features, the "
                             f"SigLIP model gives {pipe.siglip.config.hidden_size}")
        if adapter.config.attention_width != tcfg.num_attention_heads * tcfg.attention_head_dim:
            raise UsageError(f"the text adapter is for attention width {adapter.config.attention_width}, the base "
                             f"model has {tcfg.num_attention_heads * tcfg.attention_head_dim}")
        # not pipe.load_text_adapter: it casts to the weight dtype, and these are float32 master weights
        adapter.to(device=pipe.transformer.device)
        adapter.install(pipe.transformer)
        pipe.register_modules(text_adapter=adapter)

    def export(self, path, metadata: dict) -> list:
        path = self.text_adapter.save(path)
        return [path, path.with_suffix(".json")]


def _text_adapter(pipe, fresh: bool, seed: int, dim: int = 768, depth: int = 4, num_queries: int = 16,
                  token_dim: int = 768) -> TextAdapterPart:
    """The pipeline's text adapter when one was loaded (``models.text_adapter``), else a fresh one: random
    Q-Former and K/V (seeded), zero output projections, so training starts from the model without it.

    ``fresh`` (``models.init``) is about the image adapter; a text adapter file named in the config is used as is.
    """
    from core.models.text_adapter import TextAdapter, TextAdapterConfig

    adapter = getattr(pipe, "text_adapter", None)
    if adapter is None:
        config = TextAdapterConfig.for_pipeline(pipe, dim=dim, depth=depth, num_queries=num_queries,
                                                token_dim=token_dim)
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            adapter = TextAdapter(config)
    part = TextAdapterPart(adapter)
    part.install(pipe)
    return part


class LoraImageAdapterPart(ImageAdapterPart):
    """LoRA on the image adapter (``image_adapter_lora``): the projector and character attention K/V stay frozen in
    the weight dtype, and each ``nn.Linear`` of the character attention K/V (``targets = "attention"``) or of the
    projector too (``"all"``) gets a trainable low-rank update (peft's LoRA layers). With ``"attention"`` the
    frozen projector keeps no activations for backward (several GiB at full size, see ``train plan``).

    It trains far fewer parameters than the full adapter (see ``train plan``), which is what lets a fine-tune fit a
    24 GB card. Export merges the updates into the adapter (``W + scale * B @ A``), so the engine loads an ordinary
    ``adapter.safetensors``.
    """

    name = "image_adapter_lora"

    def __init__(self, image_proj: nn.Module, ip_adapter: nn.Module, rank: int = 64, alpha: float | None = None,
                 seed: int = 0, targets: str = "attention"):
        super().__init__(image_proj, ip_adapter)
        from peft import LoraConfig, inject_adapter_in_model

        if targets not in ("attention", "all"):
            raise UsageError(f"lora.targets {targets!r}: use 'attention' (character K/V) or 'all' (+ projector)")
        within = self.ip_adapter if targets == "attention" else self
        prefix = "ip_adapter." if targets == "attention" else ""
        # full module names: peft matches them exactly (a bare "0" would match blocks too)
        targets = [prefix + n for n, m in within.named_modules() if isinstance(m, nn.Linear)]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets,
                                               lora_dropout=0.0), self)

    def prepare_for_training(self, dtype: torch.dtype) -> None:
        """Freezes the adapter in ``dtype``; only the LoRA factors train (float32 master weights)."""
        for name, p in self.named_parameters():
            trainable = "lora_" in name
            p.requires_grad_(trainable)
            if not trainable:
                p.data = p.data.to(dtype)

    def export_groups(self, source=None) -> dict[str, dict[str, torch.Tensor]]:
        """The merged adapter in float32. ``source`` (the :class:`core.loading.checkpoint.AdapterWeights` the run
        started from) gives the frozen weights as the file holds them, not as trained (rounded to the weight
        dtype): untouched weights export bit for bit, and updated ones are ``source + delta``."""
        from peft.tuners.lora import LoraLayer

        deltas = {}
        for name, module in self.named_modules():
            if isinstance(module, LoraLayer):
                deltas[f"{name}.weight"] = module.get_delta_weight("default")
        out = {}
        for group in ("image_proj", "ip_adapter"):
            merged = {}
            for key, value in getattr(self, group).state_dict().items():
                if "lora_" in key:
                    continue
                full = f"{group}.{key}".replace(".base_layer", "")
                original = getattr(source, group, {}).get(key.replace(".base_layer", "")) if source else None
                if original is not None and original.shape == value.shape:
                    value = original
                value = value.float()
                if full in deltas:
                    value = value + deltas[full].float()
                merged[key.replace(".base_layer", "")] = value
            out[group] = merged
        return out


def _image_adapter_lora(pipe, fresh: bool, seed: int, rank: int = 64, alpha: float = 0.0,
                        targets: str = "attention") -> LoraImageAdapterPart:
    """LoRA on the loaded (or, with ``fresh``, a random) image adapter; the factors are seeded with ``seed``."""
    base = _image_adapter(pipe, fresh, seed)
    part = LoraImageAdapterPart(base.image_proj, base.ip_adapter, rank, alpha or None, seed, targets)
    part.install(pipe)
    return part


def _image_adapter(pipe, fresh: bool, seed: int) -> ImageAdapterPart:
    if fresh:
        from core.models.attention import CharacterAttentionLayers
        from core.models.projector import CharacterProjector

        proj_config = pipe.image_proj.config
        layers = pipe.character_layers
        first = layers[0]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            image_proj = CharacterProjector(proj_config)
            ip_adapter = CharacterAttentionLayers(len(layers), first.to_k_ip.out_features, first.to_k_ip.in_features,
                                                  first.norm_ip_q.scale.shape[0])
    else:
        image_proj, ip_adapter = pipe.image_proj, pipe.character_layers
    part = ImageAdapterPart(image_proj, ip_adapter)
    part.install(pipe)
    return part


# name -> factory(pipe, fresh: bool, seed: int, **options) -> TrainablePart
TRAINABLE_PARTS: dict[str, Callable] = {}
# parts that replace the attention processors are built first: later parts install onto those processors
INSTALL_FIRST = ("image_adapter", "image_adapter_lora")


def register_trainable(name: str, factory: Callable) -> None:
    """Makes ``name`` usable in a config's ``trainable`` list.

    ``factory(pipe, fresh, seed, **options) -> TrainablePart``; ``options`` come from
    :func:`build_training_model`'s ``part_options[name]`` (none for most parts).
    """
    TRAINABLE_PARTS[name] = factory


register_trainable("image_adapter", _image_adapter)
register_trainable("image_adapter_lora", _image_adapter_lora)
register_trainable("text_adapter", _text_adapter)

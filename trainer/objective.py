"""The training objective: flow matching (paper Eq. 5) on packed FLUX latents, conditioned on the adapter.

For a target image with latent ``x0`` (packed FLUX tokens, (B, N, C)), noise ``eps`` and ``sigma`` in (0, 1)::

    z_sigma = (1 - sigma) * x0 + sigma * eps
    loss    = w(sigma) * || v_theta(z_sigma, sigma, text, c) - (eps - x0) ||^2

``c`` is the reference image through the frozen SigLIP + DINOv2 encoders, the trainable projector and the
trainable character attention (K/V) layers. FLUX, its text encoders and VAE stay frozen. ``sigma`` is drawn with
``diffusers.training_utils.compute_density_for_timestep_sampling`` (optionally with FLUX's resolution-dependent
shift), and ``w`` is ``compute_loss_weighting_for_sd3``.

Randomness is per sample: the noise and sigma of a row depend only on (seed, stage, step, slot in the global
batch), so the result does not depend on how a global batch is split over processes or accumulation steps, and
resuming at a step draws what an uninterrupted run would.

Which modules train is pluggable: :data:`TRAINABLE_PARTS` maps a config name to a factory of
:class:`TrainablePart` modules. Two are built in: ``image_adapter`` (projector + character attention K/V) and
``text_adapter`` (:class:`core.models.text_adapter.TextAdapter`: each character's SigLIP features injected into the T5
tokens of its ``[Name]`` tag, paper Eq. 4). The image adapter gives one :class:`CharacterCondition` per character
slot; the text adapter's tokens and tag masks are added to those conditions. Training the text
adapter alone keeps the image adapter in the forward pass, frozen.

Where each character acts follows the engine's rules (:func:`core.conditioning.routing.route_characters`): a reference
without a mask or box covers the whole image, several such references are laid out left to right in caption
order, boxes are exact and masks are area averaged, all cut to the target's centre crop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from PIL import Image
from torch import nn

from core.models.attention import CharacterCondition
from core.io.cache import LRUCache
from core.conditioning.routing import Routing, route_characters, tag_weights, token_grid
from core.io.images import open_image
from core.conditioning.masks import RoutingMask
from core.io.paths import sha256_file
from core.conditioning.prompt import resolve_prompt

from .config import ObjectiveConfig
from .data import Example, load_target
from core.errors import UsageError


# ---------------------------------------------------------------------- inputs
@dataclass
class CharacterSlot:
    """Slot ``j`` of a batch: the j-th character of every row in :attr:`core.conditioning.routing.Routing.order` (rows with
    fewer references get a zero mask).

    Feature shapes as :class:`core.models.encoders.CharacterFeatures`, with the batch in front.
    """

    low_res_deep: torch.Tensor
    low_res_shallow: torch.Tensor
    high_res_deep: torch.Tensor
    mask: torch.Tensor | None  # (B, N) routing weights over the image tokens; None: whole image for every row
    text_mask: torch.Tensor | None = None  # (B, L): 1 on the T5 tokens from this character's [Name] tag


@dataclass
class TrainingInputs:
    """One micro-batch, ready for the transformer. ``N`` image tokens, ``L`` text tokens."""

    latents: torch.Tensor  # x0, packed (B, N, C)
    noise: torch.Tensor  # eps, (B, N, C)
    sigmas: torch.Tensor  # (B,) in (0, 1)
    image_ids: torch.Tensor  # (N, 3)
    prompt_embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, P)
    text_ids: torch.Tensor  # (L, 3)
    characters: list[CharacterSlot]
    captions: list[str]  # as the text encoders saw them (tags replaced)
    spans: list[dict]  # per row: character index -> [(start, end)] character offsets in the caption

    def to(self, device, dtype) -> "TrainingInputs":
        def mv(t, keep_float=False):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() and not keep_float else t.dtype)

        slots = [CharacterSlot(mv(s.low_res_deep), mv(s.low_res_shallow), mv(s.high_res_deep), mv(s.mask),
                               mv(s.text_mask)) for s in self.characters]
        return TrainingInputs(mv(self.latents, True), mv(self.noise, True), mv(self.sigmas, True), mv(self.image_ids),
                              mv(self.prompt_embeds), mv(self.pooled), mv(self.text_ids), slots, self.captions,
                              self.spans)


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


# ---------------------------------------------------------------------- encoding (frozen)
def _file_digest(path) -> str:
    return sha256_file(path)[:32]


class EncodingCache:
    """Frozen-model outputs by content key: in memory (bounded), and on disk for the kinds asked for.

    Disk entries are safetensors files under ``folder/<kind>/<key>.safetensors``, written atomically.
    """

    def __init__(self, folder=None, disk_kinds: tuple[str, ...] = (), memory: dict | None = None):
        from pathlib import Path

        self.folder = Path(folder) if folder else None
        self.disk_kinds = set(disk_kinds)
        sizes = memory or {"latents": 4096, "text": 4096, "features": 64}
        self.memory = {kind: LRUCache(size) for kind, size in sizes.items()}
        self.disk_hits = 0

    def get(self, kind: str, key: str, make: Callable[[], dict]) -> dict:
        def load_or_make():
            if self.folder is not None and kind in self.disk_kinds:
                from safetensors.torch import load_file, save_file

                from core.io.paths import atomic_path

                path = self.folder / kind / f"{key}.safetensors"
                if path.is_file():
                    self.disk_hits += 1
                    return load_file(str(path))
                value = {k: v.contiguous() for k, v in make().items()}
                with atomic_path(path) as tmp:
                    save_file(value, str(tmp))
                return value
            return make()

        return self.memory.setdefault(kind, LRUCache(64)).get_or_make(key, load_or_make)


class BatchEncoder:
    """Turns dataset rows into :class:`TrainingInputs` with the frozen VAE, text encoders and image encoders."""

    def __init__(self, pipe, objective: ObjectiveConfig, max_sequence_length: int, cache: EncodingCache, seed: int):
        self.pipe = pipe
        self.objective = objective
        self.max_sequence_length = max_sequence_length
        self.cache = cache
        self.seed = seed
        self.device = pipe.transformer.device
        self._text_masks: dict[tuple, list[int]] = {}

    # per-row pieces ----------------------------------------------------------
    @torch.no_grad()
    def latents(self, path, resolution: int) -> torch.Tensor:
        """Packed, scaled and shifted VAE latents of the cropped target, (1, N, C) float32."""
        def make():
            image = load_target(path, resolution)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            vae = self.pipe.vae
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
            latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
            b, c, h, w = latents.shape
            return {"latents": self.pipe._pack_latents(latents, b, c, h, w).float().cpu()}

        key = f"{_file_digest(path)}-{resolution}"
        return self.cache.get("latents", key, make)["latents"]

    @torch.no_grad()
    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=caption, prompt_2=None, device=self.device,
                                                        num_images_per_prompt=1,
                                                        max_sequence_length=self.max_sequence_length)
            return {"embeds": embeds.float().cpu(), "pooled": pooled.float().cpu()}

        key = hashlib.sha256(f"{caption}\0{self.max_sequence_length}".encode()).hexdigest()[:32]
        value = self.cache.get("text", key, make)
        return value["embeds"], value["pooled"]

    def features(self, path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def make():
            from core.io.images import load_image

            f = self.pipe.character_encoder.encode(load_image(path))
            # clone: inference-mode tensors cannot be saved for the projector's backward pass
            return {"low_res_deep": f.low_res_deep.float().cpu().clone(),
                    "low_res_shallow": f.low_res_shallow.float().cpu().clone(),
                    "high_res_deep": f.high_res_deep.float().cpu().clone()}

        value = self.cache.get("features", _file_digest(path), make)
        return value["low_res_deep"], value["low_res_shallow"], value["high_res_deep"]

    def text_mask(self, caption: str, spans: list[tuple[int, int]] | None, length: int) -> torch.Tensor:
        """(L,) weights: 1 on the T5 tokens of ``caption`` (as resolved) that overlap ``spans``, as in the engine."""
        if not spans:
            return torch.zeros(length)
        key = (caption, tuple(spans), length)
        if key not in self._text_masks:
            self._text_masks[key] = tag_weights(self.pipe.tokenizer_2, caption, spans, length)
        return self._text_masks[key]

    @staticmethod
    def routing_mask(reference) -> RoutingMask | None:
        """The reference's mask (read as the engine reads one) or box, on the whole target; ``None``: neither."""
        if reference.mask is not None:
            return RoutingMask.from_spec(open_image(reference.mask, f"the mask of [{reference.name}]"))
        if reference.box is not None:
            return RoutingMask.from_spec(tuple(reference.box))
        return None

    def routing(self, example: Example, references, resolution: int, prompt_order=()) -> Routing:
        """Where each reference acts in the training image: the engine's rules, with masks and boxes cut to the
        target's centre crop (see :func:`core.conditioning.routing.route_characters`)."""
        masks = [self.routing_mask(ref) for ref in references]
        window = None
        if any(m is not None for m in masks):
            window = crop_window(oriented_size(example.target), resolution)
        rows, cols = token_grid(resolution, resolution, self.pipe.vae_scale_factor)
        return route_characters(masks, rows, cols, prompt_order, [ref.name for ref in references], window)

    # per-row randomness ----------------------------------------------------
    def draw(self, slot_key: tuple, shape, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise (shape) and sigma (scalar) of one row, from a generator seeded by ``slot_key`` alone."""
        digest = hashlib.sha256(repr((self.seed,) + tuple(slot_key)).encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        o = self.objective
        u = compute_density_for_timestep_sampling(
            "none" if o.timestep_sampling == "uniform" else o.timestep_sampling, 1, logit_mean=o.logit_mean,
            logit_std=o.logit_std, mode_scale=o.mode_scale, generator=g)
        sigma = float(u.clamp(1e-3, 1 - 1e-3))
        if o.shift_timesteps:
            cfg = self.pipe.scheduler.config
            mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
            sigma = math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))  # FLUX's time shift of the sampling schedule
        noise = torch.randn(shape, generator=g)
        return noise, torch.tensor(sigma, dtype=torch.float32)

    # a micro-batch ----------------------------------------------------------
    def encode(self, rows: list[Example], resolution: int, slot_keys: list[tuple]) -> TrainingInputs:
        """Encodes ``rows`` at ``resolution``; ``slot_keys[i]`` identifies row i's place in training (its RNG)."""
        latents = torch.cat([self.latents(r.target, resolution) for r in rows])
        b, n, c = latents.shape
        drawn = [self.draw(key, (n, c), n) for key in slot_keys]
        noise = torch.stack([d[0] for d in drawn])
        sigmas = torch.stack([d[1] for d in drawn]).float()

        captions, spans, placed = [], [], []
        for r in rows:
            refs = list(r.references) or [SimpleNamespace(image=r.target, name=None, mask=None, box=None)]
            named = [SimpleNamespace(name=x.name, words=x.name or "the character") for x in refs]
            resolved = resolve_prompt(r.caption, named)
            captions.append(resolved.text)
            spans.append(resolved.spans)
            routing = self.routing(r, refs, resolution, resolved.order)
            placed.append([(refs[i], resolved.spans.get(i), w) for i, w in zip(routing.order, routing.weights)])
        texts = [self.text(c) for c in captions]
        prompt_embeds = torch.cat([t[0] for t in texts])
        pooled = torch.cat([t[1] for t in texts])

        lat_h = resolution // self.pipe.vae_scale_factor
        slots = []
        length = prompt_embeds.shape[1]
        for j in range(max(len(x) for x in placed)):
            feats, masks, text_masks = [], [], []
            for caption, row in zip(captions, placed):
                if j < len(row):
                    ref, tag, weights = row[j]
                    feats.append(self.features(ref.image))
                    masks.append(weights)
                    text_masks.append(self.text_mask(caption, tag, length))
                else:  # this row has fewer characters: any features, routed nowhere, no tag
                    feats.append(self.features(row[0][0].image))
                    masks.append(torch.zeros(n))
                    text_masks.append(torch.zeros(length))
            mask = None  # the whole image in every row
            if any(m is not None for m in masks):
                mask = torch.stack([torch.ones(n) if m is None else m for m in masks])
            slots.append(CharacterSlot(*(torch.cat([f[k] for f in feats]) for k in range(3)), mask,
                                       torch.stack(text_masks) if any(m.any() for m in text_masks) else None))
        image_ids = self.pipe._prepare_latent_image_ids(b, lat_h // 2, lat_h // 2, "cpu", torch.float32)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3)
        return TrainingInputs(latents, noise, sigmas, image_ids, prompt_embeds, pooled, text_ids, slots, captions,
                              spans)


# ---------------------------------------------------------------------- the model
class AdapterTrainingModel(nn.Module):
    """The trainable parts around a frozen FLUX transformer; ``forward(inputs)`` returns the mean loss.

    Only the parts are submodules (what DDP wraps and syncs); the frozen transformer is held outside the module tree.
    """

    def __init__(self, parts: dict[str, TrainablePart], transformer, objective: ObjectiveConfig,
                 frozen_parts: dict[str, TrainablePart] | None = None):
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        # conditioning parts that run but do not train (the image adapter when only the text adapter trains)
        self._frozen = SimpleNamespace(transformer=transformer, parts=dict(frozen_parts or {}))
        self.objective = objective

    @property
    def transformer(self):
        return self._frozen.transformer

    def per_sample_loss(self, inputs: TrainingInputs) -> torch.Tensor:
        t = self.transformer
        dtype = next(t.parameters()).dtype
        x0, noise = inputs.latents, inputs.noise
        s = inputs.sigmas[:, None, None]
        noisy = (1 - s) * x0 + s * noise
        kwargs = {"text_seq_len": inputs.prompt_embeds.shape[1]}
        timesteps = inputs.sigmas * 1000
        for part in self._frozen.parts.values():
            with torch.no_grad():
                kwargs.update(part.attention_kwargs(inputs, timesteps))
        for part in self.parts.values():
            kwargs.update(part.attention_kwargs(inputs, timesteps))
        _add_text(kwargs)
        guidance = None
        if t.config.guidance_embeds:
            guidance = torch.full_like(inputs.sigmas, self.objective.guidance)
        prediction = t(hidden_states=noisy.to(dtype), timestep=inputs.sigmas.to(dtype), guidance=guidance,
                       pooled_projections=inputs.pooled.to(dtype), encoder_hidden_states=inputs.prompt_embeds.to(dtype),
                       txt_ids=inputs.text_ids, img_ids=inputs.image_ids, joint_attention_kwargs=kwargs,
                       return_dict=False)[0]
        target = noise - x0  # Eq. 5: the velocity of the straight path from data to noise
        error = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2))
        weighting = compute_loss_weighting_for_sd3(self.objective.loss_weighting, sigmas=inputs.sigmas.float())
        return error * weighting

    def forward(self, inputs: TrainingInputs) -> torch.Tensor:
        return self.per_sample_loss(inputs).mean()


def _add_text(kwargs: dict) -> None:
    """Puts ``character_text`` (per slot: text tokens, text mask) onto the slots' ``character_conditions``."""
    text = kwargs.pop("character_text", None)
    if text is None:
        return
    conditions = kwargs.get("character_conditions")
    if conditions is None or len(conditions) != len(text):
        raise ValueError("the text adapter needs the image adapter's character conditions, one per slot")
    kwargs["character_conditions"] = [dataclasses.replace(c, text_tokens=tokens, text_mask=mask)
                                      for c, (tokens, mask) in zip(conditions, text)]


def build_training_model(pipe, trainable: list[str], objective: ObjectiveConfig, fresh: bool, seed: int,
                         part_options: dict[str, dict] | None = None):
    """Freezes ``pipe`` and returns an :class:`AdapterTrainingModel` with the named parts (float32, trainable).

    ``part_options[name]`` are extra keyword arguments of that part's factory (e.g. the text adapter's sizes).
    Adapters loaded in ``pipe`` but not named in ``trainable`` still condition, frozen.
    """
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "siglip", "dinov2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()
    for name in trainable:
        if name not in TRAINABLE_PARTS:
            raise ValueError(f"trainable module {name!r} is not available in this version "
                             f"(available: {', '.join(TRAINABLE_PARTS)})")
    part_options = part_options or {}
    order = sorted(trainable, key=lambda n: n not in INSTALL_FIRST)  # stable: config order otherwise
    built = {name: TRAINABLE_PARTS[name](pipe, fresh, seed, **part_options.get(name, {})) for name in order}
    parts = {name: built[name] for name in trainable}
    frozen = {}  # what the engine would also run: the loaded adapters that do not train
    if not {"image_adapter", "image_adapter_lora"} & set(parts) and getattr(pipe, "image_proj", None) is not None:
        frozen["image_adapter"] = ImageAdapterPart(pipe.image_proj, pipe.character_layers).requires_grad_(False)
    if "text_adapter" not in parts and getattr(pipe, "text_adapter", None) is not None:
        frozen["text_adapter"] = TextAdapterPart(pipe.text_adapter).requires_grad_(False)
    model = AdapterTrainingModel(parts, pipe.transformer, objective, frozen)
    model.float().requires_grad_(True).train()
    for part in parts.values():  # parts that train a subset (LoRA) freeze the rest in the weight dtype
        if hasattr(part, "prepare_for_training"):
            part.prepare_for_training(pipe.transformer.dtype)
    return model


def oriented_size(path) -> tuple[int, int]:
    """The size of an image file as :func:`core.io.images.load_image` gives it (EXIF rotation applied); header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # stored a quarter turn off
            return height, width
    return width, height


def crop_window(size: tuple[int, int], resolution: int) -> tuple[float, float, float, float]:
    """The part of a ``size`` image that :func:`trainer.data.cover_crop` keeps, normalized ``(x0, y0, x1, y1)``."""
    width, height = size
    scale = resolution / min(width, height)
    scaled_w, scaled_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left, top = (scaled_w - resolution) // 2, (scaled_h - resolution) // 2
    return left / scaled_w, top / scaled_h, (left + resolution) / scaled_w, (top + resolution) / scaled_h


@torch.no_grad()
def fixed_loss(model: AdapterTrainingModel, encoder: BatchEncoder, rows: list[Example], resolution: int,
               repeats: int = 4) -> float:
    """Mean loss over ``rows`` with noise and sigmas fixed by seed: comparable between adapters and runs."""
    total = 0.0
    for r in range(repeats):
        inputs = encoder.encode(rows, resolution, [("fixed", r, i) for i in range(len(rows))])
        total += float(model.per_sample_loss(inputs).mean())
    return total / repeats

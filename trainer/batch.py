"""Batch encoding for training: dataset rows to :class:`TrainingInputs` through the frozen VAE, text encoders and
image encoders (:class:`BatchEncoder`), their outputs cached by content (:class:`EncodingCache`).

Randomness is per sample: the noise and sigma of a row depend only on (seed, stage, step, slot in the global
batch), so the result does not depend on how a global batch is split over processes or accumulation steps, and
resuming at a step draws what an uninterrupted run would.

Where each character acts follows the engine's rules (:func:`core.conditioning.routing.route_characters`): a reference
without a mask or box covers the whole image, several such references are laid out left to right in caption
order, boxes are exact and masks are area averaged, all cut to the target's centre crop.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling
from PIL import Image

from core.io.cache import LRUCache
from core.conditioning.routing import Routing, route_characters, tag_weights, token_grid
from core.io.images import open_image
from core.conditioning.masks import RoutingMask
from core.io.paths import sha256_file
from core.conditioning.prompt import resolve_prompt

from .config import ObjectiveConfig
from .data import Example, load_target


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

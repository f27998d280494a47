"""FLUX.1 with InstantCharacter: put your characters into new images.

:class:`InstantCharacterPipeline` is a diffusers ``FluxPipeline`` with the character encoders, projector and
attention processors added. With no characters it is plain FLUX. Per-character work (encoder features and the
timestep-independent projector context) is cached by image content and reused across steps and calls; only the
time resampler (once per step, before the loop) and the character attention run per step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils import BaseOutput

from core.io.cache import LRUCache
from core.models.attention import CharacterAttentionLayers, CharacterCondition, mask_reach
from core.conditioning.control import MAX_CONTROLS, ControlError, ControlImage
from core.models.controlnet import ControlGuide, check_controlnet
from core.conditioning.character import Character, check_characters
from core.conditioning.regional_text import (RegionalText, RegionalTextMask, bound_characters,
                                             joint_attention_mask)
from core.conditioning.routing import Routing, route_characters, tag_weights, token_grid
from core.models.encoders import CharacterEncoder, CharacterFeatures
from core.loading.speed import step_cache_threshold
from core.limits import (MAX_GUIDANCE, MAX_SEQUENCE_LENGTH, MAX_STEPS, MAX_TRUE_CFG, check_int, check_number,
                         check_prompt, check_size)
from core.models.projector import CharacterProjector
from core.conditioning.prompt import ResolvedPrompt, resolve_prompt
from core.models.text_adapter import TextAdapter, TextAdapterError
from core.errors import UserError


class GenerationInputError(UserError, ValueError):
    """Invalid generation settings; the message names the argument and the bad value."""


def check_settings(prompt, height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5, true_cfg_scale=1.0,
                   num_images_per_prompt=1, max_sequence_length=512, output_type="pil",
                   multiple=16) -> tuple[int, int, int]:
    """The pipeline's arguments: the rules of :mod:`core.limits` (the ones requests are built with, here under the
    pipeline's argument names), then what only the tensors need (sides divisible by ``multiple``, the batch, the
    output type). Returns ``(height, width, num_inference_steps)`` as ints. Raises :class:`core.limits.LimitError` or
    :class:`GenerationInputError` naming the argument."""
    check_prompt(prompt, "prompt")
    width, height = check_size(width, height)
    num_inference_steps = check_int(num_inference_steps, "num_inference_steps", 1, MAX_STEPS)
    check_number(guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
    check_number(true_cfg_scale, "true_cfg_scale", 1.0, MAX_TRUE_CFG)
    check_int(max_sequence_length, "max_sequence_length", 1, MAX_SEQUENCE_LENGTH)
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            raise GenerationInputError(f"{name}={value}: this model needs a multiple of {multiple}")
    if not isinstance(num_images_per_prompt, int) or not 1 <= num_images_per_prompt <= 16:
        raise GenerationInputError(f"num_images_per_prompt={num_images_per_prompt!r}: must be 1 to 16")
    if output_type not in ("pil", "np", "latent"):
        raise GenerationInputError(f"output_type={output_type!r}: use 'pil', 'np' or 'latent'")
    return height, width, num_inference_steps


@dataclass
class InstantCharacterPipelineOutput(BaseOutput):
    """Output of :class:`InstantCharacterPipeline`.

    Attributes:
        images: PIL images, a numpy array (B, H, W, 3) in [0, 1], or packed latents (B, N, C).
        prompt: the prompt the text encoders saw (tags replaced).
        notes: messages for the user (automatic layout, characters never named, ...).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    prompt: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class ImageEdit:
    """The source, strength and region of one image-to-image or inpainting call, and its latents once prepared."""

    source: PIL.Image.Image
    strength: float
    region: object = None  # a RoutingMask, or None for image-to-image on the whole image
    notes: list[str] = field(default_factory=list)
    start: torch.Tensor | None = None  # packed starting latents (the source noised to the first timestep)
    source_latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    keep: torch.Tensor | None = None  # packed, 1 where the latents follow the source

    def route(self, characters: list[Character]) -> list[Character]:
        """The characters with the region as the mask of those that have none."""
        from dataclasses import replace

        from core.conditioning.edit import character_masks

        masks, notes = character_masks([c.mask for c in characters], self.region)
        self.notes += notes if characters else []
        return [c if c.mask is m else replace(c, mask=m) for c, m in zip(characters, masks)]

    def prepare(self, pipe, noise: torch.Tensor, height: int, width: int, timesteps) -> None:
        """Encodes the source (the VAE's mean: no random draw) and noises it to the first timestep with
        ``noise`` (packed, as ``prepare_latents`` drew it); with no timestep left, starts from the source."""
        from core.conditioning.edit import latent_region

        batch, device = noise.shape[0], noise.device
        pixels = pipe.image_processor.preprocess(self.source, height=height, width=width)
        pixels = pixels.to(device=device, dtype=pipe.vae.dtype)
        encoded = pipe.vae.encode(pixels).latent_dist.mode()
        encoded = (encoded - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        _, channels, rows, cols = encoded.shape
        packed = pipe._pack_latents(encoded.to(noise.dtype), 1, channels, rows, cols).expand(batch, -1, -1)
        self.source_latents, self.noise = packed, noise
        if len(timesteps):
            self.start = pipe.scheduler.scale_noise(packed, timesteps[:1].repeat(batch), noise)
        else:
            self.start = packed.clone()
        if self.region is not None:
            keep = 1.0 - latent_region(self.region, rows, cols, pipe.vae_scale_factor)
            keep = keep.to(device, noise.dtype)[None, None].expand(1, channels, rows, cols)
            self.keep = pipe._pack_latents(keep, 1, channels, rows, cols)

    def blend(self, pipe, latents: torch.Tensor, i: int, timesteps) -> torch.Tensor:
        """After step ``i``: outside the region, the source noised to the next timestep (diffusers' FLUX
        inpainting); unchanged for image-to-image."""
        if self.keep is None:
            return latents
        proper = self.source_latents
        if i < len(timesteps) - 1:
            proper = pipe.scheduler.scale_noise(proper, timesteps[i + 1:i + 2], self.noise)
        return self.keep * proper.to(latents.dtype) + (1 - self.keep) * latents

    def paste(self, images, output_type: str):
        """The decoded images on the source, feathered at the region's edge (:func:`core.conditioning.edit.paste_back`)."""
        from core.conditioning.edit import paste_back

        if output_type == "pil":
            return [paste_back(im, self.source, self.region) for im in images]
        pasted = [paste_back(PIL.Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)), self.source,
                             self.region) for a in images]
        return np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in pasted])


class InstantCharacterPipeline(FluxPipeline):
    r"""FLUX.1 text-to-image with InstantCharacter characters.

    Args (beyond ``FluxPipeline``'s):
        siglip (`SiglipVisionModel`), siglip_processor (`SiglipImageProcessor`): the SigLIP image encoder.
        dinov2 (`Dinov2Model`), dinov2_processor: the DINOv2 image encoder.
        image_proj (`CharacterProjector`): the projector of the adapter checkpoint.
        character_layers (`CharacterAttentionLayers`): the attention processors of the adapter checkpoint;
            they are installed on ``transformer``.
        controlnet (`FluxControlNetModel` or `FluxMultiControlNetModel`, optional): reads the control images
            (:meth:`load_controlnet` adds one later).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->siglip->dinov2->image_proj->controlnet->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "siglip", "siglip_processor", "dinov2",
                            "dinov2_processor", "image_proj", "text_adapter", "controlnet"]
    # the text adapter's layers run inside the transformer's forward: keep it beside the transformer
    _exclude_from_cpu_offload = ["text_adapter"]
    #: prompt embeddings and character features kept in memory (most recently used first)
    PROMPT_CACHE_SIZE = 16
    FEATURE_CACHE_SIZE = 32

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 siglip=None, siglip_processor=None, dinov2=None, dinov2_processor=None,
                 image_proj: CharacterProjector | None = None,
                 character_layers: CharacterAttentionLayers | None = None,
                 text_adapter: TextAdapter | None = None,
                 image_encoder=None, feature_extractor=None, controlnet=None):
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self.register_modules(siglip=siglip, siglip_processor=siglip_processor, dinov2=dinov2,
                              dinov2_processor=dinov2_processor, image_proj=image_proj, text_adapter=None,
                              controlnet=controlnet)
        self.character_layers = character_layers
        if character_layers is not None:
            character_layers.install(transformer)
        if text_adapter is not None:
            self.load_text_adapter(text_adapter)
        self.character_encoder = (CharacterEncoder(siglip, siglip_processor, dinov2, dinov2_processor)
                                  if siglip is not None and dinov2 is not None else None)
        self._feature_cache = LRUCache(self.FEATURE_CACHE_SIZE)
        self._context_cache = LRUCache(32)
        self._prompt_cache = LRUCache(self.PROMPT_CACHE_SIZE)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, base: str | os.PathLike = None, *, siglip=None, dinov2=None, adapter=None,
                        text_adapter=None, dtype: torch.dtype = torch.bfloat16, progress: bool = True, **kwargs):
        """Loads FLUX, the image encoders and the adapter from hub ids or local paths.

        Args:
            base: FLUX.1 in diffusers layout (hub id or folder); default ``black-forest-labs/FLUX.1-dev``.
                A "models directory" (``flux/``, ``siglip/``, ``dinov2/``, one adapter file) is also accepted,
                and then supplies the defaults for the other three.
            siglip: SigLIP vision model; default ``google/siglip-so400m-patch14-384``.
            dinov2: DINOv2 model; default ``facebook/dinov2-giant``.
            adapter: the adapter checkpoint (``.bin`` or ``.safetensors``, local path or ``repo_id/filename``);
                default ``tencent/InstantCharacter/instantcharacter_ip-adapter.bin``.
            text_adapter: an optional trained text adapter (``.safetensors`` written by the trainer).
            dtype: weight dtype of every component.
            kwargs: passed to ``FluxPipeline.from_pretrained`` (e.g. ``quantization_config``).
        """
        from core.loading.components import load_components  # local import: loading imports this module

        pipe = cls(**load_components(base, siglip=siglip, dinov2=dinov2, adapter=adapter, dtype=dtype,
                                     progress=progress, **kwargs))
        if text_adapter is not None:
            pipe.load_text_adapter(text_adapter)
        return pipe

    def load_text_adapter(self, adapter: "TextAdapter | str | os.PathLike") -> None:
        """Adds a text adapter (a :class:`TextAdapter` or a path to one) to the double-stream blocks."""
        if not isinstance(adapter, TextAdapter):
            adapter = TextAdapter.load(adapter)
        cfg, tcfg = adapter.config, self.transformer.config
        if self.siglip is not None and cfg.siglip_dim != self.siglip.config.hidden_size:
            raise TextAdapterError(f"the text adapter expects {cfg.siglip_dim}-wide SigLIP features, "
                                   f"the SigLIP model gives {self.siglip.config.hidden_size}")
        if cfg.attention_width != tcfg.num_attention_heads * tcfg.attention_head_dim:
            raise TextAdapterError(f"the text adapter is for attention width {cfg.attention_width}, the base model "
                                   f"has {tcfg.num_attention_heads * tcfg.attention_head_dim}")
        # the execution device, not the transformer's: with offloading the transformer may sit on the CPU
        adapter.to(device=self._execution_device, dtype=self.transformer.dtype)
        adapter.install(self.transformer)
        self.register_modules(text_adapter=adapter)

    def unload_text_adapter(self) -> None:
        """Removes the text adapter; generation is then exactly as without one."""
        TextAdapter.uninstall(self.transformer)
        self.register_modules(text_adapter=None)

    def load_controlnet(self, controlnet) -> None:
        """Adds a ``FluxControlNetModel`` (or a ``FluxMultiControlNetModel`` of several) for control images."""
        self.register_modules(controlnet=controlnet)

    def unload_controlnet(self) -> None:
        """Removes the ControlNet; generation without control images never used it."""
        self.register_modules(controlnet=None)

    # ------------------------------------------------------------------ characters
    def clear_caches(self) -> None:
        """Forgets cached character features, projector contexts and prompt embeddings."""
        self._feature_cache.clear()
        self.clear_character_contexts()
        self._prompt_cache.clear()

    def use_caches(self, prompt_cache: LRUCache | None = None, feature_cache: LRUCache | None = None) -> None:
        """Keeps prompt embeddings and/or character features in the given caches (of :class:`LRUCache`'s interface,
        e.g. a :class:`~core.io.cache.DiskBackedCache`) instead of the in-memory ones; ``None`` keeps that cache.

        Prompt keys are ``(prompt, max_sequence_length, str(device))`` with ``(embeds, pooled, text_ids)`` values;
        feature keys are :attr:`Character.key` with :class:`CharacterFeatures` values."""
        if prompt_cache is not None:
            self._prompt_cache = prompt_cache
        if feature_cache is not None:
            self._feature_cache = feature_cache

    def clear_character_contexts(self) -> None:
        """Forgets the cached projector contexts, the one cache made from the adapter's weights: call it when they
        change (training). Encoder features and prompt embeddings (frozen models) are kept."""
        self._context_cache.clear()

    def encode_character(self, character: Character) -> CharacterFeatures:
        """Encoder features of a character image, cached by image content."""
        if self.character_encoder is None or self.image_proj is None:
            raise GenerationInputError("this pipeline was loaded without the character adapter: characters unavailable")
        return self._feature_cache.get_or_make(character.key, lambda: self.character_encoder.encode(character.image))

    @torch.inference_mode()
    def character_context(self, character: Character) -> torch.Tensor:
        """The timestep-independent projector tokens of a character (1, 2N, inner_dim), cached."""
        proj_dtype = self.image_proj.dtype

        def make():
            f = self.encode_character(character).to(self._execution_device, proj_dtype)
            return self.image_proj(f.low_res_deep, f.low_res_shallow, f.high_res_deep)

        return self._context_cache.get_or_make((character.key, id(self.image_proj), proj_dtype), make)

    def character_tokens(self, characters, timesteps, dtype, device, batch, with_text: list[bool]):
        """Per step, per character: image tokens (B, Q, D) and text-adapter tokens or ``None``.

        Computed once per step, before the loop, from the cached per-character work. The one call a generation
        makes for them (a sequence indexed by step): subclasses may make them another way (the released code's,
        inside each step) and measurements may wrap it (``benchmarks/bench.TokensAhead``).
        """
        per_step = []
        contexts = [self.character_context(c) for c in characters]
        siglip_width = self.siglip.config.hidden_size
        siglip_feats = [self.encode_character(c).low_res_deep[..., :siglip_width].to(device, self.text_adapter.dtype)
                        if use else None for c, use in zip(characters, with_text)]
        with torch.inference_mode():
            for t in timesteps:
                # the released code conditions the resampler on the timestep in the latents' dtype
                step_t = t.expand(1).to(dtype)
                # batch 1: the attention broadcasts each character's K/V to every image of the batch
                image = [self.image_proj(context=ctx, timestep=step_t).to(device) for ctx in contexts]
                text = [self.text_adapter(f, step_t).expand(batch, -1, -1) if f is not None else None
                        for f in siglip_feats]
                per_step.append(list(zip(image, text)))
        return per_step

    def _text_masks(self, resolved: ResolvedPrompt, count: int, length: int, device) -> list:
        """Per character, weights over the T5 tokens that came from its tag (``None`` if never named)."""
        masks = []
        for i in range(count):
            if self.text_adapter is None or i not in resolved.spans:
                masks.append(None)
                continue
            masks.append(tag_weights(self.tokenizer_2, resolved.text, resolved.spans[i], length)[None].to(device))
        return masks

    def _regional_text(self, settings: RegionalText, resolved: ResolvedPrompt, order: list[int], routing: list,
                       length: int, device) -> RegionalTextMask | None:
        """The joint attention mask binding each character's words to its region, or ``None`` when ``settings``
        leave it off for these characters (:mod:`core.conditioning.regional_text`); ``order`` and ``routing`` as the
        conditions are applied."""
        if settings.mode == "off":
            return None
        words = [tag_weights(self.tokenizer_2, resolved.text, resolved.spans[i], length) > 0
                 if i in resolved.spans else None for i in order]
        bound = bound_characters(words, routing)
        if not settings.active_for(len(bound)):
            return None
        mask = joint_attention_mask([words[i] for i in bound], [routing[i].reshape(-1) > 0 for i in bound])
        return RegionalTextMask(mask[None, None].to(device), length, settings)

    def _routing(self, characters, resolved: ResolvedPrompt, height: int, width: int) -> Routing:
        """Where each character acts (:func:`core.conditioning.routing.route_characters`, the trainer's rules too)."""
        return route_characters([c.mask for c in characters], *token_grid(height, width, self.vae_scale_factor),
                                resolved.order, [c.name for c in characters])

    # ------------------------------------------------------------------ prompts
    def cached_prompt_embeds(self, prompt: str, device, max_sequence_length: int, notes: list | None = None):
        """``encode_prompt`` for one prompt, cached by text so repeated prompts are encoded once.

        CLIP (``prompt``) gets the longest whole-word start of the text that fits its tokenizer, T5 (``prompt_2``)
        the whole text (:func:`core.conditioning.prompt.clip_text`); a prompt that fits goes to both unchanged.
        When the text was cut for CLIP, a note says so in ``notes``."""
        from core.conditioning.prompt import CLIP_CUT_NOTE, clip_text

        clip_prompt, cut = clip_text(self.tokenizer, prompt) if self.tokenizer is not None else (prompt, False)
        if cut and notes is not None:
            notes.append(CLIP_CUT_NOTE.format(limit=self.tokenizer.model_max_length))

        def make():
            embeds, pooled, text_ids = self.encode_prompt(prompt=clip_prompt, prompt_2=prompt if cut else None,
                                                          device=device, num_images_per_prompt=1,
                                                          max_sequence_length=max_sequence_length)
            return embeds, pooled, text_ids
        return self._prompt_cache.get_or_make((prompt, max_sequence_length, str(device)), make)

    def check_generation_inputs(self, prompt, characters, height, width, num_inference_steps, guidance_scale,
                                true_cfg_scale, num_images_per_prompt, max_sequence_length, output_type):
        """``(height, width, num_inference_steps)`` as ints; raises a :class:`core.errors.UserError` naming the first bad argument."""
        size = check_settings(prompt, height, width, num_inference_steps, guidance_scale, true_cfg_scale,
                       num_images_per_prompt, max_sequence_length, output_type, multiple=self.vae_scale_factor * 2)
        check_characters(characters)
        return size

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        characters: list[Character] | None = None,
        negative_prompt: str | None = None,
        true_cfg_scale: float = 1.0,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        height: int = 1024,
        width: int = 1024,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        image: PIL.Image.Image | None = None,
        strength: float = 0.6,
        mask_image=None,
        control: list[ControlImage] | None = None,
        regional_text: RegionalText | str | bool | None = None,
        resolved_prompt: ResolvedPrompt | None = None,
    ):
        r"""Generates images with the given characters.

        Args:
            prompt: what to draw; characters may be named with ``[Name]`` tags.
            characters: the characters (see :class:`~core.conditioning.character.Character`); ``None`` or empty: plain FLUX.
            negative_prompt: what to avoid; used only when ``true_cfg_scale > 1``.
            true_cfg_scale: classifier-free guidance with the negative prompt (1 turns it off).
            num_inference_steps: denoising steps.
            guidance_scale: FLUX.1-dev's distilled guidance.
            height, width: image size in pixels, multiples of 16.
            num_images_per_prompt: images to make in one batch.
            generator: a ``torch.Generator`` for reproducible results.
            latents: optional packed starting noise.
            max_sequence_length: T5 tokens (up to 512).
            output_type: ``"pil"``, ``"np"`` or ``"latent"``.
            return_dict: return an :class:`InstantCharacterPipelineOutput` rather than a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict`` after each step; return
                ``{"latents": ...}`` to replace them; set ``pipe._interrupt = True`` to stop early.
            image: a source image to edit (image-to-image); ``None``: start from noise, as without this argument.
                Resized to ``width`` x ``height`` when it differs (with a note).
            strength: how much of the source to redo, 0 (keep it: the VAE round trip) to 1 (ignore it); only the last
                ``ceil(strength * num_inference_steps)`` steps run, from their noise level.
            mask_image: with ``image``, the region to redo (inpainting): a
                :class:`~core.conditioning.masks.RoutingMask`, an image (white = redo) or a layout/box spec.
                Outside it the latents follow the noised source at every step; the decoded result is pasted on
                the source so that pixels beyond a feathered edge are the source's exactly. Characters without a
                mask of their own act in the region.
            control: control images (:class:`~core.conditioning.control.ControlImage`: kind, scale, step range)
                read by ``self.controlnet`` (:mod:`core.models.controlnet`); ``None`` or empty: no ControlNet
                runs. Each is resized to the output size when it differs (with a note). As in diffusers'
                ``FluxControlNetPipeline``, their VAE latents are sampled with ``generator`` before the noise.
            regional_text: bind each character's words to its region
                (:class:`~core.conditioning.regional_text.RegionalText`, or ``"auto"``/``"on"``/``"off"``); ``None``:
                ``auto``, on when two or more characters have both a region and words in the prompt. ``"off"`` is
                the attention of before, bit for bit.
            resolved_prompt: ``prompt`` already resolved against ``characters``
                (:func:`~core.conditioning.prompt.resolve_prompt`), as a request resolves it once
                (:meth:`core.request.GenerationRequest.pipeline_kwargs`); ``None``: resolved here.
        """
        characters = list(characters or [])
        regional_settings = RegionalText.parse(regional_text)
        height, width, num_inference_steps = self.check_generation_inputs(
            prompt, characters, height, width, num_inference_steps, guidance_scale, true_cfg_scale,
            num_images_per_prompt, max_sequence_length, output_type)
        edit = self._edit_inputs(image, strength, mask_image, width, height) if image is not None else None
        if edit is None and mask_image is not None:
            raise GenerationInputError("mask_image needs a source image to inpaint (image=...)")
        if edit is not None and edit.region is not None:
            characters = edit.route(characters)
        control, control_notes = self._control_inputs(control, width, height)
        resolved = resolved_prompt if resolved_prompt is not None else resolve_prompt(prompt, characters)
        notes = list(resolved.notes) + (edit.notes if edit is not None else []) + control_notes
        self._guidance_scale = guidance_scale
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        batch = num_images_per_prompt

        embeds, pooled, text_ids = self.cached_prompt_embeds(resolved.text, device, max_sequence_length, notes)
        prompt_embeds, pooled_prompt_embeds = embeds.repeat(batch, 1, 1), pooled.repeat(batch, 1)
        do_true_cfg = true_cfg_scale > 1 and negative_prompt is not None
        if do_true_cfg:
            n_embeds, n_pooled, negative_text_ids = self.cached_prompt_embeds(negative_prompt, device,
                                                                              max_sequence_length)
            negative_prompt_embeds, negative_pooled = n_embeds.repeat(batch, 1, 1), n_pooled.repeat(batch, 1)

        guide = None
        if control:  # encoded first: the control latents are drawn from the generator before the noise
            guide = ControlGuide.prepare(self, control, batch, height, width, generator, device)
        num_channels_latents = self.transformer.config.in_channels // 4
        latents, latent_image_ids = self.prepare_latents(batch, num_channels_latents, height, width,
                                                         prompt_embeds.dtype, device, generator, latents)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(latents.shape[1], self.scheduler.config.get("base_image_seq_len", 256),
                             self.scheduler.config.get("max_image_seq_len", 4096),
                             self.scheduler.config.get("base_shift", 0.5), self.scheduler.config.get("max_shift", 1.15))
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device,
                                                            sigmas=sigmas, mu=mu)
        begin = 0
        if edit is not None:
            # the noise prepare_latents drew is the img2img noise: the source is noised with it to the first step
            timesteps, begin = self._edit_timesteps(timesteps, num_inference_steps, edit.strength)
            num_inference_steps = len(timesteps)
            edit.prepare(self, latents, height, width, timesteps)
            latents = edit.start
        self._num_timesteps = len(timesteps)
        if guide is not None:
            guide.set_steps(len(timesteps))
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(batch)

        step_tokens = regional = None
        masked_steps = 0
        if characters:
            text_masks = self._text_masks(resolved, len(characters), prompt_embeds.shape[1], device)
            placed = self._routing(characters, resolved, height, width)
            notes += placed.notes
            characters = [characters[i] for i in placed.order]
            text_masks = [text_masks[i] for i in placed.order]
            routing = [None if w is None else w.to(device)[None] for w in placed.weights]
            reaches = [mask_reach(w) for w in routing]
            step_tokens = self.character_tokens(characters, timesteps, latents.dtype, device, batch,
                                                [m is not None for m in text_masks])
            regional = self._regional_text(regional_settings, resolved, placed.order, placed.weights,
                                           prompt_embeds.shape[1], device)
            if regional is not None:
                masked_steps = regional_settings.masked_steps(len(timesteps))
                notes.append(f"regional text: each character's words act in its region only, for the first "
                             f"{masked_steps} of {len(timesteps)} steps")

        self.scheduler.set_begin_index(begin)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                self._current_timestep = t
                timestep = t.expand(batch).to(latents.dtype)
                conditions = negative_conditions = None
                if step_tokens is not None:
                    # with true CFG, each character's K/V go from the first pass to the second (one dict each)
                    conditions = [CharacterCondition(tok, c.scale, w, text_tok, text_mask, reach,
                                                     {} if do_true_cfg else None)
                                  for (tok, text_tok), c, w, text_mask, reach
                                  in zip(step_tokens[i], characters, routing, text_masks, reaches)]
                    # the negative prompt has no tags: it gets the image tokens only, as in the released code
                    negative_conditions = [CharacterCondition(c.tokens, c.scale, c.mask, reach=c.reach,
                                                              kv_cache=c.kv_cache) for c in conditions]
                residuals = None
                if guide is not None:
                    # read with the prompt; the negative prompt's pass adds the same residuals, as in diffusers
                    residuals = guide.residuals(i, latents, timestep / 1000, guidance_scale, pooled_prompt_embeds,
                                                prompt_embeds, text_ids, latent_image_ids)
                    residuals = residuals + (guide.repeats_blocks,)
                control = {} if residuals is None else {"residuals": residuals}  # none: the call of before
                # the prompt's pass only: the negative prompt has no character words to bind
                bound = {"regional": regional} if regional is not None and i < masked_steps else {}
                noise_pred = self._predict(latents, timestep, guidance, pooled_prompt_embeds, prompt_embeds,
                                           text_ids, latent_image_ids, conditions, **control, **bound)
                if do_true_cfg:
                    neg_noise_pred = self._predict(latents, timestep, guidance, negative_pooled,
                                                   negative_prompt_embeds, negative_text_ids, latent_image_ids,
                                                   negative_conditions, context="uncond", **control)
                    noise_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if edit is not None:
                    latents = edit.blend(self, latents, i, timesteps)
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.pop("latents", latents)
                progress_bar.update()
        self._current_timestep = None

        if output_type == "latent":
            image = latents
        else:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
            image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)
            if edit is not None and edit.region is not None:
                image = edit.paste(image, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return InstantCharacterPipelineOutput(images=image, prompt=resolved.text, notes=notes)

    # ------------------------------------------------------------------ editing
    def _edit_inputs(self, image, strength, mask_image, width, height) -> "ImageEdit":
        """The checked source, strength and region of an edit (:class:`GenerationInputError` naming the bad one)."""
        from core.conditioning.edit import EditError, check_region, check_strength, fit_source, load_region, load_source

        if self.transformer.config.in_channels != 4 * self.vae.config.latent_channels:
            raise GenerationInputError(
                f"this base model takes {self.transformer.config.in_channels} input channels (FLUX.1 Fill?): "
                "editing with characters needs FLUX.1-dev; load it and use a mask to inpaint")
        try:
            strength = check_strength(strength)
            # a request has read its source already (RGB): used as it is
            source = image if isinstance(image, PIL.Image.Image) and image.mode == "RGB" else load_source(image)
            region = None
            notes: list[str] = []
            if mask_image is not None:
                region, notes = load_region(mask_image, source.size)
                check_region(region, width, height)
        except EditError as exc:
            raise GenerationInputError(str(exc)) from None
        source, fit_notes = fit_source(source, width, height)
        return ImageEdit(source, strength, region, notes + fit_notes)

    def _edit_timesteps(self, timesteps, num_inference_steps: int, strength: float):
        """The last ``ceil(strength * steps)`` timesteps (diffusers' img2img ``get_timesteps``) and the
        scheduler index they begin at."""
        init = min(num_inference_steps * strength, num_inference_steps)
        start = int(max(num_inference_steps - init, 0)) * self.scheduler.order
        return timesteps[start:], start

    def _control_inputs(self, control, width: int, height: int) -> tuple[list[ControlImage], list[str]]:
        """The checked control inputs at the output size, and the notes of those resized."""
        control = list(control or [])
        if not control:
            return [], []
        if len(control) > MAX_CONTROLS:
            raise GenerationInputError(f"{len(control)} control images given: at most {MAX_CONTROLS}")
        if any(not isinstance(c, ControlImage) for c in control):
            raise GenerationInputError("control must be a list of ControlImage (core.conditioning.control)")
        if self.controlnet is None:
            raise GenerationInputError("control images need a ControlNet: none is loaded (load_controlnet)")
        fitted, notes = [], []
        for i, c in enumerate(control):
            c, note = c.fitted(width, height, f"{c.kind} ({i + 1})" if len(control) > 1 else "")
            fitted.append(c)
            notes += note
        try:
            check_controlnet(self.controlnet, fitted)
        except ControlError as exc:
            raise GenerationInputError(str(exc)) from None
        return fitted, notes

    def _predict(self, latents, timestep, guidance, pooled, embeds, text_ids, image_ids, conditions=None,
                 context: str = "cond", residuals=None, regional: RegionalTextMask | None = None):
        """One transformer call; ``context`` (``cond`` or ``uncond``, the negative prompt's) names the state a step
        cache keeps for it (:func:`core.loading.speed.set_step_cache`); ``residuals`` are a ControlNet's
        ``(block_samples, single_block_samples, repeat)`` (:class:`core.models.controlnet.ControlGuide`);
        ``regional``: the regional-text mask of this step, if any."""
        kwargs = None
        if conditions:
            kwargs = {"character_conditions": conditions, "text_seq_len": embeds.shape[1]}
            if regional is not None:
                kwargs["regional_text"] = regional
        control = {}
        if residuals is not None:
            control = dict(controlnet_block_samples=residuals[0], controlnet_single_block_samples=residuals[1],
                           controlnet_blocks_repeat=residuals[2])
        step_cache = contextlib.nullcontext()
        if step_cache_threshold(self.transformer) is not None:
            step_cache = self.transformer.cache_context(context)
        with step_cache:
            return self.transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                                    pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                    img_ids=image_ids, joint_attention_kwargs=kwargs, return_dict=False,
                                    **control)[0]

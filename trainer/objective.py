"""The training objective: flow matching (paper Eq. 5) on packed FLUX latents, conditioned on the adapter.

For a target image with latent ``x0`` (packed FLUX tokens, (B, N, C)), noise ``eps`` and ``sigma`` in (0, 1)::

    z_sigma = (1 - sigma) * x0 + sigma * eps
    loss    = w(sigma) * || v_theta(z_sigma, sigma, text, c) - (eps - x0) ||^2

``c`` is the reference image through the frozen SigLIP + DINOv2 encoders, the trainable projector and the
trainable character attention (K/V) layers. FLUX, its text encoders and VAE stay frozen. ``sigma`` is drawn with
``diffusers.training_utils.compute_density_for_timestep_sampling`` (optionally with FLUX's resolution-dependent
shift, :meth:`trainer.batch.BatchEncoder.draw`), and ``w`` is ``compute_loss_weighting_for_sd3``.

The parts that train come from :mod:`trainer.trainable`; the batches from :mod:`trainer.batch`. Training the text
adapter alone keeps the image adapter in the forward pass, frozen.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
from diffusers.training_utils import compute_loss_weighting_for_sd3
from torch import nn

from .batch import BatchEncoder, TrainingInputs
from .config import ObjectiveConfig
from .data import Example
from .trainable import INSTALL_FIRST, TRAINABLE_PARTS, ImageAdapterPart, TextAdapterPart, TrainablePart


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

    @property
    def frozen_parts(self) -> dict[str, TrainablePart]:
        """The conditioning parts that run but do not train, by name (not submodules: DDP neither wraps nor syncs
        them)."""
        return self._frozen.parts

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


@torch.no_grad()
def fixed_loss(model: AdapterTrainingModel, encoder: BatchEncoder, rows: list[Example], resolution: int,
               repeats: int = 4) -> float:
    """Mean loss over ``rows`` with noise and sigmas fixed by seed: comparable between adapters and runs."""
    total = 0.0
    for r in range(repeats):
        inputs = encoder.encode(rows, resolution, [("fixed", r, i) for i in range(len(rows))])
        total += float(model.per_sample_loss(inputs).mean())
    return total / repeats

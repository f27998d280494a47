"""Running FLUX ControlNets inside the pipeline: diffusers' ``FluxControlNetModel`` / ``FluxMultiControlNetModel``.

:class:`ControlGuide` holds one call's control inputs once prepared (the control images VAE-encoded and packed,
as diffusers' ``FluxControlNetPipeline`` does, its generator draws included) and gives, for each step, the
ControlNet residuals the transformer adds after its blocks (``controlnet_block_samples``,
``controlnet_single_block_samples``). Per step each control's scale is multiplied by 1 inside its step range and
0 outside it, diffusers' ``controlnet_keep``; a step where every control is outside its range runs no ControlNet
(adding residuals scaled by 0 would change nothing).

Which ControlNet reads which image is diffusers' rule: one ``FluxControlNetModel`` reads every image (several
images through a ``FluxMultiControlNetModel`` of that one net, the Union-Pro way); a
``FluxMultiControlNetModel`` of several nets gives the i-th image to the i-th net.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxControlNetModel, FluxMultiControlNetModel

from core.conditioning.control import ControlError, ControlImage

# InstantX's FLUX.1-dev-Controlnet-Union (a mode embedding, ``num_mode`` set): its control modes by kind.
# Union-Pro-2.0 has no mode embedding and reads the kind from the image itself.
UNION_MODES = {"canny": 0, "depth": 2, "pose": 4, "gray": 5}


def control_steps(count: int, controls: list[ControlImage]) -> list[list[float]]:
    """Per step, per control: 1.0 where the step lies inside the control's range, else 0.0 (diffusers'
    ``controlnet_keep``: step ``i`` of ``count`` is kept when ``start <= i/count`` and ``(i+1)/count <= end``)."""
    return [[1.0 - float(i / count < c.start or (i + 1) / count > c.end) for c in controls] for i in range(count)]


def _nets(controlnet) -> list[FluxControlNetModel]:
    return list(controlnet.nets) if isinstance(controlnet, FluxMultiControlNetModel) else [controlnet]


def check_controlnet(controlnet, controls: list[ControlImage]) -> None:
    """Raises :class:`ControlError` when ``controls`` cannot run on ``controlnet`` (too few nets, no mode)."""
    nets = _nets(controlnet)
    if len(nets) > 1 and len(nets) != len(controls):
        raise ControlError(f"{len(controls)} control images for {len(nets)} ControlNets: give one image per "
                           "ControlNet")
    for i, c in enumerate(controls):
        net = nets[i if len(nets) > 1 else 0]
        if net.union and c.kind not in UNION_MODES:
            raise ControlError(f"this union ControlNet has no {c.kind} mode: use one of {', '.join(UNION_MODES)}")


@dataclass
class ControlGuide:
    """One call's controls, prepared; :meth:`residuals` runs the ControlNet(s) for a step.

    Attributes:
        controlnet: a ``FluxControlNetModel`` or ``FluxMultiControlNetModel``.
        controls: the control inputs, in order.
        images: per control, the packed control latents (B, N, C), or pixels (B, 3, H, W) for a net with an
            ``input_hint_block`` (XLabs' layout).
        modes: per control, the mode tensor (B,) of a union net (-1 where the net has no modes).
        keep: per step, per control, 1.0 inside its range else 0.0 (:func:`control_steps`).
        runner: what runs them: the net itself for one image, else a ``FluxMultiControlNetModel``.
    """

    controlnet: object
    controls: list[ControlImage]
    images: list[torch.Tensor]
    modes: list[torch.Tensor]
    keep: list[list[float]]
    runner: object = None

    @property
    def repeats_blocks(self) -> bool:
        """XLabs' nets (an ``input_hint_block``) give residuals the transformer repeats over its blocks."""
        return _nets(self.controlnet)[0].input_hint_block is not None

    @classmethod
    @torch.no_grad()
    def prepare(cls, pipe, controls: list[ControlImage], batch: int, height: int, width: int, generator,
                device) -> "ControlGuide":
        """Encodes each control image as ``FluxControlNetPipeline`` does: ``image_processor.preprocess`` at the
        output size, the VAE's latent *sample* drawn with ``generator`` (so, as there, before the starting
        noise), shifted, scaled and packed. Call it before ``prepare_latents``."""
        controlnet = pipe.controlnet
        check_controlnet(controlnet, controls)
        nets = _nets(controlnet)
        images, modes = [], []
        for i, control in enumerate(controls):
            net = nets[i if len(nets) > 1 else 0]
            pixels = pipe.image_processor.preprocess(control.image, height=height, width=width)
            pixels = pixels.repeat_interleave(batch, dim=0).to(device=device, dtype=pipe.vae.dtype)
            if net.input_hint_block is None:
                latents = pipe.vae.encode(pixels).latent_dist.sample(generator)
                latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
                channels, rows, cols = latents.shape[1:]
                images.append(pipe._pack_latents(latents, batch, channels, rows, cols))
            else:
                images.append(pixels)
            mode = UNION_MODES[control.kind] if net.union else -1
            modes.append(torch.tensor(mode, dtype=torch.long).expand(batch).to(device))
        runner = controlnet
        if isinstance(controlnet, FluxControlNetModel) and len(controls) > 1:
            runner = FluxMultiControlNetModel([controlnet])  # several images through one net
        return cls(controlnet, list(controls), images, modes, [], runner)

    def set_steps(self, count: int) -> None:
        """The per-step scales' on/off pattern for the ``count`` steps that run."""
        self.keep = control_steps(count, self.controls)

    def residuals(self, i: int, latents, timestep, guidance_scale: float, pooled, embeds, text_ids, image_ids):
        """The ControlNet residuals for step ``i``: ``(block_samples, single_block_samples)``, or ``(None, None)``
        when no control acts at this step. ``timestep`` is the transformer's (already divided by 1000)."""
        keep = self.keep[i]
        if not any(keep):
            return None, None
        nets = _nets(self.controlnet)
        guidance = None
        if nets[0].config.guidance_embeds:
            guidance = torch.tensor([guidance_scale], device=latents.device).expand(latents.shape[0])
        scales = [c.scale * k for c, k in zip(self.controls, keep)]
        common = dict(hidden_states=latents, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                      encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)
        if isinstance(self.runner, FluxControlNetModel):
            mode = self.modes[0][:, None] if self.runner.union else None
            return self.runner(controlnet_cond=self.images[0], controlnet_mode=mode, conditioning_scale=scales[0],
                               **common)
        return self.runner(controlnet_cond=self.images, controlnet_mode=self.modes, conditioning_scale=scales,
                           **common)

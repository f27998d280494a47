"""Does stage 1 learn? Trains the tiny models on synthetic characters and measures it.

    python -m trainer.bench_learning [--steps 300] [--images 8] [--work DIR]

Prints the mean flow-matching loss of the first and last ``--window`` steps, and two reconstruction measures of
the exported adapter against the untrained one, both loaded through the engine
(``InstantCharacterPipeline.from_pretrained(..., adapter=...)``), with each training image as its own reference:

* **x0 error**: the latent MSE of the one-step estimate ``x0 = z_sigma - sigma * v`` at sigma 0.3/0.5/0.7/0.9,
  fixed noise (what stage 1 trains: reconstructing the reference);
* **generation error**: the latent MSE between a full 8-step generation from noise (the engine's ``__call__``,
  guidance 1.0 as in training) and the reference's latents (the tiny VAE is random, so pixels would measure it).

The tiny models are random, so absolute numbers mean nothing; the trained-vs-untrained comparison does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _config_text(out: Path, data: Path, cache: Path, steps: int, batch: int, lr: float) -> str:
    return f"""
output_dir = "{out}"
seed = 0
[models]
source = "tiny"
[data]
unpaired = "{data}"
max_sequence_length = 16
cache_dir = "{cache}"
cache_latents = true
cache_text_embeddings = true
cache_character_features = true
[run]
mixed_precision = "no"
checkpoint_every = 0
[optimizer]
weight_decay = 0.0
[[stages]]
name = "stage1-unpaired-32"
data = "unpaired"
resolution = 32
batch_size = {batch}
steps = {steps}
learning_rate = {lr}
warmup_steps = 20
"""


@torch.no_grad()
def x0_error(pipe, rows, encoder_cache, sigmas=(0.3, 0.5, 0.7, 0.9)) -> float:
    """Latent MSE of the one-step x0 estimate with each image as its own reference, fixed noise."""
    from .config import ObjectiveConfig
    from .batch import BatchEncoder, EncodingCache
    from .objective import build_training_model

    objective = ObjectiveConfig()
    model = build_training_model(pipe, ["image_adapter"], objective, fresh=False, seed=0)
    encoder = BatchEncoder(pipe, objective, 16, EncodingCache(encoder_cache, ("features",)), 0)
    errors = []
    for k, sigma in enumerate(sigmas):
        inputs = encoder.encode(rows, 32, [("x0", k, i) for i in range(len(rows))])
        inputs.sigmas = torch.full_like(inputs.sigmas, sigma)
        s = inputs.sigmas[:, None, None]
        noisy = (1 - s) * inputs.latents + s * inputs.noise
        kwargs = {"text_seq_len": inputs.prompt_embeds.shape[1]}
        for part in model.parts.values():
            kwargs.update(part.attention_kwargs(inputs, inputs.sigmas * 1000))
        guidance = torch.full_like(inputs.sigmas, objective.guidance)
        v = pipe.transformer(hidden_states=noisy, timestep=inputs.sigmas, guidance=guidance,
                             pooled_projections=inputs.pooled, encoder_hidden_states=inputs.prompt_embeds,
                             txt_ids=inputs.text_ids, img_ids=inputs.image_ids, joint_attention_kwargs=kwargs,
                             return_dict=False)[0]
        errors.append(float(((noisy - s * v) - inputs.latents).pow(2).mean()))
    return float(np.mean(errors))


@torch.no_grad()
def generation_error(pipe, rows, encoder_cache, steps: int = 8, guidance: float = 1.0) -> float:
    """Latent MSE between a full generation from noise (the engine's ``__call__``) and the reference's latents.

    Compared in latent space: the tiny VAE is random, so its decoder does not invert its encoder and pixel
    errors would measure the VAE rather than the adapter.
    """
    from core.conditioning.character import Character
    from core.io.images import load_image

    from .config import ObjectiveConfig
    from .batch import BatchEncoder, EncodingCache

    encoder = BatchEncoder(pipe, ObjectiveConfig(), 16, EncodingCache(encoder_cache, ("features",)), 0)
    errors = []
    for i, row in enumerate(rows):
        made = pipe(row.caption, characters=[Character(load_image(row.target))], height=32, width=32,
                    num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(i),
                    max_sequence_length=16, output_type="latent").images
        errors.append(float((made.float().cpu() - encoder.latents(row.target, 32)).pow(2).mean()))
    return float(np.mean(errors))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="tiny random models need more than the paper's 2e-5")
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="measure the run already in --work (no training)")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    work = Path(args.work or tempfile.mkdtemp(prefix="ic-bench-"))
    os.environ.setdefault("INSTANTCHARACTER_HOME", str(work / "home"))
    from core.models.pipeline import InstantCharacterPipeline
    from core.loading.sources import ModelSources

    from .config import load_config
    from .data import load_dataset
    from .loop import train
    from .synthetic import make_unpaired

    data = make_unpaired(work / "data", args.images)
    config_path = work / "config.toml"
    out = work / "run"
    start = time.time()
    if args.reuse and (out / "adapter.safetensors").is_file():
        from .events import read_events

        losses = [e["loss"] for e in read_events(out) if e["event"] == "step"]
    else:
        config_path.write_text(_config_text(out, data, work / "cache", args.steps, args.batch, args.lr))
        losses = train(load_config(config_path), resume=False).losses
    elapsed = time.time() - start
    w = min(args.window, len(losses) // 2)
    first, last = float(np.mean(losses[:w])), float(np.mean(losses[-w:]))
    print(f"stage 1: {len(losses)} steps, batch {args.batch}, {elapsed:.0f} s")
    print(f"flow-matching loss, mean of first {w} steps: {first:.4f}; last {w} steps: {last:.4f} "
          f"({100 * (last - first) / first:+.1f}%)")

    rows = load_dataset(data)
    results = {}
    for label, adapter in (("untrained", None), ("trained", str(out / "adapter.safetensors"))):
        pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), adapter=adapter,
                                                        dtype=torch.float32, progress=False)
        pipe.set_progress_bar_config(disable=True)
        results[label] = (x0_error(pipe, rows, work / "cache"), generation_error(pipe, rows, work / "cache"))
    (u_x0, u_px), (t_x0, t_px) = results["untrained"], results["trained"]
    print(f"reconstruction x0 error (latent MSE): untrained {u_x0:.4f} -> trained {t_x0:.4f} "
          f"({100 * (t_x0 - u_x0) / u_x0:+.1f}%)")
    print(f"reconstruction by full generation (latent MSE, 8 steps): untrained {u_px:.4f} -> trained {t_px:.4f} "
          f"({100 * (t_px - u_px) / u_px:+.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

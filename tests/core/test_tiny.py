"""The tiny bundle: FLUX's 8x VAE layout, so the real settings stay cheap; a bundle of an older version is rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.loading import tiny


def test_the_tiny_vae_compresses_8x_like_flux(tiny_pipe, tiny_models):
    assert tiny_models.name == f"v{tiny.TINY_VERSION}"
    assert tiny_pipe.vae_scale_factor == 8
    assert tiny_pipe.vae.config.latent_channels == 16 and tiny_pipe.transformer.config.in_channels == 64
    # the default size: a 128x128 latent, packed 2x2 into 64x64 = 4096 image tokens
    latents, image_ids = tiny_pipe.prepare_latents(1, 16, 1024, 1024, torch.float32, "cpu",
                                                   torch.Generator().manual_seed(0), None)
    assert latents.shape == (1, 4096, 64) and image_ids.shape == (4096, 3)
    with torch.no_grad():
        encoded = tiny_pipe.vae.encode(torch.zeros(1, 3, 32, 48)).latent_dist.mean
    assert encoded.shape == (1, 16, 4, 6)
    image = tiny_pipe("a cat", num_inference_steps=1, height=32, width=48, output_type="np").images
    assert image.shape == (1, 32, 48, 3)


def test_a_bundle_of_another_version_is_rebuilt(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny-bundle.json").write_text(json.dumps({"version": "2", "seed": 0}))
    (folder / "from-v2.txt").write_text("a 1x VAE")
    built = []

    def build(target, seed=0):
        built.append(target)
        (Path(target) / "tiny-bundle.json").write_text(json.dumps({"version": tiny.TINY_VERSION, "seed": seed}))
        return target

    monkeypatch.setattr(tiny, "build_tiny_bundle", build)
    assert tiny.ensure_tiny_bundle(folder) == folder
    assert len(built) == 1 and not (folder / "from-v2.txt").exists()
    assert tiny.ensure_tiny_bundle(folder) == folder and len(built) == 1  # current now: kept as it is
    (folder / "tiny-bundle.json").write_text("{not json")
    assert tiny.ensure_tiny_bundle(folder) == folder and len(built) == 2  # a broken marker: built again

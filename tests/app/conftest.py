"""Studio fixtures: a launched studio on tiny models (once per session) and small test images."""

from __future__ import annotations

import socket
from argparse import Namespace

import pytest
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def studio(tiny_models, tmp_path_factory):
    """``(ctx, demo, url)``: the studio on tiny models, listening on a free loopback port."""
    from app.context import StudioContext, StudioSettings
    from app.studio import build_studio, launch_kwargs

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path_factory.mktemp("outputs")))
    demo = build_studio(ctx)
    args = Namespace(host="127.0.0.1", port=free_port(), share=False, auth=None)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(ctx, args))
    yield ctx, demo, url
    demo.close()


@pytest.fixture(scope="session")
def character_files(tmp_path_factory):
    """Two small character images on disk (red, blue)."""
    folder = tmp_path_factory.mktemp("characters")
    paths = []
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 60, 200))):
        image = Image.new("RGB", (64, 64), (250, 250, 250))
        image.paste(colour, (16, 8, 48, 60))
        paths.append(folder / f"{name}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def tiny_lora(tiny_models, tmp_path_factory):
    """A random LoRA for the tiny transformer, made with peft and saved with diffusers' LoRA saver."""
    pytest.importorskip("peft", reason="style LoRAs need peft")
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(tiny_models / "flux" / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name="style.safetensors")
    return folder / "style.safetensors"

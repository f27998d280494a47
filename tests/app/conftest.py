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

"""The two image hashes: the content key (caches) and the RGB digest that PNG records store (pinned: a change would
stop older PNGs' edit sources and control images from recalling)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.io.images import image_key, rgb_digest


def _image() -> Image.Image:
    return Image.fromarray((np.arange(4 * 6 * 4).reshape(4, 6, 4) * 3 % 256).astype("uint8"), "RGBA")


def test_the_rgb_digest_is_the_one_older_records_hold():
    image = _image()
    assert rgb_digest(image) == "0f5746b2eea9e10d02e6c45508a3f804341858447b2c30dc24a5e45e9f3f868e"
    assert rgb_digest(image.convert("RGB")) == rgb_digest(image)  # the picture, whatever its mode


def test_the_content_key_tells_modes_apart():
    image = _image()
    assert image_key(image) == "ed138d59224aa3bfe5049626750e84307bc0f635d7c620ac32476d4592f765b4"
    assert image_key(image.convert("RGB")) == "a2734af3a06f2931b777666a21e18eb9e230f4a5c6b1b984094c369ee1bdf901"

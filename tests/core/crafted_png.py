"""Small crafted PNG files for the bad-input tests: headers that claim huge sizes, text chunks that inflate hugely.

Everything is written chunk by chunk, so a 900-megapixel header or a 100 MB text chunk costs the test a few kB.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

from PIL import Image, PngImagePlugin

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeros_deflated(size: int, block: int = 1 << 20) -> bytes:
    """``size`` zero bytes, deflated without ever holding them all."""
    packer, out = zlib.compressobj(9), []
    zero = bytes(block)
    for start in range(0, size, block):
        out.append(packer.compress(zero[:min(block, size - start)]))
    out.append(packer.flush())
    return b"".join(out)


def bilevel_png(width: int, height: int, *, pixels: bool = True, text: list[bytes] = ()) -> bytes:
    """A black 1-bit PNG of ``width`` x ``height``: real pixel data when ``pixels`` (zeros deflate 1000:1), else
    only a header and a token IDAT (a decompression bomb's shape: Pillow must refuse it from the header)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zeros_deflated(height * (1 + (width + 7) // 8)) if pixels else zlib.compress(bytes(64))
    return SIGNATURE + chunk(b"IHDR", header) + b"".join(text) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def ztxt_bomb(key: str, inflated: int) -> bytes:
    """A zTXt chunk ``key`` whose text inflates to ``inflated`` bytes."""
    return chunk(b"zTXt", key.encode() + b"\0\0" + zeros_deflated(inflated))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_with_settings(settings, image: Image.Image | None = None) -> bytes:
    """A small PNG carrying ``settings`` (a dict, or raw JSON text) as the studio's ``instantcharacter`` chunk."""
    text = settings if isinstance(settings, str) else json.dumps(settings)
    info = PngImagePlugin.PngInfo()
    info.add_text("instantcharacter", text, zip=True)
    buffer = io.BytesIO()
    (image or Image.new("RGB", (32, 32), (90, 120, 200))).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def record(**fields) -> dict:
    """A valid record's JSON object with ``fields`` replaced."""
    return {"prompt": "a portrait", "seed": 7, "width": 64, "height": 64, "num_inference_steps": 2,
            "guidance_scale": 3.5, "true_cfg_scale": 1.0, "characters": [], "loras": [], "models": {},
            "version": 1} | fields

"""Gradio components with studio-specific input handling."""

import hashlib
import io
from pathlib import Path

import gradio as gr
from PIL import Image, UnidentifiedImageError

from core.io.paths import atomic_path

from .errors import ComponentInputError

UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CharacterImage(gr.Image):
    """``gr.Image`` (same front end) that hands unreadable uploads to the handler as a file path.

    Stock ``gr.Image`` opens every upload with Pillow before the handler runs, so a broken file fails with a
    generic error; here the handler's own checks (``core.io.images.load_image``) report it in one clear line.
    """

    is_template = True  # use gr.Image's front end

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except UNREADABLE:
            return str(payload.path) if payload is not None and payload.path else None


class Canvas(gr.ImageEditor):
    """``gr.ImageEditor`` (same front end) whose images reach the browser whole, and come back with a clear message
    when the browser sent one that cannot be read.

    Stock ``gr.ImageEditor`` saves each image it sends under the hash of its bytes, and rewrites that file in place
    whenever the same image is sent again. The routing canvas is sent again, with the same white background, on
    every size change, so the browser could fetch a file being rewritten, show a cut-off background, and send an
    empty one back with the next Generate. Here each image is written once, under a temporary name renamed into
    place, and a file already there is left as it is.
    """

    is_template = True  # use gr.ImageEditor's front end

    def postprocess(self, value):
        if isinstance(value, dict):
            value = {key: [self._saved(image) for image in part] if key == "layers" and part else self._saved(part)
                     for key, part in value.items()}
        else:
            value = self._saved(value)
        return super().postprocess(value)

    def _saved(self, image):
        """``image`` (a PIL image) as the path of a complete file in Gradio's cache; anything else as it is."""
        if not isinstance(image, Image.Image):
            return image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = Path(self.GRADIO_CACHE) / hashlib.sha256(data).hexdigest() / "image.png"
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        return str(path)

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except UNREADABLE:
            raise ComponentInputError(f"The canvas {self.label or ''!r} came with an image that cannot be read: wait "
                                      "until it shows its image, then try again (upload the image again if it stays "
                                      "empty)") from None

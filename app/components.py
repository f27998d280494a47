"""Gradio components with studio-specific input handling."""

import gradio as gr
from PIL import Image, UnidentifiedImageError


class CharacterImage(gr.Image):
    """``gr.Image`` (same front end) that hands unreadable uploads to the handler as a file path.

    Stock ``gr.Image`` opens every upload with Pillow before the handler runs, so a broken file fails with a
    generic error; here the handler's own checks (``core.io.images.load_image``) report it in one clear line.
    """

    is_template = True  # use gr.Image's front end

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return str(payload.path) if payload is not None and payload.path else None

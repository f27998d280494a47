"""Gradio components with studio-specific input handling, and image outputs that reach the browser whole."""

from pathlib import Path

import gradio as gr
from gradio import processing_utils
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


def whole_files(value, component):
    """``value`` with each PIL image in it written into Gradio's cache once, whole, and given as that file's path;
    ``component``: the image component sending it (its cache folder and format).

    A stock component saves a PIL image under the hash of its bytes and rewrites that file in place whenever the
    same image is sent again: the routing canvas on every size change, the loss plot every two seconds, a story's
    page previews on every edit. A browser still fetching the file could read it cut off: a broken picture, and
    from a canvas an empty image sent back with the next Generate. Here the same bytes (Gradio's own encoding, in
    the component's format) go to the same place under a temporary name renamed into place, and a file already
    there is left as it is.
    """
    if isinstance(value, Image.Image):
        return _saved(value, component)
    if isinstance(value, dict):
        return {key: whole_files(part, component) for key, part in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(whole_files(part, component) for part in value)
    return value


def _saved(image: Image.Image, component) -> str:
    try:
        suffix = component.format or "png"
        data = processing_utils.encode_pil_to_bytes(image, suffix)
    except (KeyError, ValueError):  # a format Pillow cannot write: PNG, as Gradio falls back
        suffix, data = "png", processing_utils.encode_pil_to_bytes(image, "png")
    path = Path(component.GRADIO_CACHE) / processing_utils.hash_bytes(data) / f"image.{suffix}"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return str(path)


class OutputImage(gr.Image):
    """``gr.Image`` (same front end) for pictures the studio draws, such as the loss plot: sent whole."""

    is_template = True

    def postprocess(self, value):
        return super().postprocess(whole_files(value, self))


class OutputGallery(gr.Gallery):
    """``gr.Gallery`` (same front end) for pictures the studio draws, such as a story's page previews: sent whole."""

    is_template = True

    def postprocess(self, value):
        return super().postprocess(whole_files(value, self))


class Canvas(gr.ImageEditor):
    """``gr.ImageEditor`` (same front end) whose images are sent whole, and which says so in one line when the
    browser sends back one that cannot be read (a canvas sent before it was drawn, an upload it could not open)."""

    is_template = True

    def postprocess(self, value):
        return super().postprocess(whole_files(value, self))

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except UNREADABLE:
            raise ComponentInputError(f"The canvas {self.label or ''!r} came with an image that cannot be read: wait "
                                      "until it shows its image, then try again (upload the image again if it stays "
                                      "empty)") from None

"""Character segmentation: the segmenter interface and a built-in segmenter for plain backgrounds.

A segmenter is any callable ``segment(image) -> mask`` that takes an RGB ``PIL.Image`` and returns an ``L`` mask of
the same size, 255 where the character is. Objects with a ``segment`` method are accepted too (see
:func:`as_segmenter`), so heavier segmenters (BiRefNet, Lang-SAM) can be plugged in by the trainer or the user.

:class:`BackgroundThresholdSegmenter` needs no model: it suits characters drawn on a plain background, such as the
example benchmark and most reference sheets. :func:`isolate` keeps the foreground on a neutral background and crops
to it, which is what the paper does before computing CLIP-I and DINO-I.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "Segmenter",
    "BackgroundThresholdSegmenter",
    "as_segmenter",
    "isolate",
    "mask_bbox",
]


@runtime_checkable
class Segmenter(Protocol):
    """Anything that maps an RGB image to an ``L`` mask (255 = character) of the same size."""

    def __call__(self, image: Image.Image) -> Image.Image: ...


class BackgroundThresholdSegmenter:
    """Foreground = pixels whose colour is far from the background colour estimated on the image border.

    Args:
        threshold: Euclidean RGB distance (0-255 scale per channel) above which a pixel is foreground.
        border: width of the border strip used to estimate the background, as a fraction of the shorter side
            (at least one pixel).
        smooth: size of the median filter that removes isolated speckles from the mask (odd; 0 or 1 disables it).
    """

    def __init__(self, threshold: float = 40.0, border: float = 0.03, smooth: int = 3):
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        if not 0 < border < 0.5:
            raise ValueError(f"border must be in (0, 0.5), got {border}")
        if smooth not in (0, 1) and smooth % 2 == 0:
            raise ValueError(f"smooth must be odd, got {smooth}")
        self.threshold = float(threshold)
        self.border = float(border)
        self.smooth = int(smooth)

    def background_colour(self, image: Image.Image) -> np.ndarray:
        """Median RGB colour of the border strip, shape ``(3,)``, float in 0-255."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        height, width = pixels.shape[:2]
        strip = max(1, int(round(min(height, width) * self.border)))
        border = np.concatenate(
            [
                pixels[:strip].reshape(-1, 3),
                pixels[-strip:].reshape(-1, 3),
                pixels[:, :strip].reshape(-1, 3),
                pixels[:, -strip:].reshape(-1, 3),
            ]
        )
        return np.median(border, axis=0)

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"segmenter expects a PIL image, got {type(image).__name__}")
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        distance = np.linalg.norm(pixels - self.background_colour(image), axis=-1)
        mask = Image.fromarray(np.where(distance > self.threshold, 255, 0).astype(np.uint8), mode="L")
        if self.smooth > 1:
            mask = mask.filter(ImageFilter.MedianFilter(self.smooth))
        return mask

    segment = __call__

    def __repr__(self) -> str:
        return f"BackgroundThresholdSegmenter(threshold={self.threshold}, border={self.border}, smooth={self.smooth})"


def as_segmenter(segmenter: object) -> Callable[[Image.Image], Image.Image] | None:
    """Normalize the accepted segmenter spellings to a callable (or ``None`` for no segmentation).

    Accepts ``None``, ``"threshold"`` (the built-in :class:`BackgroundThresholdSegmenter`), a callable, or an object
    with a ``segment(image)`` method.
    """
    if segmenter is None or segmenter == "none":
        return None
    if segmenter == "threshold":
        return BackgroundThresholdSegmenter()
    if isinstance(segmenter, str):
        raise ValueError(f"unknown segmenter {segmenter!r} (use 'threshold', 'none' or a callable)")
    method = getattr(segmenter, "segment", None)
    if callable(method):
        return method
    if callable(segmenter):
        return segmenter
    raise TypeError(f"segmenter must be callable or have a segment() method, got {type(segmenter).__name__}")


def mask_bbox(mask: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box ``(left, top, right, bottom)`` of the mask's pixels above 127, or ``None`` if there are none."""
    binary = mask.convert("L").point(lambda value: 255 if value > 127 else 0)
    return binary.getbbox()


def isolate(
    image: Image.Image,
    mask: Image.Image,
    fill: tuple[int, int, int] = (255, 255, 255),
    crop: bool = True,
) -> Image.Image:
    """Paste the masked foreground of ``image`` on a ``fill`` background, cropped to the mask's bounding box.

    The mask is resized to the image when their sizes differ. An empty mask returns the whole image unchanged
    (a failed segmentation should not turn a score into the score of a blank canvas).
    """
    image = image.convert("RGB")
    mask = mask.convert("L")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    box = mask_bbox(mask)
    if box is None:
        return image
    result = Image.new("RGB", image.size, fill)
    result.paste(image, (0, 0), mask)
    return result.crop(box) if crop else result

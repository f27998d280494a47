"""Character image encoders: SigLIP + DINOv2 features in the layout the InstantCharacter projector expects.

Per character image the released model looks at two views:

* a low-resolution view: the image stretched to a square, resized to 384x384;
* a high-resolution view: the square resized to 768x768 and cut into four 384x384 crops
  (top-left, top-right, bottom-left, bottom-right).

From each view it takes SigLIP's last hidden state ("deep") and a few intermediate layers ("shallow"),
and the same from DINOv2 (with the CLS token dropped); SigLIP and DINOv2 features are joined along channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

LOW_RES = 384
HIGH_RES = 768
SIGLIP_SHALLOW_LAYERS = (7, 13, 26)
DINOV2_SHALLOW_LAYERS = (9, 19, 29)


@dataclass
class CharacterFeatures:
    """Encoder features of one character image (batch 1).

    Shapes use SigLIP width ``Cs`` plus DINOv2 width ``Cd`` channels and ``N`` tokens per 384 view
    (729 for patch 14): ``low_res_deep`` (1, N, Cs+Cd), ``low_res_shallow`` (1, 3N, Cs+Cd),
    ``high_res_deep`` (1, 4N, Cs+Cd).
    """

    low_res_deep: torch.Tensor
    low_res_shallow: torch.Tensor
    high_res_deep: torch.Tensor

    def to(self, device=None, dtype=None) -> "CharacterFeatures":
        return CharacterFeatures(
            *(t.to(device=device, dtype=dtype) for t in (self.low_res_deep, self.low_res_shallow, self.high_res_deep))
        )


def character_views(image: Image.Image) -> tuple[Image.Image, list[Image.Image]]:
    """Returns the low-res 384 view and the four 384 crops of the 768 view of ``image``.

    The image is first stretched (not padded) to a square of side max(width, height), as the released code does.
    """
    image = image.convert("RGB")
    side = max(image.size)
    square = image.resize((side, side))
    low = square.resize((LOW_RES, LOW_RES))
    high = square.resize((HIGH_RES, HIGH_RES))
    boxes = [(0, 0, LOW_RES, LOW_RES), (LOW_RES, 0, HIGH_RES, LOW_RES),
             (0, LOW_RES, LOW_RES, HIGH_RES), (LOW_RES, LOW_RES, HIGH_RES, HIGH_RES)]
    return low, [high.crop(box) for box in boxes]


class CharacterEncoder:
    """SigLIP + DINOv2 image features for the projector.

    Args:
        siglip: a ``SiglipVisionModel``.
        siglip_processor: its ``SiglipImageProcessor``.
        dinov2: a ``Dinov2Model``.
        dinov2_processor: its image processor; its resize and crop are set to 384 here, as the released model expects.
    """

    def __init__(self, siglip, siglip_processor, dinov2, dinov2_processor):
        self.siglip = siglip
        self.siglip_processor = siglip_processor
        self.dinov2 = dinov2
        self.dinov2_processor = dinov2_processor
        self.dinov2_processor.size = {"shortest_edge": LOW_RES}
        self.dinov2_processor.crop_size = {"height": LOW_RES, "width": LOW_RES}
        self.calls = 0  # number of images encoded; tests use it to prove caching

    @property
    def width(self) -> int:
        """Channels of the joined features (SigLIP width + DINOv2 width)."""
        return self.siglip.config.hidden_size + self.dinov2.config.hidden_size

    def _run(self, model, pixel_values, shallow_layers, drop_cls):
        param = next(model.parameters())
        out = model(pixel_values.to(param.device, param.dtype), output_hidden_states=True)
        start = 1 if drop_cls else 0
        deep = out.last_hidden_state[:, start:]
        shallow = torch.cat([out.hidden_states[i][:, start:] for i in shallow_layers], dim=1)
        return deep, shallow

    def _encode_views(self, views: list[Image.Image]):
        siglip_px = self.siglip_processor(images=views, return_tensors="pt").pixel_values
        dinov2_px = self.dinov2_processor(images=views, return_tensors="pt").pixel_values
        s_deep, s_shallow = self._run(self.siglip, siglip_px, SIGLIP_SHALLOW_LAYERS, drop_cls=False)
        d_deep, d_shallow = self._run(self.dinov2, dinov2_px, DINOV2_SHALLOW_LAYERS, drop_cls=True)
        return torch.cat([s_deep, d_deep], dim=2), torch.cat([s_shallow, d_shallow], dim=2)

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> CharacterFeatures:
        """Encodes one character image into :class:`CharacterFeatures` (on the encoders' device and dtype)."""
        self.calls += 1
        low, crops = character_views(image)
        low_deep, low_shallow = self._encode_views([low])
        crops_deep, _ = self._encode_views(crops)
        high_deep = crops_deep.reshape(1, -1, crops_deep.shape[-1])  # four crops joined along tokens
        return CharacterFeatures(low_deep, low_shallow, high_deep)

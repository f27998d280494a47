"""Regional text: each character's words bound to its region in FLUX's joint attention (no training).

When characters have regions, the words that stand for a character in the prompt (the description that replaces
its ``[Name]``, or the tag's own words) should describe that character only. FLUX attends over one sequence
``[text tokens (T), image tokens (N)]``; for the first part of the steps this module's mask restricts it
(``True`` = may attend, rows are queries, columns keys)::

                      scene words   words of i    image in region i   other image
    scene words           yes          no              yes                yes
    words of i            no           yes             yes                no
    image in region i     yes          yes             yes                yes
    image elsewhere       yes          no              yes                yes

* Each character's words attend to and from its own region's image tokens only (and among themselves).
* The rest of the prompt is the scene: it attends among itself and to and from every image token, so the
  background always has text to attend to (InvokeAI's finding: a background that sees no text shows artifacts)
  and the characters still hear what the scene says they do.
* Image tokens attend to all image tokens: restricting image self-attention to regions (Regional-Prompting-FLUX)
  gave "two separate images" in InvokeAI's tests; the binding comes from the text rows and columns alone.
* A token several regions reach sees each of their characters' words; a region is where a character's routing
  weight is above 0 (soft edges included).

Settings (:class:`RegionalText`), defaults from the published demos: the mask acts for the first 40 % of the
steps (Regional-Prompting-FLUX: 10 of 24), in every double- and single-stream block (Regional-Prompting-FLUX; masks
on too few layers let two subjects merge in InvokeAI's tests), and ``base_ratio`` blends the image tokens with an
unmasked pass (Regional-Prompting-FLUX: 0.1-0.3 with its region-restricted image attention; 0 here by default,
because the image attention is never restricted, so there are no seams to soften, and it costs a second attention
pass in every masked layer).

Attention backends: a full (query x key) boolean mask is taken by PyTorch's SDPA backends (``native``,
``_native_math``, ``_native_efficient``, ``_native_cudnn``) and xformers; every other backend (FlashAttention 2/3/4,
the varlen kernels, which read a mask as key padding only, SageAttention, flex, XLA, NPU) falls back to
``native`` in the masked layers and steps only (:func:`masked_backend`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from core.errors import UserError

if TYPE_CHECKING:  # torch is imported where a mask is made: records and stories read the settings without it
    import torch

MODES = ("auto", "on", "off")
BLOCKS = ("all", "double", "single", "alternate")
DEFAULT_STEPS = 0.4
DEFAULT_BLOCKS = "all"
DEFAULT_BASE_RATIO = 0.0
# diffusers attention backends that apply a full (query x key) boolean mask; the others fall back to "native"
MASK_BACKENDS = frozenset({"native", "_native_math", "_native_efficient", "_native_cudnn", "xformers"})


class RegionalTextError(UserError, ValueError):
    """A regional-text setting out of range; the message names it and its value."""


@dataclass(frozen=True)
class RegionalText:
    """How characters' words are bound to their regions.

    Attributes:
        mode: ``auto`` (on when two or more characters have both a region and words in the prompt), ``on`` (for
            every character that has both) or ``off`` (today's attention, bit for bit).
        steps: fraction of the denoising steps that use the mask, from the first (0 to 1).
        blocks: ``all`` attention layers, only the ``double``- or ``single``-stream ones, or ``alternate`` (every
            other layer, InvokeAI).
        base_ratio: weight of an unmasked pass blended into the image tokens (0 to 1; 0: no extra pass).
    """

    mode: str = "auto"
    steps: float = DEFAULT_STEPS
    blocks: str = DEFAULT_BLOCKS
    base_ratio: float = DEFAULT_BASE_RATIO

    def __post_init__(self):
        if self.mode not in MODES:
            raise RegionalTextError(f"regional text {self.mode!r}: use one of {', '.join(MODES)}")
        if self.blocks not in BLOCKS:
            raise RegionalTextError(f"regional text blocks {self.blocks!r}: use one of {', '.join(BLOCKS)}")
        for name, value in (("steps", self.steps), ("base ratio", self.base_ratio)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise RegionalTextError(f"regional text {name} {value!r}: must be a number from 0 to 1")

    @classmethod
    def parse(cls, value) -> "RegionalText":
        """A setting from what a client sends: ``None`` (auto), ``True``/``False``, a mode name, a dict of the
        fields (a PNG record), or a :class:`RegionalText`."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            return cls("on" if value else "off")
        if isinstance(value, str):
            return cls(value.strip().lower())
        if isinstance(value, dict):
            unknown = set(value) - {"mode", "steps", "blocks", "base_ratio"}
            if unknown:
                raise RegionalTextError(f"regional text: unknown setting {sorted(unknown)[0]!r}")
            return cls(**value)
        raise RegionalTextError(f"regional text must be on, off or auto, got {type(value).__name__}")

    def to_json(self) -> dict:
        return asdict(self)

    def active_for(self, bound: int) -> bool:
        """Whether the mask is used when ``bound`` characters have both a region and words."""
        if self.mode == "off" or bound == 0:
            return False
        return self.mode == "on" or bound >= 2

    def masked_steps(self, total: int) -> int:
        """How many of ``total`` steps (from the first) use the mask: ``round(steps * total)``, at least 1 when
        ``steps > 0``."""
        if self.steps <= 0 or total <= 0:
            return 0
        return min(total, max(1, math.floor(self.steps * total + 0.5)))

    def applies_to(self, layer_index: int, single_stream: bool) -> bool:
        """Whether attention layer ``layer_index`` (0-based over all layers, double-stream first) is masked."""
        if self.blocks == "double":
            return not single_stream
        if self.blocks == "single":
            return single_stream
        if self.blocks == "alternate":
            return layer_index % 2 == 0
        return True


def joint_attention_mask(word_masks: list[torch.Tensor], region_masks: list[torch.Tensor]) -> torch.Tensor:
    """The (T+N, T+N) boolean mask of the table in the module doc (``True``: may attend).

    Args:
        word_masks: per bound character, (T,) bool over the text tokens that are its words.
        region_masks: per bound character, (N,) bool over the packed image tokens of its region.
    """
    import torch

    words = torch.stack([w.bool() for w in word_masks])  # (C, T)
    regions = torch.stack([r.bool() for r in region_masks])  # (C, N)
    text_len, image_len = words.shape[1], regions.shape[1]
    scene = ~words.any(0)  # (T,)
    text_text = (scene[:, None] & scene[None, :]) | (words.T.float() @ words.float() > 0)
    text_image = scene[:, None].expand(text_len, image_len) | (words.T.float() @ regions.float() > 0)
    mask = torch.ones(text_len + image_len, text_len + image_len, dtype=torch.bool)
    mask[:text_len, :text_len] = text_text
    mask[:text_len, text_len:] = text_image
    mask[text_len:, :text_len] = text_image.T
    return mask


@dataclass
class RegionalTextMask:
    """The mask of one generation, as the attention processors receive it (``joint_attention_kwargs``).

    Attributes:
        mask: (1, 1, T+N, T+N) bool on the execution device.
        text_len: T, the text tokens at the front of the sequence.
        settings: which layers use it and the base ratio.
    """

    mask: torch.Tensor
    text_len: int
    settings: RegionalText

    def applies_to(self, layer_index: int, single_stream: bool) -> bool:
        return self.settings.applies_to(layer_index, single_stream)


def masked_backend(backend):
    """The attention backend for a masked layer: ``backend`` if it takes a full mask, else ``native``."""
    name = getattr(backend, "value", backend)
    return backend if name is None or name in MASK_BACKENDS else "native"


def bound_characters(word_masks: list[torch.Tensor | None], regions: list[torch.Tensor | None]) -> list[int]:
    """Indices of the characters with both words in the prompt (a non-empty word mask) and a region (routing
    weights other than ``None``, with some token above 0): those regional text binds."""
    return [i for i, (w, r) in enumerate(zip(word_masks, regions))
            if w is not None and bool(w.any()) and r is not None and bool((r > 0).any())]

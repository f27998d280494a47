"""Generation settings carried inside PNG files, so any image can be reproduced or recalled.

Each PNG gets two text chunks: ``parameters`` (A1111-style, readable by other tools) and ``instantcharacter``
(JSON with every setting, character images and masks included, so Recall needs nothing else).
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin

from .paths import atomic_path

JSON_KEY = "instantcharacter"
FORMAT_VERSION = 1


class MetadataError(ValueError):
    """A PNG without usable InstantCharacter Studio metadata."""


def image_to_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_from_b64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@dataclass
class CharacterRecord:
    """A character as stored in metadata: the image itself (base64 PNG), name, scale, mask (see ``RoutingMask.to_json``)."""

    image: str
    name: str | None = None
    scale: float = 0.9
    mask: str | None = None
    description: str | None = None

    @classmethod
    def from_character(cls, character) -> "CharacterRecord":
        return cls(image=image_to_b64(character.image), name=character.name, scale=character.scale,
                   mask=character.mask.to_json() if character.mask is not None else None,
                   description=character.description)

    def to_character(self):
        from .character import Character
        from .masks import RoutingMask

        return Character(image_from_b64(self.image), name=self.name, scale=self.scale,
                         mask=RoutingMask.from_json(self.mask), description=self.description)


@dataclass
class GenerationRecord:
    """Every setting of one generated image."""

    prompt: str
    seed: int
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 28
    guidance_scale: float = 3.5
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    characters: list[CharacterRecord] = field(default_factory=list)
    loras: list[dict] = field(default_factory=list)  # [{"source": ..., "weight": ..., "trigger": ...}]
    models: dict = field(default_factory=dict)  # base / siglip / dinov2 / adapter / text_adapter sources
    dtype: str = "bfloat16"
    preset: str | None = None
    version: int = FORMAT_VERSION

    def parameters_text(self) -> str:
        """The A1111-style ``parameters`` text."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = [
            f"Steps: {self.num_inference_steps}", "Sampler: FlowMatch Euler", f"CFG scale: {self.true_cfg_scale:g}",
            f"Distilled guidance: {self.guidance_scale:g}", f"Seed: {self.seed}", f"Size: {self.width}x{self.height}",
            f"Model: {self.models.get('base', 'FLUX.1-dev')}",
        ]
        for c in self.characters:
            fields.append(f"Character {c.name or ''}: scale {c.scale:g}, mask {(c.mask or 'whole')[:40]}".replace("  ", " "))
        for lora in self.loras:
            fields.append(f"LoRA: {lora.get('source')}:{lora.get('weight', 1.0):g}")
        lines.append(", ".join(fields))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "GenerationRecord":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"the metadata is not valid JSON ({exc})") from None
        data["characters"] = [CharacterRecord(**c) for c in data.get("characters", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def pnginfo(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", self.parameters_text())
        info.add_text(JSON_KEY, self.to_json(), zip=True)
        return info

    def generation_kwargs(self) -> dict:
        """Keyword arguments for ``InstantCharacterPipeline.__call__`` (without ``generator``)."""
        return dict(prompt=self.prompt, characters=[c.to_character() for c in self.characters],
                    negative_prompt=self.negative_prompt, true_cfg_scale=self.true_cfg_scale,
                    num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                    height=self.height, width=self.width, max_sequence_length=self.max_sequence_length)


def save_png(image: Image.Image, path: str | os.PathLike, record: GenerationRecord) -> Path:
    """Saves ``image`` as a PNG carrying ``record``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=record.pnginfo())
    return path


def read_record(source) -> GenerationRecord:
    """The :class:`GenerationRecord` of a PNG made by the studio (path, bytes or opened image)."""
    try:
        image = source if isinstance(source, Image.Image) else Image.open(
            io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, ValueError):
        raise MetadataError("not an image file") from None
    text = getattr(image, "text", None) or image.info
    if JSON_KEY not in text:
        raise MetadataError("this image carries no InstantCharacter Studio settings (was it made by the studio?)")
    return GenerationRecord.from_json(text[JSON_KEY])

"""One description of a generation: what the studio, the command line, stories and evaluation ask the engine for.

A :class:`GenerationRequest` holds the prompt, the characters (image, name, scale, routing mask, description), the
sampling settings, the seed, how many images, the style LoRAs and the text adapter. It is checked against
:mod:`core.limits` in one place (:meth:`GenerationRequest.check`) and travels inside every PNG the project writes:
:meth:`to_record` gives the :class:`core.io.metadata.GenerationRecord` saved with an image, and :meth:`from_record`
(or :func:`request_from_png`) rebuilds the same request from any such PNG, older ones included. Named layouts and
boxes stay names and numbers end to end (``RoutingMask.label``); painted masks keep their soft values.

Room for image editing: the fields a later version adds (a source image, a strength, an inpainting region) will
sit beside these, each off by default, so a request without them keeps meaning what it means now.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace

from core.conditioning.character import Character, check_characters
from core.limits import (MAX_IMAGES_PER_RUN, MAX_LORAS, MAX_PROMPT_CHARS, MAX_SEED, LimitError, check_int, check_seed,
                     check_text)
from core.loading.loras import StyleLora, with_triggers


@dataclass
class GenerationRequest:
    """Everything that decides the images of one generation.

    ``seed`` ``None`` means "pick one": :meth:`with_seed` fixes it before the engine runs, and image ``k`` of a run
    uses ``seed + k`` (wrapping at ``MAX_SEED``), so every image can be made again on its own.
    """

    prompt: str
    characters: list[Character] = field(default_factory=list)
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    seed: int | None = None
    images: int = 1
    loras: list[StyleLora] = field(default_factory=list)
    text_adapter: str | None = None
    max_sequence_length: int = 512

    # ------------------------------------------------------------------ checks
    def check(self) -> "GenerationRequest":
        """Raises a :class:`core.errors.UserError` naming the first bad field; returns ``self`` when all is well.

        Needs no model: the studio and the command line call it before anything loads.
        """
        from core.models.pipeline import check_settings
        from core.conditioning.prompt import resolve_prompt

        check_settings(self.engine_prompt, self.height, self.width, self.steps, self.guidance, self.true_cfg_scale,
                       max_sequence_length=self.max_sequence_length)
        check_text(self.negative_prompt, "the negative prompt", MAX_PROMPT_CHARS)
        check_int(self.images, "images per run", 1, MAX_IMAGES_PER_RUN)
        if self.seed is not None:
            check_seed(self.seed)
        if len(self.loras) > MAX_LORAS:
            raise LimitError(f"{len(self.loras)} LoRAs given: at most {MAX_LORAS}")
        check_characters(self.characters)
        resolve_prompt(self.engine_prompt, self.characters)  # unknown [tags], duplicate names
        return self

    @property
    def engine_prompt(self) -> str:
        """The prompt with the LoRAs' trigger words in front (when it lacks them): what the text encoders see."""
        return with_triggers(self.prompt, self.loras)

    @property
    def negative(self) -> str | None:
        return (self.negative_prompt or "").strip() or None

    def with_seed(self) -> "GenerationRequest":
        """This request with a seed: its own, or a random one in ``0..MAX_SEED``."""
        return self if self.seed is not None else replace(self, seed=random.randint(0, MAX_SEED))

    def image_seed(self, k: int) -> int:
        return (int(self.seed or 0) + k) % (MAX_SEED + 1)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of ``InstantCharacterPipeline.__call__`` for one image (no generator, no callback)."""
        return dict(prompt=self.engine_prompt, characters=list(self.characters), negative_prompt=self.negative,
                    true_cfg_scale=float(self.true_cfg_scale), num_inference_steps=int(self.steps),
                    guidance_scale=float(self.guidance), height=int(self.height), width=int(self.width),
                    max_sequence_length=int(self.max_sequence_length))

    # ------------------------------------------------------------------ metadata
    def to_record(self, k: int = 0, provenance: dict | None = None):
        """The :class:`core.io.metadata.GenerationRecord` of image ``k``: every setting, and where it was made
        (``provenance``: ``models``, ``dtype``, ``preset``, as :meth:`core.engine.Engine.provenance` gives)."""
        from core.io.metadata import CharacterRecord, GenerationRecord

        provenance = dict(provenance or {})
        models = dict(provenance.pop("models", {}) or {})
        if self.text_adapter:
            models["text_adapter"] = str(self.text_adapter)
        return GenerationRecord(
            prompt=self.prompt, seed=self.image_seed(k), width=int(self.width), height=int(self.height),
            num_inference_steps=int(self.steps), guidance_scale=float(self.guidance), negative_prompt=self.negative,
            true_cfg_scale=float(self.true_cfg_scale), max_sequence_length=int(self.max_sequence_length),
            characters=[CharacterRecord.from_character(c) for c in self.characters],
            loras=[lora.record() for lora in self.loras], models=models, **provenance)

    @classmethod
    def from_record(cls, record, images: int = 1) -> "GenerationRequest":
        """The request that made ``record``'s image (its seed, so the same image comes out)."""
        characters = [c.to_character(f"character {i + 1}") for i, c in enumerate(record.characters)]
        text_adapter = (record.models or {}).get("text_adapter") or None
        return cls(prompt=record.prompt, characters=characters, negative_prompt=record.negative_prompt,
                   true_cfg_scale=record.true_cfg_scale, steps=record.num_inference_steps,
                   guidance=record.guidance_scale, width=record.width, height=record.height, seed=record.seed,
                   images=images, loras=[StyleLora.from_record(d) for d in record.loras],
                   text_adapter=text_adapter, max_sequence_length=record.max_sequence_length)

    def summary(self) -> dict:
        """A comparable description (images as their content keys, masks as their JSON): two requests with equal
        summaries make the same images."""
        return dict(prompt=self.prompt, negative_prompt=self.negative, true_cfg_scale=float(self.true_cfg_scale),
                    steps=int(self.steps), guidance=float(self.guidance), width=int(self.width),
                    height=int(self.height), seed=self.seed, loras=[lora.record() for lora in self.loras],
                    text_adapter=self.text_adapter, max_sequence_length=int(self.max_sequence_length),
                    characters=[dict(key=c.key, name=c.name, scale=c.scale, description=c.description,
                                     mask=c.mask.to_json() if c.mask is not None else None)
                                for c in self.characters])


def request_from_png(source: str | os.PathLike | bytes, images: int = 1) -> GenerationRequest:
    """The request recorded in a PNG made by the studio, the CLI or a story render."""
    from core.io.metadata import read_record

    return GenerationRequest.from_record(read_record(source), images=images)

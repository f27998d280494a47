"""One description of a generation: what the studio, the command line, stories and evaluation ask the engine for.

A :class:`GenerationRequest` holds the prompt, the characters (image, name, scale, routing mask, description), the
sampling settings, the seed, how many images, the style LoRAs and the text adapter. It is checked against
:mod:`core.limits` in one place (:meth:`GenerationRequest.check`) and travels inside every PNG the project writes:
:meth:`to_record` gives the :class:`core.io.metadata.GenerationRecord` saved with an image, and :meth:`from_record`
(or :func:`request_from_png`) rebuilds the same request from any such PNG, older ones included. Named layouts and
boxes stay names and numbers end to end (``RoutingMask.label``); painted masks keep their soft values.

Editing: ``source_image`` (off by default) makes the request image-to-image at ``strength`` (0 keeps the source, 1
ignores it), and ``inpaint_region`` (a :class:`~core.conditioning.masks.RoutingMask`) redoes only that region. A
request without a source means exactly what it meant before editing existed: the same pipeline call, record and
summary.

Control: ``controls`` (none by default) are :class:`~core.conditioning.control.ControlImage` inputs (a pose, depth
or edge image with its scale and step range) a ControlNet reads; a request without them is the request of before.

Regional text (:mod:`core.conditioning.regional_text`): ``regional_text`` binds each character's words to its
region; ``auto`` (the default) turns it on for two or more characters with regions and words of their own. A record
keeps the setting whenever the request has characters; a record of characters without it predates regional text
and is recalled with it ``off``, so Recall makes the same image as before.
"""

from __future__ import annotations

import copy
import functools
import os
import random
from dataclasses import dataclass, field

from core.conditioning.character import Character, check_characters
from core.conditioning.control import ControlImage
from core.conditioning.masks import MaskError, RoutingMask
from core.conditioning.regional_text import RegionalText
from core.io.images import rgb_digest
from core.io.metadata import GenerationRecord, MetadataError, read_control_image, read_edit_source, read_record
from core.limits import (MAX_GUIDANCE, MAX_IMAGES_PER_RUN, MAX_LORAS, MAX_PROMPT_CHARS, MAX_SEED, MAX_SEQUENCE_LENGTH,
                         MAX_STEPS, MAX_TRUE_CFG, LimitError, check_int, check_number, check_prompt, check_seed,
                         check_size, check_text)
from core.loading.loras import StyleLora, with_triggers


@dataclass
class GenerationRequest:
    """Everything that decides the images of one generation.

    ``seed`` ``None`` means "pick one": :meth:`with_seed` fixes it before the engine runs, and image ``k`` of a run
    uses ``seed + k`` (wrapping at ``MAX_SEED``), so every image can be made again on its own.

    A request is checked when it is built (:meth:`check`, from ``__post_init__``; ``dataclasses.replace`` builds a
    new one, checked too): the studio, the command line, stories and Recall all build requests this way, and the
    engine runs them as they are. Change a request with ``replace``, not by setting its fields. Its ``[Name]`` tags
    are matched to its characters when the prompt is first resolved (:attr:`resolved_prompt`): the engine does it
    before loading any model, the studio before asking for a GPU.
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
    draft: bool = False  # a step cache (core.loading.speed.set_step_cache): faster, not the same image
    source_image: object = None  # a PIL image (paths and bytes are read) to edit; None: from noise
    strength: float = 0.6  # only with a source: 0 keeps it, 1 ignores it
    inpaint_region: object = None  # only with a source: a RoutingMask (or mask image / spec) of the region to redo
    controls: list = field(default_factory=list)  # ControlImage inputs (core.conditioning.control); []: none
    regional_text: RegionalText = field(default_factory=RegionalText)  # or "auto"/"on"/"off", True/False, a dict

    def __post_init__(self):
        self.regional_text = RegionalText.parse(self.regional_text)
        self._load_edit()
        self.check()

    def _load_edit(self) -> None:
        """An edit's source and region read once, here: the pipeline takes them as they are."""
        if self.source_image is None and self.inpaint_region is None:
            return
        from core.conditioning.edit import load_region, load_source

        if self.source_image is not None and not _is_pil(self.source_image):
            self.source_image = load_source(self.source_image)
        if self.inpaint_region is not None:
            size = self.source_image.size if self.source_image is not None else None
            self.inpaint_region = load_region(self.inpaint_region, size)[0]

    # ------------------------------------------------------------------ checks
    def check(self) -> "GenerationRequest":
        """Raises a :class:`core.errors.UserError` naming the first bad field; returns ``self`` when all is well.

        Needs no model. Runs when the request is built; numbers come out as their kind (``width`` an int...).
        """
        check_prompt(self.prompt)
        if self.loras:
            check_text(self.engine_prompt, "the prompt with the LoRAs' trigger words", MAX_PROMPT_CHARS)
        check_text(self.negative_prompt, "the negative prompt", MAX_PROMPT_CHARS)
        self.width, self.height = check_size(self.width, self.height)
        self.steps = check_int(self.steps, "steps", 1, MAX_STEPS)
        self.guidance = check_number(self.guidance, "guidance", 0.0, MAX_GUIDANCE)
        self.true_cfg_scale = check_number(self.true_cfg_scale, "true CFG scale (1 turns it off)", 1.0, MAX_TRUE_CFG)
        self.max_sequence_length = check_int(self.max_sequence_length, "max_sequence_length", 1, MAX_SEQUENCE_LENGTH)
        self.images = check_int(self.images, "images per run", 1, MAX_IMAGES_PER_RUN)
        if self.seed is not None:
            self.seed = check_seed(self.seed)
        if len(self.loras) > MAX_LORAS:
            raise LimitError(f"{len(self.loras)} LoRAs given: at most {MAX_LORAS}")
        check_characters(self.characters)
        self._check_edit()
        self._check_controls()
        return self

    def _check_controls(self) -> None:
        from core.conditioning.control import MAX_CONTROLS, ControlError, ControlImage

        if len(self.controls) > MAX_CONTROLS:
            raise ControlError(f"{len(self.controls)} control images given: at most {MAX_CONTROLS}")
        for c in self.controls:
            if not isinstance(c, ControlImage):
                raise ControlError(f"a control is a {type(c).__name__}, not a ControlImage")

    def _check_edit(self) -> None:
        from core.conditioning.edit import EditError, check_region, check_strength

        if self.source_image is None:
            if self.inpaint_region is not None:
                raise EditError("an inpaint mask needs a source image to edit (--image PATH)")
            return
        check_strength(self.strength)
        if self.inpaint_region is not None:
            check_region(self.inpaint_region, int(self.width), int(self.height))

    @functools.cached_property
    def resolved_prompt(self):
        """The engine prompt with its ``[Name]`` tags replaced by the characters' words
        (:func:`core.conditioning.prompt.resolve_prompt`: a :class:`~core.conditioning.prompt.PromptError` for a tag
        no character has), resolved once: the pipeline gets this one."""
        from core.conditioning.prompt import resolve_prompt

        return resolve_prompt(self.engine_prompt, self.characters)

    @property
    def is_edit(self) -> bool:
        return self.source_image is not None

    @property
    def denoising_steps(self) -> int:
        """The steps that run: all ``steps``, or for an edit the last ``ceil(strength * steps)`` (as the pipeline
        takes them)."""
        steps = int(self.steps)
        if self.source_image is None:
            return steps
        return steps - int(max(steps - min(steps * float(self.strength), steps), 0))

    def edit_record(self) -> dict | None:
        """The edit as its PNG record stores it (source digest and file name, strength, region), or None."""
        if self.source_image is None:
            return None
        digest = rgb_digest(self.source_image)
        region = self.inpaint_region
        return {"source_sha256": digest, "source_file": f"source-{digest[:16]}.png", "strength": float(self.strength),
                "region": region.to_json() if region is not None else None}

    @property
    def engine_prompt(self) -> str:
        """The prompt with the LoRAs' trigger words in front (when it lacks them): what the text encoders see."""
        return with_triggers(self.prompt, self.loras)

    @property
    def negative(self) -> str | None:
        return (self.negative_prompt or "").strip() or None

    def with_seed(self) -> "GenerationRequest":
        """This request with a seed: its own, or a random one in ``0..MAX_SEED``."""
        if self.seed is not None:
            return self
        seeded = copy.copy(self)  # a checked request with a seed in range: nothing to check again
        seeded.seed = random.randint(0, MAX_SEED)
        return seeded

    def image_seed(self, k: int) -> int:
        return (int(self.seed or 0) + k) % (MAX_SEED + 1)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of ``InstantCharacterPipeline.__call__`` for one image (no generator, no callback); the
        prompt resolved once (:attr:`resolved_prompt`)."""
        return dict(prompt=self.engine_prompt, resolved_prompt=self.resolved_prompt, characters=list(self.characters),
                    negative_prompt=self.negative, true_cfg_scale=float(self.true_cfg_scale),
                    num_inference_steps=int(self.steps),
                    guidance_scale=float(self.guidance), height=int(self.height), width=int(self.width),
                    max_sequence_length=int(self.max_sequence_length), **self._edit_kwargs(),
                    **({"control": list(self.controls)} if self.controls else {}), **self._regional_kwargs())

    def _regional_kwargs(self) -> dict:
        # the default is the pipeline's own: left out, the call is the one of before regional text
        return {} if self.regional_text == RegionalText() else {"regional_text": self.regional_text}

    def regional_record(self) -> dict | None:
        """The regional-text setting as a record stores it: always with characters, else only when not the
        default."""
        if self.characters or self.regional_text != RegionalText():
            return self.regional_text.to_json()
        return None

    def _edit_kwargs(self) -> dict:
        if self.source_image is None:
            return {}  # not an edit: the pipeline call of before
        return dict(image=self.source_image, strength=float(self.strength), mask_image=self.inpaint_region)

    # ------------------------------------------------------------------ metadata
    def to_record(self, k: int = 0, provenance: dict | None = None):
        """The :class:`core.io.metadata.GenerationRecord` of image ``k``: every setting, and where it was made
        (``provenance``: ``models``, ``dtype``, ``preset``, as :meth:`core.engine.Engine.provenance` gives)."""
        provenance = dict(provenance or {})
        models = dict(provenance.pop("models", {}) or {})
        if self.text_adapter:
            models["text_adapter"] = str(self.text_adapter)
        if self.draft:
            models["draft"] = "first-block-cache"  # beside the models: older records and readers keep their fields
        return GenerationRecord(
            prompt=self.prompt, seed=self.image_seed(k), width=int(self.width), height=int(self.height),
            num_inference_steps=int(self.steps), guidance_scale=float(self.guidance), negative_prompt=self.negative,
            true_cfg_scale=float(self.true_cfg_scale), max_sequence_length=int(self.max_sequence_length),
            characters=[c.record() for c in self.characters],
            loras=[lora.record() for lora in self.loras], models=models, edit=self.edit_record(),
            control=[c.record() for c in self.controls] or None, regional_text=self.regional_record(),
            **provenance)

    @classmethod
    def from_record(cls, record, images: int = 1, folder: str | os.PathLike | None = None) -> "GenerationRequest":
        """The request that made ``record``'s image (its seed, so the same image comes out). An edit's source is read
        from ``folder`` (the PNG's own folder), where :func:`core.io.metadata.save_png` saved it."""
        edit = {}
        if record.edit:
            try:
                region = RoutingMask.from_json(record.edit.get("region"), "the edit's region")
            except MaskError as exc:
                raise MetadataError(str(exc)) from None
            edit = dict(source_image=read_edit_source(record.edit, folder), strength=record.edit["strength"],
                        inpaint_region=region)
        characters = [Character.from_record(c, f"character {i + 1}") for i, c in enumerate(record.characters)]
        if record.control:
            edit["controls"] = [ControlImage.from_record(c, read_control_image(c, folder)) for c in record.control]
        text_adapter = (record.models or {}).get("text_adapter") or None
        regional = record.regional_text
        if regional is None and record.characters:
            regional = "off"  # recorded before regional text existed: made without it
        return cls(prompt=record.prompt, characters=characters, negative_prompt=record.negative_prompt,
                   true_cfg_scale=record.true_cfg_scale, steps=record.num_inference_steps,
                   guidance=record.guidance_scale, width=record.width, height=record.height, seed=record.seed,
                   images=images, loras=[StyleLora.from_record(d) for d in record.loras],
                   text_adapter=text_adapter, max_sequence_length=record.max_sequence_length,
                   draft=bool((record.models or {}).get("draft", False)), regional_text=regional, **edit)

    def summary(self) -> dict:
        """A comparable description (images as their content keys, masks as their JSON): two requests with equal
        summaries make the same images."""
        return dict(prompt=self.prompt, negative_prompt=self.negative, true_cfg_scale=float(self.true_cfg_scale),
                    steps=int(self.steps), guidance=float(self.guidance), width=int(self.width),
                    height=int(self.height), seed=self.seed, loras=[lora.record() for lora in self.loras],
                    text_adapter=self.text_adapter, max_sequence_length=int(self.max_sequence_length),
                    draft=bool(self.draft),
                    characters=[dict(key=c.key, name=c.name, scale=c.scale, description=c.description,
                                     mask=c.mask.to_json() if c.mask is not None else None)
                                for c in self.characters], regional_text=self.regional_text.to_json(),
                    **self._edit_summary(),
                    **({"control": [c.record() for c in self.controls]} if self.controls else {}))

    def _edit_summary(self) -> dict:
        edit = self.edit_record()
        return {} if edit is None else {"edit": {k: v for k, v in edit.items() if k != "source_file"}}


def request_from_png(source: str | os.PathLike | bytes, images: int = 1) -> GenerationRequest:
    """The request recorded in a PNG made by the studio, the CLI or a story render."""
    from pathlib import Path

    folder = Path(source).parent if isinstance(source, (str, os.PathLike)) else None
    return GenerationRequest.from_record(read_record(source), images=images, folder=folder)


def _is_pil(value) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)

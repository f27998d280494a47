"""The paper's objective metrics: CLIP-I, DINO-I, CLIP-T, and ImageReward when its package is installed.

All three CLIP/DINO scores are **raw cosine similarities in [-1, 1]**, the scale of the paper's tables (Table 1
reports CLIP-T 0.308, CLIP-I 0.795, DINO 0.604 for InstantCharacter). Multiply by 100 to compare with papers
that print DreamBooth-style percentages.

- CLIP-I: cosine of the CLIP image embeddings (projected ``image_embeds``) of the reference character and of the
  character in the generated image.
- DINO-I: cosine of the DINO ``[CLS]`` embeddings (last hidden state, token 0, after the final layer norm) of the same
  pair. Any ViT-style backbone loaded by ``AutoModel`` works (DINO v1 ``ViTModel``, DINOv2).
- CLIP-T: cosine of the CLIP embedding of the whole generated image and of the prompt (``[Name]`` tags should be
  replaced by words first, see ``core.evaluation.format.prompt_for_text_metric``).
- ImageReward: the ``image-reward`` package's score (unbounded, roughly -2.5 to 2.5), only when that package is
  importable; otherwise it is reported as missing with one warning.

Like the paper, the image metrics can segment both characters first: pass masks, or a segmenter (see
``core.conditioning.segmentation``); the foreground is kept on white and cropped to its bounding box.

Images (references, generated images, paths or PIL images) are read with the engine's own loader
(:func:`core.io.images.load_image`: EXIF orientation applied, alpha composited on white, the same size limits), so a
character is scored on the pixels the engine saw.

Models load lazily on first use, from a hub id or a local folder, with transformers' ``from_pretrained`` (never
``trust_remote_code``), on CUDA when present. Reference features are cached by image content, so scoring many
generations of the same character encodes it once.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
from PIL import Image

from core.io.images import ImageInputError, image_key, load_image, to_rgb
from core.conditioning.segmentation import as_segmenter, isolate
from core.loading.sources import is_local
from core.errors import UserError

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "DEFAULT_IMAGE_REWARD_MODEL",
    "METRICS",
    "METRIC_RANGES",
    "MetricsError",
    "ScoreCase",
    "CaseScores",
    "CharacterScorer",
    "image_reward_available",
    "case_from_characters",
]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
DEFAULT_IMAGE_REWARD_MODEL = "ImageReward-v1.0"

#: Metric names in report order.
METRICS = ("clip_i", "dino_i", "clip_t", "image_reward")
#: Documented range of each metric; ``None`` means unbounded.
METRIC_RANGES: dict[str, tuple[float, float] | None] = {
    "clip_i": (-1.0, 1.0),
    "dino_i": (-1.0, 1.0),
    "clip_t": (-1.0, 1.0),
    "image_reward": None,
}

ImageLike = Union[Image.Image, str, os.PathLike]
#: Where a character is in the generated image: an ``L`` mask, or a normalized ``(x0, y0, x1, y1)`` box in [0, 1].
Region = Union[Image.Image, Sequence[float]]


class MetricsError(UserError, RuntimeError):
    """A model or input problem, with a one-line message meant for the user."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load(value: object, what: str = "image") -> Image.Image:
    """``value`` (a PIL image or a path) as the engine reads it (:func:`core.io.images.load_image`); errors name
    ``what`` and are one-line :class:`MetricsError`."""
    if not isinstance(value, (Image.Image, str, os.PathLike)):
        raise TypeError(f"{what} must be a PIL image or a path to one, got {type(value).__name__}")
    try:
        return load_image(value, what if isinstance(value, Image.Image) else f"{what} {os.fspath(value)}")
    except ImageInputError as error:
        raise MetricsError(str(error)) from None


def _rgb(value: object, what: str = "image") -> Image.Image:
    """A crop or segmented view made here (any size) as RGB, alpha on white as in the engine; a path is loaded."""
    return to_rgb(value) if isinstance(value, Image.Image) else _load(value, what)


def image_reward_available() -> bool:
    """Whether the optional ``image-reward`` package (module ``ImageReward``) can be imported."""
    try:
        import ImageReward  # noqa: F401
    except ImportError:
        return False
    return True


def _crop_to_region(image: Image.Image, region: Region | None) -> Image.Image:
    if region is None:
        return image
    if isinstance(region, Image.Image):
        box = region.convert("L").resize(image.size, Image.Resampling.NEAREST).point(lambda v: 255 if v > 127 else 0)
        bbox = box.getbbox()
        return image.crop(bbox) if bbox else image
    values = [float(v) for v in region]
    if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values) or values[0] >= values[2] or values[1] >= values[3]:
        raise ValueError(f"region box must be (x0, y0, x1, y1) in [0, 1] with x0 < x1 and y0 < y1, got {region!r}")
    width, height = image.size
    left, top = int(values[0] * width), int(values[1] * height)
    right, bottom = max(left + 1, round(values[2] * width)), max(top + 1, round(values[3] * height))
    return image.crop((left, top, right, bottom))


@dataclass
class ScoreCase:
    """One generated image to score.

    Attributes:
        image: the generated image (PIL or path).
        prompt: text for CLIP-T and ImageReward (``None`` skips them).
        references: one reference image per character in the generated image.
        regions: optional, per reference: where that character is in the generated image (mask or normalized box);
            the generated image is cropped to it before segmentation. ``None`` entries mean the whole image.
        reference_masks: optional, per reference: a segmentation mask of the reference (overrides the segmenter).
        generated_masks: optional, per reference: a segmentation mask of that character in the generated image.
    """

    image: ImageLike
    prompt: str | None = None
    references: Sequence[ImageLike] = ()
    regions: Sequence[Region | None] | None = None
    reference_masks: Sequence[Image.Image | None] | None = None
    generated_masks: Sequence[Image.Image | None] | None = None


@dataclass
class CaseScores:
    """Scores of one case. Image metrics are means over the case's characters; ``per_character`` keeps each."""

    clip_i: float | None = None
    dino_i: float | None = None
    clip_t: float | None = None
    image_reward: float | None = None
    per_character: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | None]:
        """The case-level metrics, keyed by the names in :data:`METRICS`."""
        return {name: getattr(self, name) for name in METRICS}


class _Encoder:
    """A lazily loaded model and its processor."""

    def __init__(self, label: str, source: str | os.PathLike, loader: Callable[[str], tuple[Any, Any]]):
        self.label = label
        self.source = os.fspath(source)
        self._loader = loader
        self.model = None
        self.processor = None

    def load(self) -> None:
        if self.model is not None:
            return
        source = self.source
        if is_local(source):  # the engine's rule: an existing path, or one starting with '.', '/' or '~'
            source = os.path.expanduser(source)
            if not os.path.isdir(source):
                raise MetricsError(f"{self.label} model folder not found: {source}")
        try:
            self.model, self.processor = self._loader(source)
        except MetricsError:
            raise
        except (OSError, ValueError, KeyError, EnvironmentError) as error:
            raise MetricsError(f"could not load {self.label} model from {source!r}: {_one_line(error)}") from None


class CharacterScorer:
    """Scores character consistency (CLIP-I, DINO-I) and text alignment (CLIP-T, ImageReward).

    Args:
        clip_model: hub id or local folder of a ``CLIPModel`` with its processor; ``None`` disables CLIP-I and CLIP-T.
        dino_model: hub id or local folder of a DINO-style ViT (``AutoModel``) with its image processor; ``None``
            disables DINO-I.
        segmenter: ``None`` (no segmentation), ``"threshold"`` (built-in, plain backgrounds), a callable
            ``segment(image) -> L mask`` or an object with a ``segment`` method. Applied to references and generated
            characters before CLIP-I/DINO-I, never to CLIP-T.
        device: torch device; defaults to CUDA when available, else CPU.
        dtype: model dtype (float32 default: scores are compared across runs, so precision beats speed here).
        batch_size: images per forward pass.
        image_reward: also compute ImageReward when its package is installed.
        local_files_only: never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).
    """

    def __init__(
        self,
        clip_model: str | os.PathLike | None = DEFAULT_CLIP_MODEL,
        dino_model: str | os.PathLike | None = DEFAULT_DINO_MODEL,
        *,
        segmenter: object = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        image_reward: bool = False,
        image_reward_model: str = DEFAULT_IMAGE_REWARD_MODEL,
        local_files_only: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.segmenter = as_segmenter(segmenter)
        self.local_files_only = local_files_only
        self.image_reward_enabled = image_reward
        self.image_reward_model = image_reward_model
        self._image_reward = None
        self._image_reward_warned = False
        self._clip = _Encoder("CLIP", clip_model, self._load_clip) if clip_model is not None else None
        self._dino = _Encoder("DINO", dino_model, self._load_dino) if dino_model is not None else None
        self._reference_cache: dict[tuple[str, str, str], torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- loading
    def _load_clip(self, source: str):
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(source, local_files_only=self.local_files_only, dtype=self.dtype)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=self.local_files_only)
        return model.to(self.device).eval(), processor

    def _load_dino(self, source: str):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = AutoConfig.from_pretrained(source, local_files_only=self.local_files_only)
        # DINO v1 checkpoints are plain ViTs; their pooler is unused here (the score uses the CLS token).
        extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
        model = AutoModel.from_pretrained(source, local_files_only=self.local_files_only, dtype=self.dtype, **extra)
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=self.local_files_only)
        return model.to(self.device).eval(), processor

    def _encoder(self, kind: str) -> _Encoder:
        encoder = self._clip if kind == "clip" else self._dino
        if encoder is None:
            raise MetricsError(f"no {kind.upper()} model configured for this scorer")
        encoder.load()
        return encoder

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this scorer reports (ImageReward only when enabled and installed)."""
        names = []
        if self._clip is not None:
            names.append("clip_i")
        if self._dino is not None:
            names.append("dino_i")
        if self._clip is not None:
            names.append("clip_t")
        if self.image_reward_enabled and image_reward_available():
            names.append("image_reward")
        return tuple(names)

    def describe(self) -> dict[str, object]:
        """What determines the scores (models, segmentation): stored with results so runs stay comparable."""
        return {
            "clip_model": self._clip.source if self._clip else None,
            "dino_model": self._dino.source if self._dino else None,
            "segmenter": repr(self.segmenter) if self.segmenter is not None else None,
            "image_reward": self.image_reward_model if "image_reward" in self.metrics else None,
            "clip_t_scale": "raw cosine",
        }

    # ----------------------------------------------------------------------------------------------- features
    def prepare_character(self, image: ImageLike, mask: Image.Image | None = None, what: str = "image") -> Image.Image:
        """The image the image metrics see: the mask's (or the segmenter's) foreground on white, cropped."""
        image = _rgb(image, what)
        if mask is not None:
            if not isinstance(mask, Image.Image):
                raise TypeError(f"{what} mask must be a PIL image, got {type(mask).__name__}")
            return isolate(image, mask)
        if self.segmenter is not None:
            return isolate(image, self.segmenter(image))
        return image

    @torch.inference_mode()
    def image_embeddings(self, kind: str, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalized embeddings, shape ``(len(images), dim)``, float32 on the CPU. ``kind``: "clip" or "dino"."""
        if kind not in ("clip", "dino"):
            raise ValueError(f"kind must be 'clip' or 'dino', got {kind!r}")
        encoder = self._encoder(kind)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [_rgb(image) for image in images[start : start + self.batch_size]]
            if kind == "clip":
                inputs = encoder.processor(images=batch, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, self.dtype)
                features = encoder.model.get_image_features(pixel_values=pixels).pooler_output
            else:
                inputs = encoder.processor(images=batch, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, self.dtype)
                features = encoder.model(pixel_values=pixels).last_hidden_state[:, 0]
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        if not chunks:
            return torch.empty(0, 0)
        return torch.cat(chunks)

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalized CLIP text embeddings, shape ``(len(prompts), dim)``; prompts longer than CLIP's context
        (77 tokens for OpenAI CLIP) are truncated."""
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        encoder = self._encoder("clip")
        max_length = encoder.model.config.text_config.max_position_embeddings
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            inputs = encoder.processor(
                text=batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            features = encoder.model.get_text_features(**inputs).pooler_output
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        if not chunks:
            return torch.empty(0, 0)
        return torch.cat(chunks)

    def reference_embeddings(
        self, kind: str, references: Sequence[ImageLike], masks: Sequence[Image.Image | None] | None = None
    ) -> torch.Tensor:
        """Like :meth:`image_embeddings` after segmentation, cached by the content of each reference and mask."""
        masks = list(masks) if masks is not None else [None] * len(references)
        if len(masks) != len(references):
            raise ValueError(f"got {len(masks)} reference masks for {len(references)} references")
        images = [_load(reference, "reference") for reference in references]
        keys = [
            (kind, image_key(image), image_key(mask) if isinstance(mask, Image.Image) else "")
            for image, mask in zip(images, masks)
        ]
        missing = {}
        for key, image, mask in zip(keys, images, masks):
            if key not in self._reference_cache and key not in missing:
                missing[key] = self.prepare_character(image, mask, "reference")
        if missing:
            features = self.image_embeddings(kind, list(missing.values()))
            self._reference_cache.update(zip(missing.keys(), features))
        return torch.stack([self._reference_cache[key] for key in keys])

    def clear_cache(self) -> None:
        """Forget cached reference features."""
        self._reference_cache.clear()

    # ----------------------------------------------------------------------------------------------- metrics
    def _image_similarity(self, kind, reference, generated, reference_mask, generated_mask) -> float:
        reference_features = self.reference_embeddings(kind, [reference], [reference_mask])
        prepared = self.prepare_character(generated, generated_mask, "generated image")
        generated_features = self.image_embeddings(kind, [prepared])
        return _cosine(reference_features, generated_features)[0]

    def clip_i(
        self,
        reference: ImageLike,
        generated: ImageLike,
        *,
        reference_mask: Image.Image | None = None,
        generated_mask: Image.Image | None = None,
    ) -> float:
        """CLIP-I: cosine of CLIP image embeddings of reference and generated character, in [-1, 1]."""
        return self._image_similarity("clip", reference, generated, reference_mask, generated_mask)

    def dino_i(
        self,
        reference: ImageLike,
        generated: ImageLike,
        *,
        reference_mask: Image.Image | None = None,
        generated_mask: Image.Image | None = None,
    ) -> float:
        """DINO-I: cosine of DINO CLS embeddings of reference and generated character, in [-1, 1]."""
        return self._image_similarity("dino", reference, generated, reference_mask, generated_mask)

    def clip_t(self, image: ImageLike, prompt: str) -> float:
        """CLIP-T: raw cosine of CLIP embeddings of the whole image and the prompt, in [-1, 1] (not x100)."""
        image_features = self.image_embeddings("clip", [_load(image, "image")])
        return _cosine(image_features, self.text_embeddings([prompt]))[0]

    def image_reward(self, image: ImageLike, prompt: str) -> float | None:
        """ImageReward score, or ``None`` (with one warning) when the ``image-reward`` package is not installed."""
        scores = self._image_reward_scores([_load(image, "image")], [prompt])
        return scores[0]

    def _image_reward_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float | None]:
        if self._image_reward is None:
            if not image_reward_available():
                if not self._image_reward_warned:
                    warnings.warn(
                        "ImageReward skipped: its package is not installed (pip install image-reward)", stacklevel=3
                    )
                    self._image_reward_warned = True
                return [None] * len(images)
            import ImageReward

            try:
                self._image_reward = ImageReward.load(self.image_reward_model, device=str(self.device))
            except Exception as error:  # the package downloads its own weights; report any failure on one line
                raise MetricsError(f"could not load ImageReward {self.image_reward_model!r}: {_one_line(error)}") from None
        results: list[float | None] = []
        with torch.inference_mode():
            for image, prompt in zip(images, prompts):
                score = self._image_reward.score(prompt, [image])
                results.append(float(score[0] if isinstance(score, (list, tuple)) else score))
        return results

    def score(self, cases: Sequence[ScoreCase]) -> list[CaseScores]:
        """Score many cases with batched forward passes; equal to scoring them one at a time.

        Image metrics average over each case's characters (``per_character`` keeps each one); a case without
        references gets no CLIP-I/DINO-I, a case without a prompt no CLIP-T/ImageReward.
        """
        metrics = self.metrics
        generated = []
        character_index: list[tuple[int, int]] = []  # (case, character) for each generated crop
        references, reference_masks, crops = [], [], []
        for case_number, case in enumerate(cases):
            if not isinstance(case, ScoreCase):
                raise TypeError(f"case {case_number} must be a ScoreCase, got {type(case).__name__}")
            image = _load(case.image, f"case {case_number} image")
            generated.append(image)
            count = len(case.references)
            regions = _per_character(case.regions, count, "regions", case_number)
            ref_masks = _per_character(case.reference_masks, count, "reference_masks", case_number)
            gen_masks = _per_character(case.generated_masks, count, "generated_masks", case_number)
            for index, reference in enumerate(case.references):
                character_index.append((case_number, index))
                references.append(_load(reference, f"case {case_number} reference {index}"))
                reference_masks.append(ref_masks[index])
                crop = _crop_to_region(image, regions[index])
                crops.append(self.prepare_character(crop, gen_masks[index], f"case {case_number} generated image"))

        per_character: list[list[dict[str, float]]] = [[{} for _ in case.references] for case in cases]
        for kind, name in (("clip", "clip_i"), ("dino", "dino_i")):
            if name not in metrics or not references:
                continue
            similarities = _cosine(
                self.reference_embeddings(kind, references, reference_masks), self.image_embeddings(kind, crops)
            )
            for (case_number, index), value in zip(character_index, similarities):
                per_character[case_number][index][name] = value

        results = [CaseScores(per_character=characters) for characters in per_character]
        for result in results:
            for name in ("clip_i", "dino_i"):
                values = [character[name] for character in result.per_character if name in character]
                if values:
                    setattr(result, name, sum(values) / len(values))

        with_prompt = [number for number, case in enumerate(cases) if case.prompt is not None]
        if with_prompt and "clip_t" in metrics:
            image_features = self.image_embeddings("clip", [generated[number] for number in with_prompt])
            text_features = self.text_embeddings([cases[number].prompt for number in with_prompt])
            for number, value in zip(with_prompt, _cosine(image_features, text_features)):
                results[number].clip_t = value
        if with_prompt and self.image_reward_enabled:
            rewards = self._image_reward_scores(
                [generated[number] for number in with_prompt], [cases[number].prompt for number in with_prompt]
            )
            for number, value in zip(with_prompt, rewards):
                results[number].image_reward = value
        return results


def _routing_region(mask) -> Region | None:
    """The scoring region of an engine ``RoutingMask`` (box, or soft image thresholded at one half)."""
    if mask is None:
        return None
    if getattr(mask, "box", None) is not None:
        return tuple(mask.box)
    array = getattr(mask, "image", None)
    if array is None:
        return None
    return Image.fromarray(((array > 0.5) * 255).astype("uint8"), mode="L")


def case_from_characters(image: ImageLike, prompt: str | None, characters: Sequence) -> ScoreCase:
    """A :class:`ScoreCase` for an image the engine made from ``characters`` (``core.conditioning.character.Character``):
    their reference images, their masks as regions, and the prompt with ``[Name]`` tags replaced by their words
    (as the engine's text encoders read it). This is what the studio's "score this image" shows."""
    text = None
    if prompt is not None:
        from core.conditioning.prompt import resolve_prompt

        text = resolve_prompt(prompt, list(characters)).text
    return ScoreCase(
        image=image,
        prompt=text,
        references=[character.image for character in characters],
        regions=[_routing_region(character.mask) for character in characters],
    )


def _per_character(values, count: int, name: str, case_number: int) -> list:
    if values is None:
        return [None] * count
    values = list(values)
    if len(values) != count:
        raise ValueError(f"case {case_number}: {name} has {len(values)} entries for {count} references")
    return values


def _cosine(first: torch.Tensor, second: torch.Tensor) -> list[float]:
    """Row-wise cosine of two batches of unit vectors, clamped to [-1, 1] against rounding."""
    return (first * second).sum(-1).clamp(-1.0, 1.0).tolist()

"""Validation scores during training: the paper's CLIP-I, DINO-I and CLIP-T on a held-out set (issue 8).

Every ``validation.every`` optimizer steps the main process renders each held-out row with the current adapter
through the engine pipeline (no gradients, eval mode, case ``i`` with seed ``validation.seed + i``, the training
RNG untouched), each row as one :class:`core.request.GenerationRequest` (the engine's description of a generation),
and scores it with :class:`core.evaluation.metrics.CharacterScorer`:

* a row's characters are its references (an unpaired row: its image), named as in the dataset, placed by their
  boxes or masks, at scale 1.0 as in training; the caption keeps its ``[Name]`` tags, so a text adapter being
  trained takes part exactly as it would in the engine;
* CLIP-I and DINO-I compare each reference with the generated image (cropped to the character's box or mask when
  it has one, and segmented when ``validation.segmenter`` says so); CLIP-T compares the image with the caption as
  the text encoders read it (tags replaced by the names).

The means over the cases go to the event log as ``{"event": "validation", "step", "clip_i", "dino_i", "clip_t",
"cases", "images"}``; the images are kept under ``output_dir/validation/``.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from .config import TrainConfig, ValidationConfig
from .data import Example, load_dataset

SCORES = ("clip_i", "dino_i", "clip_t")


def validation_characters(row: Example) -> list:
    """The :class:`core.conditioning.character.Character` objects a held-out row is rendered and scored with."""
    from core.conditioning.character import Character

    if not row.references:
        return [Character(row.target, scale=1.0)]
    characters = []
    for ref in row.references:
        mask = ref.box
        if ref.mask is not None:
            with Image.open(ref.mask) as image:
                mask = image.convert("L")
        characters.append(Character(ref.image, name=ref.name, scale=1.0, mask=mask))
    return characters


def forget_adapter_outputs(pipe) -> None:
    """Drops the pipeline's cached projector contexts (made from weights that train), keeping the cached encoder
    features and prompt embeddings (frozen models: still valid, and the character encoders are the slow part)."""
    contexts = getattr(pipe, "_context_cache", None)
    if contexts is None:
        pipe.clear_caches()
    else:
        contexts.clear()


def mean_scores(scores) -> dict[str, float | None]:
    """The mean of each metric over the cases that have it (``None`` when none has)."""
    out = {}
    for name in SCORES:
        values = [getattr(s, name) for s in scores if getattr(s, name) is not None]
        out[name] = round(sum(values) / len(values), 6) if values else None
    return out


class Validator:
    """Renders and scores the held-out rows; the metric models load on the first :meth:`run`."""

    def __init__(self, config: TrainConfig, rows: list[Example]):
        self.settings: ValidationConfig = config.validation
        self.max_sequence_length = config.data.max_sequence_length
        self.rows = rows[: self.settings.max_cases] if self.settings.max_cases else rows
        self.folder = config.output_path / "validation"
        self._config = config
        self._scorer = None

    @classmethod
    def from_config(cls, config: TrainConfig) -> Validator | None:
        """``None`` when validation is off; raises ``DatasetError`` listing the held-out set's bad rows."""
        v = config.validation
        if not v.every:
            return None
        return cls(config, load_dataset(config.resolve(v.data)))

    def _model_source(self, value: str | None) -> str | None:
        if not value:
            return None
        local = self._config.resolve(value)
        return str(local) if local.exists() else value  # else a hub id

    @property
    def scorer(self):
        if self._scorer is None:
            from core.evaluation.metrics import CharacterScorer

            v = self.settings
            self._scorer = CharacterScorer(self._model_source(v.clip_model), self._model_source(v.dino_model),
                                           segmenter=v.segmenter)
        return self._scorer

    def request(self, i: int, row: Example):
        """The :class:`core.request.GenerationRequest` of held-out case ``i``: the row's caption and characters at
        the validation settings, seed ``validation.seed + i``."""
        from core.request import GenerationRequest

        v = self.settings
        return GenerationRequest(row.caption, characters=validation_characters(row), steps=v.steps,
                                 guidance=v.guidance_scale, width=v.size, height=v.size, seed=v.seed + i,
                                 max_sequence_length=self.max_sequence_length)

    @torch.no_grad()
    def render(self, pipe, step: int, autocast) -> list:
        """Generates every case with the adapter now in ``pipe`` (the training pipeline: the one the adapter trains
        in, not one of the engine's own); returns ``(image path, ScoreCase)`` pairs."""
        from core.evaluation.metrics import case_from_characters

        self.folder.mkdir(parents=True, exist_ok=True)
        out = []
        forget_adapter_outputs(pipe)
        with torch.random.fork_rng(), autocast:
            for i, row in enumerate(self.rows):
                request = self.request(i, row)
                characters = request.characters
                image = pipe(**request.pipeline_kwargs(),
                             generator=torch.Generator("cpu").manual_seed(request.image_seed(0))).images[0]
                path = self.folder / f"step-{step:08d}-case{i:03d}.png"
                image.save(path)
                out.append((path, case_from_characters(image, row.caption, characters)))
        forget_adapter_outputs(pipe)
        return out

    def run(self, model, pipe, step: int, autocast) -> dict:
        """Renders (in eval mode) and scores; returns the event fields."""
        was_training = model.training
        model.eval()
        try:
            rendered = self.render(pipe, step, autocast)
        finally:
            model.train(was_training)
        scores = self.scorer.score([case for _, case in rendered])
        means = mean_scores(scores)
        for name, value in means.items():
            if value is not None and not math.isfinite(value):
                means[name] = None
        return {"step": step, **means, "cases": len(rendered), "images": [str(p) for p, _ in rendered]}

"""The trainer's validation renders: one GenerationRequest per held-out row, called on the training pipeline."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
from PIL import Image

from trainer.config import ValidationConfig
from trainer.data import Example, Reference
from trainer.validation import Validator


class RecordingPipe:
    """Stands in for the training pipeline: records each call, returns a grey image of the asked size."""

    def __init__(self):
        self.calls = []
        self._context_cache = {}

    def __call__(self, **kwargs):
        self.calls.append({**kwargs, "seed": kwargs["generator"].initial_seed()})
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]), (128, 128, 128))])


def test_each_row_is_one_request_with_its_seed_and_the_training_rng_untouched(tmp_path):
    for name, colour in (("ann", (200, 40, 40)), ("target", (40, 200, 40))):
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{name}.png")
    rows = [Example(tmp_path / "target.png", "[Ann] on a hill",
                    (Reference(tmp_path / "ann.png", name="Ann", box=(0.0, 0.0, 0.5, 1.0)),)),
            Example(tmp_path / "target.png", "a green square")]  # unpaired: the target is its own reference
    config = SimpleNamespace(validation=ValidationConfig(every=1, size=32, steps=2, guidance_scale=2.5, seed=7),
                             data=SimpleNamespace(max_sequence_length=77), output_path=tmp_path / "run")
    validator = Validator(config, rows)
    pipe = RecordingPipe()
    state = torch.random.get_rng_state()
    rendered = validator.render(pipe, 3, contextlib.nullcontext())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [c["seed"] for c in pipe.calls] == [7, 8]
    first = pipe.calls[0]
    assert (first["prompt"], first["width"], first["height"], first["num_inference_steps"]) == (
        "[Ann] on a hill", 32, 32, 2)
    assert (first["guidance_scale"], first["max_sequence_length"], first["true_cfg_scale"]) == (2.5, 77, 1.0)
    (ann,) = first["characters"]
    assert (ann.name, ann.scale, ann.mask.box) == ("Ann", 1.0, (0.0, 0.0, 0.5, 1.0))
    assert [c.name for c in pipe.calls[1]["characters"]] == [None]
    assert [p.name for p, _ in rendered] == ["step-00000003-case000.png", "step-00000003-case001.png"]

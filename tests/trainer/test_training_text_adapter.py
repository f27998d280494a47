"""The text adapter as a trainable part, and validation scores during training, on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.events import read_events

from .conftest import tiny_config_text

BOTH = ["image_adapter", "text_adapter"]
SMALL_TEXT_ADAPTER = """
[text_adapter]
dim = 64
depth = 1
num_queries = 4
token_dim = 32
"""


def _config(folder: Path, unpaired, paired, cache, *, steps: int, batch: int = 1, lr: float = 1e-3,
            tables: str = "", checkpoint_every: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    text = tiny_config_text(folder / "out", unpaired, cache, steps=steps, batch=batch, lr=lr, paired=paired,
                            stage_data="paired", trainable=BOTH, tables=SMALL_TEXT_ADAPTER + tables,
                            checkpoint_every=checkpoint_every)
    (folder / "config.toml").write_text(text)
    return load_config(folder / "config.toml")


def _validation_table(heldout: Path, models: dict, every: int) -> str:
    return f"""
[validation]
every = {every}
data = "{heldout}"
clip_model = "{models['clip']}"
dino_model = "{models['dino']}"
segmenter = "threshold"
steps = 2
size = 32
seed = 3
"""


def test_both_parts_resume_exactly_with_validation_scores_logged(trainer_home, unpaired_data,
                                                                  tagged_reconstruction_data, tiny_metric_models,
                                                                  encoder_cache, tmp_path):
    from trainer.loop import Trainer

    data = tagged_reconstruction_data
    heldout = data.parent / "heldout.jsonl"
    # the uninterrupted run also validates: its renders must not disturb training's random numbers
    straight = _config(tmp_path / "straight", unpaired_data, data, encoder_cache, steps=4,
                       tables=_validation_table(heldout, tiny_metric_models, every=2))
    Trainer(straight).run()
    out = straight.output_path
    validations = [e for e in read_events(out) if e["event"] == "validation"]
    assert [e["step"] for e in validations] == [2, 4]
    for event in validations:
        print("validation:", {k: event[k] for k in ("step", "clip_i", "dino_i", "clip_t")})
        for name in ("clip_i", "dino_i", "clip_t"):
            assert math.isfinite(event[name]) and -1.0 <= event[name] <= 1.0, event
        assert event["cases"] == 1 and all(Path(p).is_file() for p in event["images"])

    info = json.loads((out / "adapter.json").read_text())
    assert info["text_adapter"]["file"] == "adapter.text_adapter.safetensors"
    text_weights = load_file(str(out / "adapter.text_adapter.safetensors"))
    moved = max(float(v.abs().max()) for k, v in text_weights.items() if k.endswith("to_out.weight"))
    print(f"text adapter to_out after 4 steps: max |w| = {moved:.3g} (zero at the start)")
    assert moved > 0

    interrupted = _config(tmp_path / "interrupted", unpaired_data, data, encoder_cache, steps=4)
    first = Trainer(interrupted).run(max_steps=2)
    assert first.stopped and first.state.global_step == 2
    Trainer(interrupted, resume=True).run()
    for name in ("adapter.safetensors", "adapter.text_adapter.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(interrupted.output_path / name))
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"resume: {name} max |difference| = {diff}")
        assert diff == 0.0


@pytest.mark.slow
def test_both_parts_learn_and_the_text_adapter_changes_the_engine(trainer_home, unpaired_data, named_paired_data,
                                                                  encoder_cache, tmp_path):
    from core.conditioning.character import Character
    from core.models.pipeline import InstantCharacterPipeline
    from core.loading.sources import ModelSources
    from trainer.data import load_dataset
    from trainer.loop import train
    from trainer.batch import BatchEncoder, EncodingCache
    from trainer.objective import build_training_model, fixed_loss

    config = _config(tmp_path, unpaired_data, named_paired_data, encoder_cache, steps=24, batch=2)
    result = train(config)
    assert not result.stopped
    adapter, text_adapter = config.output_path / "adapter.safetensors", \
        config.output_path / "adapter.text_adapter.safetensors"

    rows = load_dataset(named_paired_data)
    losses = {}
    for label, image_path, text_path in (("untrained", None, None), ("trained image adapter only", str(adapter), None),
                                         ("trained, both parts", str(adapter), text_adapter)):
        pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), adapter=image_path,
                                                        text_adapter=text_path, dtype=torch.float32, progress=False)
        pipe.set_progress_bar_config(disable=True)
        model = build_training_model(pipe, BOTH, config.objective, fresh=False, seed=0,
                                     part_options=config.part_options())
        if text_path is not None:  # the part took the engine's loaded text adapter, not a fresh one
            assert model.parts["text_adapter"].text_adapter is pipe.text_adapter
        encoder = BatchEncoder(pipe, config.objective, 16, EncodingCache(encoder_cache, ("features",)), 0)
        losses[label] = fixed_loss(model, encoder, rows, 64, repeats=4)
    print("fixed-noise flow-matching loss: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    assert losses["trained, both parts"] < losses["untrained"] * 0.97
    assert losses["trained, both parts"] != losses["trained image adapter only"]

    # the engine with the exported text adapter differs from the engine without it, for a prompt naming the character
    ann = Character(rows[0].references[0].image, name="Ann")
    kwargs = {"characters": [ann], "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 16,
              "output_type": "latent"}
    with_text = pipe("[Ann] on a hill", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.unload_text_adapter()
    without = pipe("[Ann] on a hill", generator=torch.Generator().manual_seed(0), **kwargs).images
    change = float((with_text - without).abs().max())
    print(f"engine output, with vs without the trained text adapter: max |difference| = {change:.3g}")
    assert change > 1e-5

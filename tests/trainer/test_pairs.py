"""Multi-character pair construction: segmentation into characters, the written dataset validates."""

from __future__ import annotations

import pytest
from PIL import Image

from trainer.data import validate
from trainer.pairs import BiRefNetSegmenter, MultiCharacterPairBuilder, split_regions
from core.conditioning.segmentation import BackgroundThresholdSegmenter

from .conftest import BACKGROUND, COLOURS, draw_character


def _group():
    image = Image.new("RGB", (96, 48), BACKGROUND)
    draw_character("square", COLOURS[1], canvas=image, offset=(48, 0))
    draw_character("circle", COLOURS[0], canvas=image)
    return image


def test_split_regions_left_to_right():
    regions = split_regions(BackgroundThresholdSegmenter()(_group()), 2)
    assert len(regions) == 2
    (l0, _, r0, _), (l1, _, r1, _) = (r.getbbox() for r in regions)
    assert r0 <= 48 <= l1


def test_birefnet_needs_trust_remote_code():
    with pytest.raises(ValueError, match="trust_remote_code"):
        BiRefNetSegmenter()


@pytest.mark.slow
def test_builder_writes_a_valid_multi_character_dataset(trainer_home, tmp_path):
    import torch

    from core.models.pipeline import InstantCharacterPipeline
    from core.loading.sources import ModelSources

    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), dtype=torch.float32, progress=False)
    pipe.set_progress_bar_config(disable=True)
    builder = MultiCharacterPairBuilder(pipe, "threshold", resolution=32, steps=1, max_sequence_length=16)
    blank = Image.new("RGB", (96, 48), BACKGROUND)  # no characters: skipped
    path = builder.build(tmp_path / "pairs", ["Ann", "Bob"], views=1, group_images=[_group(), blank])
    report = validate(path, "paired")
    assert report.ok, report.summary()
    (row,) = report.examples
    assert [r.name for r in row.references] == ["Ann", "Bob"]
    assert row.references[0].box[2] <= 0.5 <= row.references[1].box[0]
    assert '"found": 0' in (tmp_path / "pairs" / "skipped.json").read_text()

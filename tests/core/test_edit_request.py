"""An edit in the request and its PNG record: the source (digest, saved beside the output), the strength and the
region travel with the image, and Recall gives back the same request. A request without a source is unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.conditioning.edit import EditError
from core.io.images import rgb_digest
from core.conditioning.masks import RoutingMask
from core.io.metadata import GenerationRecord, MetadataError, read_record, save_png
from core.request import GenerationRequest, request_from_png


@pytest.fixture
def source():
    return Image.fromarray((np.random.RandomState(3).rand(64, 64, 3) * 255).astype(np.uint8))


def _region():
    mask = np.zeros((64, 64), np.float32)
    mask[8:30, 10:50] = 0.8
    return RoutingMask.from_spec(mask)


def _edit(source, **kwargs):
    return GenerationRequest("a cat", steps=4, width=64, height=64, seed=7, source_image=source, strength=0.35,
                             inpaint_region=_region(), **kwargs).check()


def test_a_request_without_a_source_is_as_before():
    request = GenerationRequest("a cat", width=64, height=64, seed=1).check()
    assert set(request.pipeline_kwargs()) == {"prompt", "characters", "negative_prompt", "true_cfg_scale",
                                              "num_inference_steps", "guidance_scale", "height", "width",
                                              "max_sequence_length", "resolved_prompt"}
    assert "edit" not in request.summary()
    record = request.to_record()
    assert record.edit is None and "edit" not in json.loads(record.to_json())
    assert "Edit:" not in record.parameters_text()


def test_the_edit_reaches_the_pipeline(source):
    kwargs = _edit(source).pipeline_kwargs()
    assert kwargs["image"] is source and kwargs["strength"] == 0.35
    assert isinstance(kwargs["mask_image"], RoutingMask)


def test_the_record_holds_digest_file_strength_and_region(source):
    record = _edit(source).to_record()
    digest = rgb_digest(source)
    assert record.edit == {"source_sha256": digest, "source_file": f"source-{digest[:16]}.png", "strength": 0.35,
                           "region": _region().to_json()}
    assert f"Edit: source-{digest[:16]}.png at strength 0.35, inpaint png:" in record.parameters_text()


def test_recall_of_an_edit_png_restores_source_strength_and_region(source, tmp_path):
    request = _edit(source)
    out = save_png(Image.new("RGB", (64, 64)), tmp_path / "edit.png", request.to_record(), source=source)
    saved = tmp_path / request.edit_record()["source_file"]
    assert saved.is_file() and rgb_digest(Image.open(saved)) == rgb_digest(source)
    recalled = request_from_png(out)
    assert np.array_equal(np.asarray(recalled.source_image), np.asarray(source))
    assert recalled.strength == 0.35
    assert np.allclose(recalled.inpaint_region.image, _region().image, atol=1 / 255)
    assert recalled.summary() == request.summary()


def test_recall_with_a_box_region(source, tmp_path):
    request = GenerationRequest("a cat", width=64, height=64, seed=7, source_image=source, strength=1.0,
                                inpaint_region="left").check()
    out = save_png(Image.new("RGB", (64, 64)), tmp_path / "edit.png", request.to_record(), source=source)
    recalled = request_from_png(out)
    assert recalled.inpaint_region.label == "left" and recalled.summary() == request.summary()


def test_recall_without_the_source_beside_it_says_so(source, tmp_path):
    request = _edit(source)
    out = save_png(Image.new("RGB", (64, 64)), tmp_path / "edit.png", request.to_record(), source=source)
    (tmp_path / request.edit_record()["source_file"]).unlink()
    with pytest.raises(MetadataError, match=r"this image is an edit of source-[0-9a-f]{16}\.png, which is not "
                                            "beside it"):
        request_from_png(out)


def test_recall_refuses_a_different_source(source, tmp_path):
    request = _edit(source)
    out = save_png(Image.new("RGB", (64, 64)), tmp_path / "edit.png", request.to_record(), source=source)
    Image.new("RGB", (64, 64), "red").save(tmp_path / request.edit_record()["source_file"])
    with pytest.raises(MetadataError, match="is not the source this image was edited from"):
        request_from_png(out)


@pytest.mark.parametrize("edit, message", [
    ({"source_sha256": "zz", "source_file": "source-0.png", "strength": 0.5}, "source_sha256 must be a sha256"),
    ({"source_sha256": "a" * 64, "source_file": "../../etc/passwd", "strength": 0.5}, "source_file must be"),
    ({"source_sha256": "a" * 64, "source_file": "source-" + "a" * 16 + ".png", "strength": 3}, "edit strength"),
])
def test_bad_edit_records_are_refused(edit, message):
    data = json.loads(GenerationRecord(prompt="x", seed=1).to_json())
    data["edit"] = edit
    with pytest.raises(MetadataError, match=message):
        GenerationRecord.from_json(json.dumps(data))


def test_bad_edit_requests(source):
    with pytest.raises(EditError, match=r"strength=1\.2: must be from 0 \(keep the source\) to 1"):
        GenerationRequest("a cat", width=64, height=64, source_image=source, strength=1.2).check()
    with pytest.raises(EditError, match="an inpaint mask needs a source image to edit"):
        GenerationRequest("a cat", width=64, height=64, inpaint_region="left").check()
    with pytest.raises(EditError, match="the inpaint mask is empty"):
        GenerationRequest("a cat", width=64, height=64, source_image=source,
                          inpaint_region=np.zeros((8, 8), np.float32)).check()


def test_a_record_reads_back_with_its_edit(source, tmp_path):
    record = _edit(source).to_record()
    out = save_png(Image.new("RGB", (64, 64)), tmp_path / "e.png", record, source=source)
    assert read_record(out).edit == record.edit


@pytest.mark.parametrize("steps, strength, expected", [(10, 1.0, 10), (10, 0.5, 5), (10, 0.25, 3), (8, 0.01, 1),
                                                       (6, 0.0, 0)])
def test_denoising_steps_of_an_edit(source, steps, strength, expected):
    """As the pipeline takes them (tests/core/test_edit.py counts them there): the engine's progress uses it."""
    request = GenerationRequest("a cat", steps=steps, width=64, height=64, source_image=source, strength=strength)
    assert request.denoising_steps == expected
    assert GenerationRequest("a cat", steps=steps).denoising_steps == steps

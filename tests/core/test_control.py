"""Control images through the request and the engine on the tiny models: every memory preset with a masked
character and true CFG, PNG records and Recall, no control = the request of before, and each bad input's
one-line message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.conditioning.character import Character
from core.conditioning.control import ControlError, ControlImage, check_kind, check_scale, parse_control_spec
from core.loading.memory import PRESET_ORDER
from core.models.pipeline import GenerationInputError
from core.request import GenerationRequest

SIZE = 64


def _pose(size=SIZE):
    return Image.fromarray((np.random.RandomState(5).rand(size, size, 3) * 255).astype(np.uint8))


# ~10 s each (a fresh engine): fp8 runs by default (it casts the ControlNet), the others with -m slow
@pytest.mark.parametrize("preset", [p if p == "fp8" else pytest.param(p, marks=pytest.mark.slow) for p in PRESET_ORDER])
def test_control_with_a_masked_character_and_true_cfg_under_every_preset(tiny_models, preset):
    """Through the engine, as every surface runs it (on this CPU a preset's GPU placement is not exercised; its
    storage is: fp8 casting and quanto reach the ControlNet too)."""
    from core.engine import Engine

    engine = Engine(str(tiny_models), preset=preset)
    mia = Character(Image.new("RGB", (32, 32), (200, 0, 0)), name="Mia", mask="left")
    request = GenerationRequest("[Mia] waves", characters=[mia], negative_prompt="blurry", true_cfg_scale=2.0,
                                steps=2, width=SIZE, height=SIZE, seed=1, controls=[ControlImage(_pose(), "pose")])
    result = engine.generate(request)
    assert len(result.images) == 1 and result.images[0].size == (SIZE, SIZE)
    assert result.records[0].control[0]["kind"] == "pose"
    assert result.records[0].models["controlnet"] == str(tiny_models / "controlnet")
    assert any("controlnet" in step for step in engine.steps)
    if engine.preset.transformer_quantization == "fp8-layerwise":
        assert any("controlnet stored in fp8" in step for step in engine.steps)


def test_no_control_is_the_request_of_before():
    request = GenerationRequest("a cat", seed=1)
    assert "control" not in request.pipeline_kwargs()
    assert "control" not in request.summary()
    assert '"control"' not in request.to_record().to_json()


def test_the_record_names_the_control_and_recall_reads_it_back(tiny_models, tmp_path):
    from core.engine import Engine
    from core.io.metadata import save_png
    from core.request import request_from_png

    control = ControlImage(_pose(), "depth", 0.5, 0.0, 0.5)
    request = GenerationRequest("a cat", steps=2, width=SIZE, height=SIZE, seed=3, controls=[control])
    result = Engine(str(tiny_models), dtype="float32").generate(request)
    path = save_png(result.images[0], tmp_path / "out.png", result.records[0], controls=request.controls)
    assert (tmp_path / control.file_name).is_file()
    assert "Control depth: control-" in result.records[0].parameters_text()
    again = request_from_png(path)
    assert again.controls == [control] and again.summary() == request.with_seed().summary()
    (tmp_path / control.file_name).unlink()
    with pytest.raises(Exception, match="not beside it"):
        request_from_png(path)


def test_a_control_image_of_another_size_is_resized_with_a_note(tiny_pipe, tiny_models):
    from diffusers import FluxControlNetModel

    tiny_pipe.load_controlnet(FluxControlNetModel.from_pretrained(str(tiny_models / "controlnet")))
    try:
        out = tiny_pipe(prompt="a cat", height=SIZE, width=SIZE, num_inference_steps=2, output_type="latent",
                        control=[ControlImage(_pose(48), "canny")], generator=torch.Generator().manual_seed(0))
    finally:
        tiny_pipe.unload_controlnet()
    assert "the canny control image is 48x48: resized to 64x64 (the output size)" in out.notes


def test_control_without_a_controlnet_says_so(tiny_pipe):
    with pytest.raises(GenerationInputError, match="control images need a ControlNet"):
        tiny_pipe(prompt="a cat", height=SIZE, width=SIZE, num_inference_steps=1,
                  control=[ControlImage(_pose(), "pose")])


def test_unknown_kind():
    with pytest.raises(ControlError, match=r"^control kind 'scribble' unknown: use one of pose, depth, canny, "
                                           r"soft-edge, gray$"):
        check_kind("scribble")
    assert check_kind("Soft Edge") == "soft-edge" and check_kind("openpose") == "pose"


@pytest.mark.parametrize("scale", [-0.1, 2.5, "lots", float("nan")])
def test_scale_out_of_range(scale):
    with pytest.raises(ControlError, match=r"^control scale .* (is out of range|is not a number): use 0 to 2"):
        check_scale(scale)


def test_step_range_must_be_ordered():
    with pytest.raises(ControlError, match="the pose control's steps 0.8-0.2: the range must be within 0-1"):
        ControlImage(_pose(), "pose", 0.7, 0.8, 0.2)


def test_control_spec():
    assert parse_control_spec("pose:poses/p3.png") == ("pose", "poses/p3.png", 0.7)
    assert parse_control_spec("depth:C:/maps/d.png:0.4") == ("depth", "C:/maps/d.png", 0.4)
    with pytest.raises(ControlError, match="write KIND:FILE"):
        parse_control_spec("pose.png")
    with pytest.raises(ControlError, match="--control scale '3' is out of range"):
        parse_control_spec("pose:p.png:3")
    with pytest.raises(ControlError, match="--control kind 'sketchy' unknown"):
        parse_control_spec("sketchy:p.png")


def test_a_record_with_a_bad_control_is_refused():
    from core.io.metadata import GenerationRecord, MetadataError

    entry = {"kind": "pose", "scale": 9, "start": 0, "end": 1, "sha256": "0" * 64, "file": "control-" + "0" * 16 + ".png"}
    text = GenerationRecord("a cat", 1, control=[entry]).to_json()
    with pytest.raises(MetadataError, match="control 1's scale 9 is out of range"):
        GenerationRecord.from_json(text)
    entry.update(scale=0.5, file="../x.png")
    with pytest.raises(MetadataError, match="file must be control-<digest>.png"):
        GenerationRecord.from_json(GenerationRecord("a cat", 1, control=[entry]).to_json())


def test_the_planner_counts_the_controlnet():
    from core.loading.memory import estimate, format_plan

    plain, control = estimate("full"), estimate("full", controlnet=True)
    assert control.weight_bytes["controlnet"] == 2_140_876_800 * 2  # Union-Pro-2.0's parameters in bf16
    assert control.gpu_peak_bytes >= plain.gpu_peak_bytes + control.weight_bytes["controlnet"]
    assert control.activation_bytes["denoise"] > plain.activation_bytes["denoise"]  # its residuals
    fp8 = estimate("fp8", controlnet=True)
    assert fp8.weight_bytes["controlnet"] < control.weight_bytes["controlnet"] * 0.7  # stored as the transformer
    assert estimate("low", controlnet=True).weight_bytes["controlnet"] < control.weight_bytes["controlnet"] * 0.6
    assert "+ ControlNet (Union-Pro-2.0)" in format_plan(24, 64, detect=False, controlnet=True)

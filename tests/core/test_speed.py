"""Speed options on the tiny models (CPU, float32): fused QKV exact, compiled within 1e-5 with no recompiles
across prompts, seeds, character images and scales, the draft step cache's transformer work, fallbacks' lines."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.conditioning.character import Character
from core.engine import Engine
from core.loading.speed import (SPEED_MODES, SpeedOptionError, SpeedOptions, apply_speed, check_attention_backend,
                                set_step_cache, step_cache_threshold)
from core.request import GenerationRequest

SIDE = 64  # a 4x4 token grid on the tiny models


def _character(colour, name="a", scale=0.9, mask=None):
    return Character(Image.new("RGB", (64, 64), colour), name=name, scale=scale, mask=mask)


def _request(characters, prompt="[a] in a park", seed=1, steps=2, **kwargs):
    return GenerationRequest(prompt, characters=characters, steps=steps, width=SIDE, height=SIDE, seed=seed,
                             max_sequence_length=32, **kwargs)


def _latents(engine, request):
    return engine.generate(request, pipeline_options={"output_type": "latent"}).images[0]


# ------------------------------------------------------------------------------------------------- options
def test_every_option_is_off_by_default(tiny_models):
    assert Engine("tiny").speed == SpeedOptions() and SpeedOptions().off
    assert GenerationRequest("x").draft is False
    assert SpeedOptions.mode(None) == SPEED_MODES["off"]
    assert SpeedOptions.mode("full").compile and not SpeedOptions.mode("full").fp8
    assert SpeedOptions.mode("fast").fp8 and SpeedOptions.mode("fast").name == "fast"
    assert apply_speed(object(), SpeedOptions()) == []  # nothing touched


def test_unknown_mode_and_backend_are_one_line_errors():
    with pytest.raises(SpeedOptionError, match=r"speed mode 'turbo': use one of off, full, fast"):
        SpeedOptions.mode("turbo")
    with pytest.raises(SpeedOptionError, match=r"attention backend 'flash9' is unknown: use one of auto, "):
        check_attention_backend("flash9")
    assert check_attention_backend("NATIVE") == "native"


def test_fallbacks_say_why_in_one_line(tiny_models, one_thread):
    engine = Engine("tiny", preset="full", speed=SpeedOptions(fp8=True, attention_backend="auto"))
    engine.load()
    if torch.cuda.is_available():
        pytest.skip("the fallback lines are the CPU's")
    assert "fp8: off (needs a CUDA GPU of compute capability 8.9 or newer; the device is cpu)" in engine.steps
    assert "attention: PyTorch's default attention (no CUDA: the device is cpu)" in engine.steps
    engine = Engine("tiny", preset="full", speed=SpeedOptions(attention_backend="_flash_3"))
    engine.load()
    line = engine.steps[-1]
    assert line.startswith("attention: PyTorch's default (backend _flash_3 unavailable: ") and "\n" not in line


# ------------------------------------------------------------------------------------------------- fused QKV
# Fused projections run one matrix product over the concatenated weights where eager runs three: the same sums,
# but the CPU's GEMM may block them differently by width, so float32 rounding (about 1e-7 relative) is allowed.
FUSED_ATOL = 1e-5


def _close(a, b):
    return torch.allclose(a, b, rtol=0, atol=FUSED_ATOL)


def test_fused_qkv_matches_eager(tiny_models, one_thread):
    two = [_character((200, 30, 30), "a", 0.9, (0, 0, 0.5, 1)), _character((20, 30, 230), "b", 0.6, (0.5, 0, 1, 1))]
    eager = Engine("tiny", preset="full")
    fused = Engine("tiny", preset="full", speed=SpeedOptions(fused_qkv=True))
    for request in (_request([_character((200, 30, 30))]), _request(two, "[a] and [b]"), _request([], "a park")):
        assert _close(_latents(fused, request), _latents(eager, request))
    assert "fused QKV projections (to_qkv, to_added_qkv)" in fused.steps
    assert all(m.fused_projections for m in fused.pipe.transformer.modules() if hasattr(m, "fused_projections"))


# ------------------------------------------------------------------------------------------------- compile
@pytest.mark.slow
def test_compiled_matches_eager_without_recompiles(tiny_models, one_thread, monkeypatch):
    from torch._dynamo.utils import counters

    import core.loading.speed as speed

    # only the studio's size presets compile (issue 21); this test's small side joins them (the cap has its own test)
    monkeypatch.setattr(speed, "COMPILE_SIZES", speed.COMPILE_SIZES | {(SIDE, SIDE)})
    torch._dynamo.reset()
    counters.clear()
    eager = Engine("tiny", preset="full")
    compiled = Engine("tiny", preset="full", speed="full")
    messages = []

    def generate_both(request):
        out = compiled.generate(request, report=lambda f, m: messages.append(m),
                                pipeline_options={"output_type": "latent"}).images[0]
        ref = _latents(eager, request)
        assert (out - ref).abs().max().item() < 1e-5
        return counters["stats"]["unique_graphs"]

    one = generate_both(_request([_character((200, 30, 30))]))
    assert one == 2  # one graph for the double-stream blocks, one for the single-stream ones
    assert any(m.startswith("Compiling the transformer for 64x64") for m in messages)
    # a new prompt, seed, character image and scale: no recompile
    assert generate_both(_request([_character((20, 230, 30), scale=0.5)], "[a] on a bike", seed=7)) == one
    assert sum(m.startswith("Compiling") for m in messages) == 1

    masked = [_character((200, 30, 30), "a", 0.8, (0, 0, 0.5, 1)), _character((20, 30, 230), "b", 0.6, (0.5, 0, 1, 1))]
    two = generate_both(_request(masked, "[a] and [b]"))
    # two masked characters compile once more: the double- and single-stream blocks again, plus the graph breaks of
    # per-region character attention (each character attends from the tokens of its own region, issue 26)
    assert one + 2 <= two <= one + 4
    other = [_character((90, 90, 9), "a", 1.1, (0, 0, 1, 0.5)), _character((9, 90, 90), "b", 0.3, (0, 0.5, 1, 1))]
    assert generate_both(_request(other, "[b] then [a] in town", seed=3)) == two


# ------------------------------------------------------------------------------------------------- draft
class _TailCounter:
    """Counts the transformer work past the first block: calls of the last single-stream block's MLP."""

    def __init__(self, transformer):
        self.calls = 0
        transformer.single_transformer_blocks[-1].proj_mlp.register_forward_hook(self._count)

    def _count(self, *args):
        self.calls += 1


def test_draft_step_cache_skips_the_expected_blocks_and_is_off_unless_asked(tiny_models, one_thread):
    # a threshold no change reaches: every step after the first reuses the cached tail (the exact expected count)
    engine = Engine("tiny", preset="full", speed=SpeedOptions(draft_threshold=1e9))
    tail = _TailCounter(engine.pipe.transformer)
    steps = 4
    plain = _latents(engine, _request([_character((200, 30, 30))], steps=steps))
    assert tail.calls == steps  # no draft asked: every step runs every block

    tail.calls = 0
    drafted = _latents(engine, _request([_character((200, 30, 30))], steps=steps, draft=True))
    assert tail.calls == 1 and not torch.equal(drafted, plain)

    tail.calls = 0  # with true CFG the negative prompt's calls keep their own cache
    _latents(engine, _request([_character((200, 30, 30))], steps=steps, draft=True, negative_prompt="blurry",
                              true_cfg_scale=2.0))
    assert tail.calls == 2

    tail.calls = 0  # draft off again: the cache hooks are gone and the image is the exact one
    assert torch.equal(_latents(engine, _request([_character((200, 30, 30))], steps=steps)), plain)
    assert tail.calls == steps and step_cache_threshold(engine.pipe.transformer) is None


def test_draft_at_a_zero_threshold_is_the_full_computation(tiny_models, one_thread):
    engine = Engine("tiny", preset="full", speed=SpeedOptions(draft_threshold=0.0))
    request = _request([_character((200, 30, 30))], steps=3)
    plain = _latents(engine, request)
    assert set_step_cache(engine.pipe, True, 0.0) == "draft: First Block Cache at threshold 0"
    assert torch.equal(_latents(engine, _request([_character((200, 30, 30))], steps=3, draft=True)), plain)


def test_draft_travels_in_the_record():
    request = _request([], "a park", draft=True)
    record = request.to_record(0)
    assert record.models["draft"] == "first-block-cache"
    assert GenerationRequest.from_record(record).draft is True
    assert "draft" not in _request([], "a park").to_record(0).models
    assert GenerationRequest.from_record(_request([], "a park").to_record(0)).draft is False


@pytest.mark.slow
def test_fused_qkv_steps_aside_for_style_loras(tiny_models, tmp_path, one_thread):
    pytest.importorskip("peft", reason="style LoRAs need peft")
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from core.loading.loras import StyleLora

    transformer = FluxTransformer2DModel.from_pretrained(tiny_models / "flux" / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v"]))
    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name="style.safetensors")
    lora = [StyleLora(str(tmp_path / "style.safetensors"), 1.0)]
    eager = Engine("tiny", preset="full")
    fused = Engine("tiny", preset="full", speed=SpeedOptions(fused_qkv=True))
    with_lora = _request([_character((200, 30, 30))], loras=lora)
    plain = _request([_character((200, 30, 30))])
    assert _close(_latents(fused, with_lora), _latents(eager, with_lora))  # the LoRA acts on the fused engine
    assert _close(_latents(fused, plain), _latents(eager, plain))
    assert not _close(_latents(eager, with_lora), _latents(eager, plain))  # and the LoRA changes the latents
    assert all(m.fused_projections for m in fused.pipe.transformer.modules() if hasattr(m, "to_qkv"))


def test_command_line_flags():
    import argparse

    from app.arguments import speed_options
    from app.generate import add_arguments, build_request

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--prompt", "a park", "--out", "x.png"])
    assert speed_options(args) == SpeedOptions() and build_request(args).draft is False
    args = parser.parse_args(["--prompt", "a park", "--out", "x.png", "--speed", "full", "--fp8", "--draft",
                              "--attention", "_native_cudnn"])
    assert speed_options(args) == SpeedOptions(compile=True, attention_backend="_native_cudnn", fused_qkv=True,
                                               fp8=True)
    assert build_request(args).draft is True
    assert speed_options(parser.parse_args(["--prompt", "p", "--out", "x", "--compile"])) == SpeedOptions(compile=True)
    with pytest.raises(SpeedOptionError, match="attention backend 'fa9' is unknown"):
        speed_options(parser.parse_args(["--prompt", "p", "--out", "x", "--attention", "fa9"]))


@pytest.mark.slow
def test_a_draft_on_a_compiled_engine_runs_its_blocks_eagerly(tiny_models, one_thread):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    options = SpeedOptions(compile=True, draft_threshold=1e9)
    compiled = Engine("tiny", preset="full", speed=options)
    eager = Engine("tiny", preset="full", speed=SpeedOptions(draft_threshold=1e9))
    request = _request([_character((200, 30, 30))], steps=3)
    draft = _request([_character((200, 30, 30))], steps=3, draft=True)
    plain = _latents(compiled, request)
    graphs = counters["stats"]["unique_graphs"]
    eager_draft = _latents(eager, draft)  # the same cache on an engine that never compiled
    assert torch.equal(_latents(compiled, draft), eager_draft)  # the compiled engine's draft ran eagerly
    assert torch.equal(_latents(compiled, request), plain)  # compiled again, the same latents
    assert counters["stats"]["unique_graphs"] == graphs  # and nothing compiled for or after the draft


def test_loras_on_fp8_fused_projections_are_refused_in_one_line(tiny_models, monkeypatch, one_thread):
    from core.loading import speed

    engine = Engine("tiny", preset="full", speed=SpeedOptions(fused_qkv=True))
    engine.load()
    monkeypatch.setattr(speed, "_is_quantized", lambda module: True)  # as after fp8 (CUDA only)
    with pytest.raises(SpeedOptionError, match="style LoRAs change to_q, to_k and to_v, which speed mode fast has "
                                               "fused and quantized to fp8: use speed full or off with LoRAs"):
        speed.set_fused_for_loras(engine.pipe, engine.speed, has_loras=True)
    assert speed.set_fused_for_loras(engine.pipe, engine.speed, has_loras=False) is None


def test_generate_prints_the_speed_lines_and_records_the_draft(tiny_models, tmp_path, capsys, one_thread):
    from app.cli import main
    from core.request import request_from_png

    out = tmp_path / "draft.png"
    code = main(["generate", "--prompt", "a park", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
                 "--models", "tiny", "--preset", "full", "--fp8", "--draft", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "speed mode custom" in printed
    if not torch.cuda.is_available():
        assert "speed: fp8: off (needs a CUDA GPU of compute capability 8.9 or newer; the device is cpu)" in printed
    assert request_from_png(out).draft is True

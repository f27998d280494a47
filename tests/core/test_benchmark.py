"""The bench and plan commands on tiny models (CPU), the random-model builder and the markdown report."""

import argparse
import json

import pytest
import torch

from app.bench_commands import add_bench_arguments, add_plan_arguments, bench_main, build_parser, plan_main
from benchmarks import bench as benchmark
from benchmarks import random_models
from benchmarks.random_models import build_random_models
from benchmarks.released import ReleasedStylePipeline, released_style
from benchmarks.report import format_markdown, read_jsonl
from benchmarks.gpu_check import DRY_RUN_CONFIGS as SMALL_CONFIGS  # small stand-ins for the full-size configs
from core.errors import UsageError


def _bench_args(*argv):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_on_tiny_models_prints_the_figures(tiny_models, tmp_path, capsys, one_thread):
    out = tmp_path / "bench.jsonl"
    args = _bench_args("--models", "tiny", "--width", "32", "--height", "32", "--steps", "2", "--preset", "full",
                       "--no-warmup", "--json", str(out))
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    for label in ("load time", "per step", "per image", "peak GPU", "peak RAM", "at 28 steps"):
        assert label in printed
    record = json.loads(out.read_text())
    assert record["run"] == "full" and record["steps"] == 2 and record["s_per_step"] > 0
    assert record["applied"] == ["all models on cpu"]  # what the engine's load applied
    assert record["load_s"] > 0 and record["ram_peak_gib"] > 0
    assert record["estimate_gpu_gib"] is None  # tiny models: the full-size planner figures would mislead
    assert record["s_per_image_at_28"] >= record["s_per_image"]


@pytest.mark.slow
def test_as_released_and_quanto_fallback_runs_on_tiny_models(tiny_models, tmp_path, one_thread):
    out = tmp_path / "bench.jsonl"
    for extra in (["--as-released"], ["--preset", "low"]):
        bench_main(_bench_args("--models", "tiny", "--width", "32", "--height", "32", "--steps", "2",
                               "--json", str(out), *extra))
    released, low = read_jsonl(out)
    assert released["run"] == "as-released" and released["offload"] == "none"
    if not torch.cuda.is_available():
        assert low["transformer_quantization"] == "quanto-int8"
        assert any("quanto-int8 instead" in n for n in low["notes"])
    table = format_markdown([low, released])
    assert table.index("| as-released") < table.index("| low")


def test_released_style_pipeline_recomputes_the_projector_every_step(tiny_models, one_thread):
    """What ``bench --as-released`` measures: the engine's loaded pipeline, run the released code's way."""
    from core.engine import Engine

    pipe = released_style(Engine("tiny", dtype="float32").pipe)
    assert isinstance(pipe, ReleasedStylePipeline)
    calls = []
    original = pipe.image_proj.context
    pipe.image_proj.context = lambda *a, **k: calls.append(1) or original(*a, **k)
    character = benchmark.bench_character(64)
    for _ in range(2):
        pipe("a [hero]", characters=[character], num_inference_steps=3, width=32, height=32, output_type="latent")
    assert len(calls) == 6  # 3 steps x 2 calls: nothing cached, projector context every step
    assert pipe.character_encoder.calls == 2  # the image is encoded once per call


def test_bench_failures_are_recorded_and_reported(tmp_path):
    out = tmp_path / "bench.jsonl"
    args = _bench_args("--random-weights", "--models", "tiny", "--json", str(out))
    with pytest.raises(ValueError, match="random-weights"):
        bench_main(args)
    (record,) = read_jsonl(out)
    assert record["run"] == "auto" and "UsageError" in record["error"]
    table = format_markdown([record])
    assert "failed: UsageError" in table


def test_markdown_checks_the_goals():
    common = dict(device="GPU", torch="2", models="random full-size", dtype="bfloat16", width=1024, height=1024,
                  steps=8, load_s=1.0, s_per_image=2.0, s_per_image_at_28=6.0, gpu_peak_load_gib=1.0,
                  ram_peak_gib=1.0, estimate_gpu_gib=1.0, estimate_ram_gib=1.0, notes=[], offload="none",
                  transformer_quantization=None)
    runs = [dict(common, run="full", s_per_step=0.20, gpu_peak_gib=40.0),
            dict(common, run="as-released", s_per_step=0.22, gpu_peak_gib=41.0),
            dict(common, run="low", s_per_step=0.3, gpu_peak_gib=12.0),
            dict(common, run="minimal", s_per_step=0.5, gpu_peak_gib=11.0)]
    table = format_markdown(runs)
    assert "extrapolated" in table
    assert "full / as released, s/step: 0.909 (goal <= 0.95: met)" in table
    assert "low GPU peak 12.0 GiB (goal <= 16: met)" in table
    assert "minimal GPU peak 11.0 GiB (goal <= 10: missed)" in table


@pytest.mark.slow
def test_random_models_build_from_configs_and_load_with_the_studio(tmp_path, one_thread):
    from safetensors import safe_open

    from core.models.pipeline import InstantCharacterPipeline
    from core.models.projector import ProjectorConfig
    from core.loading.sources import ModelSources

    small = ProjectorConfig(inner_dim=128, num_layers=1, resampler_dim=64, resampler_depth=1, num_queries=4,
                            output_dim=32)  # inner_dim: the two encoders' widths; heads of 64
    folder = build_random_models(tmp_path / "models", configs=SMALL_CONFIGS, projector_config=small)
    with safe_open(str(folder / "flux" / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor("proj_out.weight").dtype == torch.bfloat16  # made and written in bf16
    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.from_models_dir(folder), dtype=torch.float32,
                                                    progress=False)
    assert pipe.text_encoder_2.config.d_model == 32 and len(pipe.character_layers) == 2
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a [hero]", characters=[benchmark.bench_character(64)], num_inference_steps=1, width=32,
               height=32, output_type="latent")
    assert out.images.shape[0] == 1


def test_random_models_are_built_once(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(random_models, "build_random_models", lambda folder: built.append(folder))
    first = random_models.ensure_random_models(tmp_path / "r", min_free_gib=0)
    assert random_models.ensure_random_models(tmp_path / "r", min_free_gib=0) == first
    assert len(built) == 1
    with pytest.raises(UsageError, match="42 GB"):
        random_models.ensure_random_models(tmp_path / "other", min_free_gib=1e9)


def test_plan_prints_every_preset_and_the_choice(capsys):
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    assert plan_main(parser.parse_args(["--vram", "24", "--ram", "64"])) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("full", "balanced", "low", "minimal"))
    assert "auto -> fp8:" in printed  # issue 12: a 24 GB card gets 8-bit weights, not nf4
    with pytest.raises(ValueError, match="--vram"):
        plan_main(parser.parse_args(["--vram", "0"]))


def test_module_entry_point_prints_one_line_errors(tmp_path, capsys):
    assert build_parser().parse_args(["plan"]).handler is plan_main
    from app.bench_commands import main

    assert main(["table", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: no bench results")


# ------------------------------------------------------------------------------------------ speed modes (issue 13)
def _small_projector():
    from core.models.projector import ProjectorConfig

    return ProjectorConfig(inner_dim=128, num_layers=1, resampler_dim=64, resampler_depth=1, num_queries=4,
                           output_dim=32)


def test_bench_in_memory_models_with_a_draft_saves_latents(tmp_path, one_thread):
    from safetensors.torch import load_file

    out = tmp_path / "draft.safetensors"
    record = benchmark.run_bench("full", 32, 32, 2, in_memory=True, configs=SMALL_CONFIGS,
                                 projector_config=_small_projector(), device="cpu", dtype=torch.float32,
                                 run="draft", draft=True, latents_path=out, verbose=False)
    assert record["run"] == "draft" and record["draft"] is True and record["speed"] == "off"
    assert record["models"] == "random small in memory" and record["applied"] == ["models built in memory on cpu"]
    assert record["compile_s"] is not None and record["compile_s"] >= 0
    assert load_file(str(out))["latents"].shape == (256, 4)  # packed: 16x16 tokens (a 1x VAE) of 4 channels


def test_bench_speed_flags_on_tiny_models(tiny_models, tmp_path, one_thread):
    out = tmp_path / "bench.jsonl"
    args = _bench_args("--models", "tiny", "--width", "32", "--height", "32", "--steps", "2", "--preset", "full",
                       "--no-warmup", "--json", str(out), "--fp8", "--draft")
    assert bench_main(args) == 0
    record = json.loads(out.read_text())
    assert record["run"] == "full+custom+draft" and record["draft"] is True
    if not torch.cuda.is_available():
        assert record["applied"][-1].startswith("fp8: off (needs a CUDA GPU")
    with pytest.raises(UsageError, match="--in-memory builds its own random models"):
        bench_main(_bench_args("--in-memory", "--models", "tiny"))

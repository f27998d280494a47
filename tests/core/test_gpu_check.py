"""The GPU check (issue 28): its plan fits the budget, its wheels fit what travels, fallbacks are labelled by what
ran, the README's tables are the renderer's, and (slow) the whole script's CPU rehearsal."""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_check, gpu_wheels, render_results

ROOT = Path(__file__).resolve().parents[2]


def test_the_planned_part_fits_the_budget_in_the_order_of_value(capsys):
    inside, total = gpu_check.planned()
    assert total <= gpu_check.BUDGET_S == 540
    assert [r.group for r in gpu_check.PLAN] == sorted(r.group for r in gpu_check.PLAN)
    assert [r.name for r in inside[:5]] == [f"speed/{m}" for m in gpu_check.SPEED_MODES]
    assert {"preset/streamed@8", "preset/fp8-streamed@16", "preset/fp8@24"} <= {r.name for r in inside}
    kinds = {r.kind for r in gpu_check.PLAN}
    assert kinds == {"speed", "models", "preset", "gguf", "train"}
    # every run that loads the random models' files comes after the run that writes them, and says so
    order = [r.name for r in gpu_check.PLAN]
    for run in gpu_check.PLAN:
        if run.kind in ("preset", "gguf") or run.name == gpu_check.GGUF:
            assert run.needs in (gpu_check.MODELS, gpu_check.GGUF) and order.index(run.name) > order.index(run.needs)
    assert gpu_check.main(["--plan"]) == 0
    assert f"planned budget: {total} s" in capsys.readouterr().out


def test_the_wheel_set_fits_with_the_tree_and_the_stand_in_is_a_wheel(tmp_path):
    ok, lines = gpu_wheels.check()
    assert ok, lines
    assert gpu_wheels.wheel_set_bytes() + gpu_wheels.tree_bytes() <= 64 * 2**20
    assert {req.split("==")[0] for req, *_ in gpu_wheels.WHEELS} == {
        "diffusers", "torchao", "optimum-quanto", "gguf", "platformdirs", "bitsandbytes"}
    wheel = gpu_wheels.write_stand_in(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{gpu_wheels.STAND_IN}/__init__.py" in names and any(n.endswith("dist-info/WHEEL") for n in names)
    ok, lines = gpu_wheels.check(tmp_path)  # a folder without the real wheels is not the set
    assert not ok and "MISSING" in lines[0]


def test_q8_0_in_torch_makes_gguf_s_bytes():
    import gguf

    from core.loading.single_file import quantize_q8_0

    generator = torch.Generator().manual_seed(0)
    for tensor in (torch.randn(64, 96, generator=generator), torch.zeros(3, 64),
                   torch.randn(5, 32, generator=generator) * 1e-3,
                   torch.randn(4, 64, generator=generator).to(torch.bfloat16)):
        expected = gguf.quants.quantize(tensor.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
        assert np.array_equal(quantize_q8_0(tensor), expected)


def test_a_speed_mode_that_fell_back_is_named_by_what_ran_and_not_judged(tmp_path):
    from safetensors.torch import save_file

    applied_fallback = ["fused QKV projections (to_qkv, to_added_qkv)",
                        "fp8: off (torchao is not installed (pip install torchao))",
                        "compiled the repeated transformer blocks (fullgraph; once per process and image size, on "
                        "first use)"]
    fp8 = {"run": "speed/fp8", "applied": applied_fallback, "s_per_image_at_28": 3.0}
    fp8["ran_as"] = gpu_check.speed_ran_as("fp8", fp8)
    assert fp8["ran_as"] == "compiled"
    applied_ok = applied_fallback[:1] + ["fp8: torchao float8 dynamic matmuls (per-row scales) in the transformer "
                                         "blocks"] + applied_fallback[2:]
    assert gpu_check.speed_ran_as("fp8", {"applied": applied_ok}) == "compiled+fp8" == gpu_check.intended("fp8")
    assert gpu_check.speed_ran_as("eager", {"applied": ["models built in memory on cuda"]}) == "eager"

    save_file({"latents": torch.ones(1, 4, 4)}, str(tmp_path / "eager.safetensors"))
    save_file({"latents": torch.ones(1, 4, 4) * 1.01}, str(tmp_path / "fp8.safetensors"))
    released = {"run": "speed/as-released", "s_per_image_at_28": 6.0}
    gpu_check.add_speed_figures(fp8, [released], tmp_path)
    assert fp8["rel_to_as_released"] == 0.5 and fp8["latents_rel_diff_to_eager"] == 0.01
    assert fp8["goal"] == "not judged: ran as compiled"
    good = {"run": "speed/compiled", "ran_as": "compiled", "s_per_image_at_28": 3.6, "applied": []}
    gpu_check.add_speed_figures(good, [released], tmp_path)
    assert good["goal"] == "<= 0.65 (met)" and good["latents_rel_diff_to_eager"] is None  # no latents saved
    assert gpu_check.add_speed_figures(released, [], tmp_path)["rel_to_as_released"] == 1.0


def test_a_preset_measured_with_another_quantization_says_so():
    assert gpu_check.preset_ran_as("low", {"transformer_quantization": "quanto-int8"}) == "low (quanto-int8)"
    assert gpu_check.preset_ran_as("low", {"transformer_quantization": "bnb-nf4"}) == "low"
    assert gpu_check.preset_ran_as("fp8-streamed", {"transformer_quantization": "fp8-layerwise",
                                                    "base": "x.gguf"}) == "fp8-streamed + GGUF Q8_0"


def test_the_table_shows_results_failures_and_skips():
    records = [{"run": "speed/eager", "ran_as": "eager", "s_per_step": 0.19, "s_per_image_at_28": 5.5,
                "gpu_peak_gib": 42.0, "gpu_card_peak_gib": 43.1, "wall_s": 30.2, "latents_rel_diff_to_eager": 0.0},
               {"run": "speed/fp8", "error": "timed out after 75 s", "wall_s": 75.0},
               {"run": "train/24gb", "skipped": "20 s of the budget left, the run needs 55 s"}]
    table = gpu_check.format_table(records)
    assert "| speed/eager | eager | 0.1900 | 5.50 | - |  | 42.0 / 43.1 |" in table
    assert "failed: timed out after 75 s" in table and "skipped: 20 s of the budget left" in table


def test_the_renderer_shows_gpu_rows_and_not_measured(tmp_path):
    common = {"check": "gpu_check", "device": "NVIDIA H100", "code": "abc1234"}
    lines = [dict(common, run="speed/eager", ran_as="eager", s_per_step=0.19, s_per_image_at_28=5.5,
                  gpu_peak_gib=42.0, gpu_card_peak_gib=43.1, latents_rel_diff_to_eager=0.0, compile_s=0.2),
             dict(common, run="preset/fp8@24", ran_as="fp8", s_per_step=0.3, gpu_peak_gib=17.0,
                  gpu_card_peak_gib=18.2, estimate_gpu_gib=18.0, ram_peak_gib=30.0, ram_anon_peak_gib=20.0,
                  estimate_ram_need_gib=28.0, estimate_ram_peak_gib=36.6),
             dict(common, run="speed/compiled", dry_run=True, ran_as="eager", s_per_step=9.0),  # never shown
             dict(common, run="train/24gb", skipped="no time")]
    (tmp_path / "h100-20261207.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rendered = render_results.tables(tmp_path)
    assert "| `eager` | eager | 0.1900 | 5.50 | - |  | 0.2 | 42.0 / 43.1 GiB | 0 | NVIDIA H100, code abc1234" \
        in rendered["speed"]
    assert "| `compiled` | not measured |" in rendered["speed"]
    assert "| `fp8@24` | fp8 | 0.300 | 17.0 / 18.2 GiB | 18.0 GiB | 30.0 / 20.0 GiB | 28.0 / 36.6 GiB |" \
        in rendered["presets"]
    assert "| `24gb` | not measured |" in rendered["train"]
    assert "| as released (projector every step, no caching) | not measured |" in rendered["first-round"]
    with pytest.raises(SystemExit, match="no <!-- results:speed -->"):
        render_results.render("no markers", rendered)


def test_the_readme_tables_are_the_renderer_s():
    text = (ROOT / "README.md").read_text()
    assert render_results.render(text, render_results.tables()) == text, \
        "README.md is out of date: python -m benchmarks.render_results"
    assert "| run (code of commit 18a4912) |" in text  # the first round's figures are labelled with their code
    assert f"The planned part is {gpu_check.planned()[1]} s" in text


@pytest.mark.slow
def test_the_dry_run_rehearses_the_whole_check(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, DRY_RUN="1", OUT=str(out), PYTHON=os.environ.get("PYTHON", "python"),
               TMPDIR=str(tmp_path))
    start = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = done.stdout
    inside, total = gpu_check.planned()
    assert f"planned budget of the GPU run: {total} s of 540 s" in printed and total <= 540
    assert "of 64 MiB: fits" in printed and "gpu_check_stand_in 1.0" in printed
    records = [json.loads(line) for line in (out / "gpu-check.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records] == [r.name for r in gpu_check.PLAN]  # one line per run, in order
    for record in records:
        assert record["dry_run"] is True and ("skipped" in record or "wall_s" in record), record
    by_run = {r["run"]: r for r in records}
    released, eager = by_run["speed/as-released"], by_run["speed/eager"]
    assert "error" not in released and "error" not in eager, (released, eager)
    assert eager["latents_rel_diff_to_eager"] == 0
    assert eager["as_released_latents_rel_diff_to_eager"] < 1e-5  # the released way computes the same function
    assert released["rel_to_as_released"] == 1.0 and eager["tokens_ahead_s"] > 0
    # on a busy machine later runs may time out or be skipped for the budget (the in-process test below runs
    # them), but none may crash
    for record in records:
        assert record.get("error", "timed out").startswith("timed out"), record
    assert "| run | ran as |" in printed and (out / "gpu-check.md").is_file()
    assert seconds < 300, f"the rehearsal took {seconds:.0f} s"  # its budget, 270 s, counts from the shell's start


@pytest.mark.slow
def test_the_children_after_the_speed_runs_work_on_small_models(tmp_path):
    """In this process (no import per child): the rehearsal's budget may skip them on a busy machine."""
    import argparse

    args = argparse.Namespace(dry_run=True, work=str(tmp_path), size=32, speed_steps=2, preset_steps=1)
    threads = torch.get_num_threads()
    try:
        records = {name: gpu_check.run_child(name, args) for name in (
            gpu_check.MODELS, "preset/fp8-streamed@16", "preset/low@12", gpu_check.GGUF, "gguf/fp8-streamed@16",
            "train/24gb")}
    finally:
        torch.set_num_threads(threads)
    for name, record in records.items():
        assert "error" not in record, record
    assert records["preset/low@12"]["ran_as"] == "low (quanto-int8)"  # no bitsandbytes on the CPU: said so
    gguf = records["gguf/fp8-streamed@16"]
    assert gguf["ran_as"] == "fp8-streamed + GGUF Q8_0" and gguf["s_per_step"] > 0
    assert any("gguf" in line for line in gguf["applied"]), gguf["applied"]
    train = records["train/24gb"]
    assert train["ran_as"] == "24gb (bnb-nf4 -> quanto-int8, AdamW8bit -> torch AdamW)" and train["loss_finite"]

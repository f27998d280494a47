"""``eval`` through the command line on tiny models and the shipped example benchmark."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from app.cli import main
from tests.core.metric_models import tiny_metric_models  # noqa: F401 (fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "benchmarks" / "example"


@pytest.mark.slow
def test_eval_writes_reports_resumes_and_compares(tiny_models, tiny_metric_models, tmp_path, capsys):  # noqa: F811
    common = ["--models", str(tiny_models), "--clip-model", str(tiny_metric_models["clip"]),
              "--dino-model", str(tiny_metric_models["dino"]), "--steps", "1", "--width", "32", "--height", "32"]
    run_a = tmp_path / "a"
    assert main(["eval", str(EXAMPLE), "--out", str(run_a)] + common) == 0
    out = capsys.readouterr().out
    assert "clip_i" in out.lower() or "CLIP-I" in out
    written = {p.suffix for p in run_a.rglob("*") if p.is_file()}
    assert {".csv", ".json", ".html"} <= written
    # a resumed run re-renders nothing
    assert main(["eval", str(EXAMPLE), "--out", str(run_a)] + common) == 0
    assert "rendered 0" in capsys.readouterr().out
    run_b = tmp_path / "b"
    assert main(["eval", str(EXAMPLE), "--out", str(run_b), "--scale", "0.5"] + common) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(run_a), str(run_b)]) == 0
    compare = capsys.readouterr().out
    assert "clip" in compare.lower() and "dino" in compare.lower()


def test_eval_needs_out(capsys):
    assert main(["eval", str(EXAMPLE)]) == 2
    assert "--out" in capsys.readouterr().err


def test_eval_preset_is_applied_by_the_engine(tiny_models, tiny_metric_models, tmp_path, monkeypatch):  # noqa: F811
    """``eval --preset low`` loads what ``low`` means here: on a CPU, where bitsandbytes cannot run, its quanto
    alternative (the transformer and T5 in quanto int8, the adapter int8)."""
    import torch
    from optimum.quanto import QModuleMixin

    from app import eval_commands
    from core.io.metadata import read_record

    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    (bench / "cases.jsonl").write_text((EXAMPLE / "cases.jsonl").read_text().splitlines()[1] + "\n")  # ruby-1
    made = []
    monkeypatch.setattr(eval_commands, "engine_for",
                        lambda args, make=eval_commands.engine_for: made.append(make(args)) or made[-1])
    parser = argparse.ArgumentParser()
    eval_commands.add_arguments(parser)
    args = parser.parse_args([str(bench), "--out", str(tmp_path / "run"), "--models", str(tiny_models),
                              "--preset", "low", "--clip-model", str(tiny_metric_models["clip"]),
                              "--dino-model", str(tiny_metric_models["dino"]), "--no-segment", "--steps", "1",
                              "--width", "32", "--height", "32"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert eval_commands.run(args) == 0
    finally:
        torch.set_num_threads(previous)
    (engine,) = made
    assert engine.preset.name == "low"
    if not torch.cuda.is_available():
        assert engine.preset.transformer_quantization == engine.preset.text_encoder_quantization == "quanto-int8"
        assert "transformer quantized to quanto-int8" in engine.steps
        assert "text_encoder_2 quantized to quanto-int8" in engine.steps
        assert any(isinstance(m, QModuleMixin) for m in engine.pipe.transformer.modules())
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert "preset=low" in scores["label"] and scores["cases"][0]["status"] == "done"
    record = read_record(tmp_path / "run" / scores["cases"][0]["image"])
    assert (record.preset, record.models["spec"]) == ("low", str(tiny_models))

"""``eval`` through the command line on tiny models and the shipped example benchmark."""

from __future__ import annotations

import json
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

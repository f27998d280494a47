"""The prepared GPU benchmark of the presets: its dry run (no GPU here) plans each stage and lists the commands."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_dry_run_lists_every_stage_of_the_presets(capsys, tmp_path):
    from benchmarks.train_gpu import main

    out = tmp_path / "results.jsonl"
    assert main(["--presets", "24gb", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("would run:") == 3 and "--child 24gb 2" in text
    assert "unpaired-512" in text and "joint-1024" in text and not out.exists()

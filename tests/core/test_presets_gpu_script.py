"""benchmarks/presets_gpu.py, the prepared GPU measurement: its arguments, its table, and (slow) a CPU dry run
of one run in its own process writing a JSON line with the issue's fields."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import presets_gpu


def test_runs_are_preset_at_card():
    assert presets_gpu.parse_run("fp8@24") == ("fp8", 24.0)
    assert presets_gpu.parse_run("full") == ("full", None)
    for bad, message in (("huge@24", "preset 'huge' unknown"), ("fp8@big", "must be GiB"), ("fp8@-1", "positive")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            presets_gpu.parse_run(bad)
    args = presets_gpu.build_parser().parse_args(["--runs", "streamed@8", "full@48", "--steps", "4"])
    assert args.runs == [("streamed", 8.0), ("full", 48.0)] and args.steps == 4 and not args.dry_run
    # the default runs cover every preset and every card of the goal table
    runs = [presets_gpu.parse_run(r) for r in presets_gpu.RUNS]
    from core.loading.memory import PRESET_ORDER

    assert {name for name, _ in runs} == set(PRESET_ORDER)
    assert {8.0, 12.0, 16.0, 24.0, 48.0} <= {card for _, card in runs}


def test_table_lists_every_run_and_errors():
    records = [{"run": "fp8@24", "s_per_step": 0.61, "gpu_peak_gib": 15.2, "estimate_gpu_gib": 14.95,
                "ram_peak_gib": 30.0, "ram_run_gib": 26.0, "estimate_ram_gib": 25.0, "error": None},
               {"run": "full@48", "error": "timed out after 420 s"}]
    table = presets_gpu.format_table(records)
    assert "| fp8@24 | 0.610 | 15.20 | 14.95 | 30.00 | 26.00 | 25.00 |  |" in table
    assert "| full@48 |" in table and "timed out" in table


@pytest.mark.slow
def test_dry_run_measures_one_preset_in_a_child_process(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    assert presets_gpu.main(["--dry-run", "--runs", "fp8@24", "--out", str(out), "--timeout", "300"]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert {"run", "preset", "s_per_step", "gpu_peak_gib", "ram_peak_gib", "card_gib"} <= set(record)
    assert record["run"] == "fp8@24" and record["error"] is None, record
    assert record["s_per_step"] > 0 and record["ram_peak_gib"] > 0 and record["gpu_peak_gib"] is None  # no GPU
    assert "transformer stored in fp8 (layerwise casting)" in record["applied"]
    assert "| fp8@24 |" in capsys.readouterr().out

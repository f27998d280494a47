"""A/B comparison of two benchmark runs: per-metric mean difference with a paired t-test over shared cases."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from core.evaluation.files import write_atomic
from core.evaluation.report import comparison_html
from core.evaluation.stats import paired_t_test
from core.evaluation.metrics import METRICS
from core.errors import UserError

__all__ = ["RunError", "load_run", "compare_tests", "compare_runs"]


class RunError(UserError, ValueError):
    """A run folder that cannot be compared; the message says why in one line."""


def load_run(run: str | os.PathLike) -> dict:
    """The ``scores.json`` of a run folder (or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "scores.json"
    if not path.is_file():
        raise RunError(f"no scores.json in {run}: run the benchmark there first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise RunError(f"{path} is not a benchmark scores file (no 'cases' list)")
    return data


def compare_tests(run_a: dict, run_b: dict) -> tuple[dict[str, dict], list[str], list[str]]:
    """Paired tests per metric over the cases done in both runs; returns (tests, shared ids, notes)."""
    cases_a = {row["id"]: row for row in run_a["cases"] if row.get("status") == "done"}
    cases_b = {row["id"]: row for row in run_b["cases"] if row.get("status") == "done"}
    shared = [case_id for case_id in cases_a if case_id in cases_b]
    notes = []
    only_a, only_b = len(cases_a) - len(shared), len(cases_b) - len(shared)
    if only_a or only_b:
        notes.append(f"{only_a} case(s) only in A and {only_b} only in B are left out (compared by id)")
    changed = [case_id for case_id in shared
               if (cases_a[case_id].get("prompt"), cases_a[case_id].get("characters"))
               != (cases_b[case_id].get("prompt"), cases_b[case_id].get("characters"))]
    if changed:
        notes.append(f"{len(changed)} shared case(s) have different prompts or characters, e.g. {changed[0]!r}")
    if run_a.get("scorer") != run_b.get("scorer"):
        notes.append("the runs were scored with different models or segmentation: deltas mix both effects")
    metrics = [name for name in METRICS if name in (run_a.get("metrics") or []) and name in (run_b.get("metrics") or [])]
    tests = {name: paired_t_test([cases_a[i].get(name) for i in shared], [cases_b[i].get(name) for i in shared]).as_dict()
             for name in metrics}
    return tests, shared, notes


def _signed(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}"


def _plain(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p_value(value: float | None) -> str:
    return "-" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, html_path: str | os.PathLike | None = None) -> str:
    """Compare run B against run A, case by case; returns a text table (and writes an HTML page if asked).

    Each metric gets: the means of A and B over shared cases, delta = mean(B - A), its 95% paired t interval, the
    paired t statistic and the two-sided p-value. Settings that differ between the runs are listed first.
    """
    data_a, data_b = load_run(run_a), load_run(run_b)
    tests, shared, notes = compare_tests(data_a, data_b)
    lines = [f"A: {run_a}", f"B: {run_b}", f"{len(shared)} paired case(s)"]
    settings_a, settings_b = data_a.get("settings") or {}, data_b.get("settings") or {}
    for key in sorted(set(settings_a) | set(settings_b)):
        if settings_a.get(key) != settings_b.get(key):
            lines.append(f"setting {key}: A={settings_a.get(key)} B={settings_b.get(key)}")
    if data_a.get("label") != data_b.get("label"):
        lines.append(f"label: A={data_a.get('label')} B={data_b.get('label')}")
    lines.extend(f"note: {note}" for note in notes)
    lines.append("")
    lines.append(f"{'metric':<14}{'n':>4}{'A':>9}{'B':>9}{'delta':>10}   {'95% interval':<21}{'t':>8}{'p':>8}")
    for name, test in tests.items():
        interval = f"[{_signed(test['ci95_low'])}, {_signed(test['ci95_high'])}]" if test["ci95_low"] is not None else "-"
        t_value = "-" if test["t"] is None else ("inf" if math.isinf(test["t"]) else f"{test['t']:.2f}")
        lines.append(f"{name:<14}{test['n']:>4}{_plain(test['mean_a']):>9}{_plain(test['mean_b']):>9}"
                     f"{_signed(test['delta']):>10}   {interval:<21}{t_value:>8}{_p_value(test['p']):>8}")
    if not tests:
        lines.append("(no metric scored in both runs)")
    text = "\n".join(lines)
    if html_path is not None:
        description = [("A", str(run_a)), ("B", str(run_b)), ("paired cases", str(len(shared)))]
        description += [(f"setting {key}", f"A={settings_a.get(key)} B={settings_b.get(key)}")
                        for key in sorted(set(settings_a) | set(settings_b)) if settings_a.get(key) != settings_b.get(key)]
        description += [("note", note) for note in notes]
        write_atomic(html_path, comparison_html("Benchmark comparison: B against A", description, tests).encode("utf-8"))
    return text

"""Benchmarks for character consistency and text control: folder format, runner, reports and A/B comparison.

See :mod:`core.evaluation.format` for the benchmark folder, :mod:`core.evaluation.runner` for the run folder and
:mod:`core.evaluation.stats` for the intervals and tests. The metrics themselves live in :mod:`core.evaluation.metrics`.
"""

from core.evaluation.commands import compare_command, eval_command
from core.evaluation.compare import RunError, compare_runs, load_run
from core.evaluation.format import (
    Benchmark,
    BenchmarkCase,
    BenchmarkCharacter,
    BenchmarkFormatError,
    load_benchmark,
    prompt_for_text_metric,
)
from core.evaluation.runner import EvaluationRun, RenderSettings, format_summary, run_benchmark

__all__ = [
    "Benchmark",
    "BenchmarkCase",
    "BenchmarkCharacter",
    "BenchmarkFormatError",
    "EvaluationRun",
    "RenderSettings",
    "RunError",
    "compare_command",
    "compare_runs",
    "eval_command",
    "format_summary",
    "load_benchmark",
    "load_run",
    "prompt_for_text_metric",
    "run_benchmark",
]

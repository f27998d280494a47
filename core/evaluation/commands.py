"""What ``instantcharacter-studio eval`` runs: plain functions of values that return the text to print.

The CLI makes the engine (:class:`core.engine.Engine`) from ``--models``/``--preset``/``--dtype`` (so this module
stays free of model loading policy) and passes it in, with a ``label`` naming those choices (and the text adapter)
so a run folder re-renders when they change.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from core.evaluation.compare import compare_runs
from core.evaluation.runner import RenderSettings, run_benchmark
from core.evaluation.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, CharacterScorer

__all__ = ["eval_command", "compare_command"]


def eval_command(
    bench_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    engine: Any,
    *,
    clip_model: str | os.PathLike | None = DEFAULT_CLIP_MODEL,
    dino_model: str | os.PathLike | None = DEFAULT_DINO_MODEL,
    segmenter: object = "threshold",
    image_reward: bool = False,
    settings: RenderSettings | None = None,
    label: str | None = None,
    text_adapter: str | os.PathLike | None = None,
    resume: bool = True,
    echo: Callable[[str], None] | None = print,
    scorer: CharacterScorer | None = None,
) -> str:
    """``eval BENCH --out DIR``: render (through ``engine``, loaded when a case needs rendering), score and report;
    prints progress through ``echo`` and returns the summary table followed by the paths written. ``scorer``
    overrides the CLIP/DINO/segmenter arguments."""
    if scorer is None:
        scorer = CharacterScorer(clip_model, dino_model, segmenter=segmenter, image_reward=image_reward)

    def progress(done: int, total: int, message: str) -> None:
        if echo is not None:
            echo(f"[{done}/{total}] {message}")

    run = run_benchmark(bench_dir, engine, scorer, out_dir, resume=resume, progress=progress, settings=settings,
                        label=label, text_adapter=text_adapter)
    lines = [run.summary_text, "",
             f"rendered {run.rendered}, reused {run.reused}, failed {run.failed}, scored {run.scored}"]
    lines += [f"{name}: {path}" for name, path in run.files.items()]
    return "\n".join(lines)


def compare_command(run_a: str | os.PathLike, run_b: str | os.PathLike, html: str | os.PathLike | None = None) -> str:
    """``eval --compare A B``: the per-metric paired comparison of run B against run A as text (and an HTML page
    with a plot of the deltas when ``html`` is given; by default ``B/compare.html``)."""
    if html is None and os.path.isdir(run_b):
        html = os.path.join(run_b, "compare.html")
    text = compare_runs(run_a, run_b, html_path=html)
    return text + (f"\nplot: {html}" if html else "")

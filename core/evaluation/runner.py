"""Render every case of a benchmark, score it, and write per-case CSV/JSON, a summary and an HTML report.

Output folder::

    OUT/
      manifest.json    finished cases: render key, seed, image file, scores (rewritten atomically after each case)
      images/<id>.png  one generated image per case
      scores.csv       one row per case: id, status, seed, characters, prompt, image, then each metric
      scores.json      run settings, scorer, summary and per-case rows (with per-character scores)
      summary.txt      the summary table (mean and 95% t interval per metric)
      report.html      self-contained report: summary, bar plot, thumbnails

Resuming: a case is rendered again only when its *render key* changed (prompt, characters and their image files,
masks, seed, render settings, ``label``) or its image is missing; a case is scored again only when the scorer's
models or segmentation changed. Files are written to a temporary name and moved into place with ``os.replace``,
so an interrupted run (even ``kill -9``) never leaves a half-written image taken as done.

Every case is rendered through the engine (:class:`core.engine.Engine`) as one
:class:`core.request.GenerationRequest`; its image carries the engine's PNG record (settings, characters, the models,
dtype and preset), so the studio's Recall makes it again. The engine loads its models only when a case needs
rendering: a finished run resumed loads nothing.

Rendering and scoring are separate phases, so a caller short of GPU memory can render with ``scorer=None``, unload
the engine, then score with ``engine=None``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from core.conditioning.layouts import parse_layout
from core.evaluation.files import write_atomic, write_json
from core.evaluation.format import Benchmark, BenchmarkCase, load_benchmark
from core.evaluation.stats import mean_interval
from core.evaluation.metrics import METRICS, CharacterScorer, ScoreCase

__all__ = [
    "MANIFEST_VERSION",
    "RenderSettings",
    "EvaluationRun",
    "run_benchmark",
    "format_summary",
    "case_regions",
    "case_request",
]

MANIFEST_VERSION = 1
SCORE_CHUNK = 16  # cases scored per batch (and per manifest write) so an interrupted scoring resumes cheaply

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class RenderSettings:
    """How every case is rendered (FLUX.1-dev defaults; the released InstantCharacter scale)."""

    steps: int = 28
    guidance: float = 3.5
    width: int = 1024
    height: int = 1024
    scale: float = 0.9

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluationRun:
    """What :func:`run_benchmark` did and wrote."""

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, dict]
    metrics: tuple[str, ...]
    rendered: int = 0
    reused: int = 0
    failed: int = 0
    scored: int = 0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def summary_text(self) -> str:
        return format_summary(self.summary, self.metrics, failed=self.failed, total=len(self.rows))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _render_key(bench: Benchmark, case: BenchmarkCase, settings: RenderSettings, label: str | None, digests) -> str:
    masks = None
    if case.masks is not None:
        masks = [digests(mask) if isinstance(mask, Path) else mask for mask in case.masks]
    description = {
        "prompt": case.prompt,
        "characters": [[name, digests(bench.characters[name].image_path), bench.characters[name].description]
                       for name in case.characters],
        "masks": masks,
        "seed": case.seed,
        "settings": settings.as_dict(),
        "label": label,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=list).encode()).hexdigest()


def _mask_spec(mask: object) -> object:
    """The case mask as the engine's ``Character(mask=...)`` takes it (mask files opened as images)."""
    if isinstance(mask, Path):
        with Image.open(mask) as image:
            return image.convert("L")
    return mask


def case_regions(case: BenchmarkCase, size: tuple[int, int]) -> list | None:
    """Per character, the region of the generated image to score it in: a normalized box, an ``L`` mask, or
    ``None`` (whole image). Layout names resolve exactly as the engine resolves them (``core.conditioning.layouts``)."""
    if case.masks is None:
        return None
    regions = []
    for mask in case.masks:
        if mask is None:
            regions.append(None)
        elif isinstance(mask, str):
            regions.append(parse_layout(mask))
        elif isinstance(mask, Path):
            regions.append(_mask_spec(mask).resize(size, Image.Resampling.NEAREST))
        else:
            regions.append(tuple(mask))
    return regions


def case_request(bench: Benchmark, case: BenchmarkCase, settings: RenderSettings, text_adapter: str | None = None):
    """The :class:`core.request.GenerationRequest` of a case: its prompt, characters (with their descriptions and
    masks, mask files opened as images) and seed, at ``settings``."""
    from core.conditioning.character import Character
    from core.request import GenerationRequest

    characters = []
    masks = case.masks or (None,) * len(case.characters)
    for name, mask in zip(case.characters, masks):
        character = bench.characters[name]
        characters.append(Character(str(character.image_path), name=name, scale=settings.scale,
                                    mask=_mask_spec(mask), description=character.description))
    return GenerationRequest(case.prompt, characters=characters, steps=settings.steps, guidance=settings.guidance,
                             width=settings.width, height=settings.height, seed=case.seed,
                             text_adapter=str(text_adapter) if text_adapter else None)


def _render(engine, request) -> bytes:
    """The case's image as PNG bytes, with the engine's record of the request in its metadata."""
    result = engine.generate(request, pipeline_options={"output_type": "pil"})
    if not result.images:
        raise RuntimeError("the engine returned no image" + (f" ({'; '.join(result.notes)})" if result.notes else ""))
    image = result.images[0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"the pipeline returned {type(image).__name__}, expected a PIL image")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=result.records[0].pnginfo())
    return buffer.getvalue()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _load_manifest(path: Path, resume: bool) -> dict:
    if resume and path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("version") == MANIFEST_VERSION and isinstance(manifest.get("cases"), dict):
                return manifest
        except (json.JSONDecodeError, OSError):
            pass  # an unreadable manifest means nothing is known to be done: render again
    return {"version": MANIFEST_VERSION, "cases": {}}


def run_benchmark(
    bench_dir: str | os.PathLike | Benchmark,
    engine: Any,
    scorer: CharacterScorer | None,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    *,
    settings: RenderSettings | None = None,
    label: str | None = None,
    text_adapter: str | os.PathLike | None = None,
) -> EvaluationRun:
    """Render, score and report every case of a benchmark.

    Args:
        bench_dir: a benchmark folder (see :mod:`core.evaluation.format`) or a loaded :class:`Benchmark`.
        engine: a :class:`core.engine.Engine` (or anything with its ``load`` and ``generate``), loaded before the
            first case that needs rendering (a load failure stops the run); ``None`` to only score finished
            renders.
        scorer: a :class:`~core.evaluation.metrics.CharacterScorer`; ``None`` to only render.
        out_dir: the run folder (created).
        resume: reuse finished renders and scores recorded in ``OUT/manifest.json`` (``False`` starts over).
        progress: called as ``progress(done, total, message)`` after each case is rendered or reused.
        settings: render settings (steps, guidance, size, scale).
        label: what else determines the images (models, preset, text adapter): part of the render key, and shown in
            the report.
        text_adapter: the text adapter every request uses (a path or hub id; name it in ``label`` too).

    Returns an :class:`EvaluationRun`; failed renders are recorded (``status: failed``, with the error) and the run
    goes on.
    """
    bench = bench_dir if isinstance(bench_dir, Benchmark) else load_benchmark(bench_dir)
    settings = settings or RenderSettings()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = _load_manifest(manifest_path, resume)
    manifest.update(benchmark=str(bench.root), settings=settings.as_dict(), label=label)
    entries: dict[str, dict] = manifest["cases"]
    digest_cache: dict[Path, str] = {}

    def digests(path: Path) -> str:
        if path not in digest_cache:
            digest_cache[path] = _file_digest(path)
        return digest_cache[path]

    run = EvaluationRun(out, [], {}, ())
    total = len(bench.cases)
    loaded = False
    for done, case in enumerate(bench.cases, start=1):
        key = _render_key(bench, case, settings, label, digests)
        entry = entries.get(case.id)
        image_file = f"images/{case.id}.png"
        if entry and entry.get("status") == "done" and entry.get("key") == key and (out / entry["image"]).is_file():
            run.reused += 1
            message = f"{case.id}: already rendered"
        elif engine is None:
            raise ValueError(f"case {case.id!r} is not rendered yet and no engine was given to render it")
        else:
            entry = {"key": key, "case": case.as_json(), "image": image_file}
            if not loaded:
                engine.load(text_adapter=text_adapter)  # outside the case: no models means no run
                loaded = True
            try:
                write_atomic(out / image_file, _render(engine, case_request(bench, case, settings, text_adapter)))
                entry["status"] = "done"
                run.rendered += 1
                message = f"{case.id}: rendered"
            except Exception as error:  # one failed case (bad input, out of memory) must not stop the benchmark
                entry.update(status="failed", error=_one_line(error))
                run.failed += 1
                message = f"{case.id}: failed ({entry['error']})"
            entries[case.id] = entry
            write_json(manifest_path, manifest)
        if progress is not None:
            progress(done, total, message)

    known = {case.id for case in bench.cases}
    for stale in [case_id for case_id in entries if case_id not in known]:
        del entries[stale]  # cases removed from the benchmark leave the run's results

    if scorer is not None:
        run.scored = _score_cases(bench, scorer, out, manifest, manifest_path, progress)
        run.metrics = scorer.metrics
    else:
        run.metrics = tuple(manifest.get("metrics", ()))
    write_json(manifest_path, manifest)

    run.rows = [_row(case, entries.get(case.id, {}), bench) for case in bench.cases]
    run.failed = sum(row["status"] == "failed" for row in run.rows)
    run.summary = {name: mean_interval([row[name] for row in run.rows if row["status"] == "done"]).as_dict()
                   for name in run.metrics}
    run.files = _write_outputs(bench, run, manifest)
    return run


def _score_cases(bench, scorer, out, manifest, manifest_path, progress) -> int:
    entries = manifest["cases"]
    scorer_description = scorer.describe()
    pending = [
        case for case in bench.cases
        if entries.get(case.id, {}).get("status") == "done"
        and (entries[case.id].get("scores") is None or entries[case.id].get("scorer") != scorer_description)
    ]
    for start in range(0, len(pending), SCORE_CHUNK):
        chunk = pending[start : start + SCORE_CHUNK]
        score_cases = []
        for case in chunk:
            with Image.open(out / entries[case.id]["image"]) as opened:
                image = opened.convert("RGB")
            score_cases.append(
                ScoreCase(
                    image=image,
                    prompt=bench.text_prompt(case),
                    references=[bench.characters[name].image_path for name in case.characters],
                    regions=case_regions(case, image.size),
                )
            )
        for case, result in zip(chunk, scorer.score(score_cases)):
            entries[case.id]["scores"] = result.as_dict()
            entries[case.id]["per_character"] = [
                {"character": name, **values} for name, values in zip(case.characters, result.per_character)
            ]
            entries[case.id]["scorer"] = scorer_description
        manifest["metrics"] = list(scorer.metrics)
        write_json(manifest_path, manifest)
        if progress is not None:
            progress(start + len(chunk), len(pending), f"scored {start + len(chunk)} of {len(pending)} cases")
    return len(pending)


def _row(case: BenchmarkCase, entry: dict, bench: Benchmark) -> dict[str, Any]:
    scores = entry.get("scores") or {}
    row = {
        "id": case.id,
        "status": entry.get("status", "missing"),
        "seed": case.seed,
        "characters": list(case.characters),
        "prompt": case.prompt,
        "text_prompt": bench.text_prompt(case),
        "image": entry.get("image") if entry.get("status") == "done" else None,
        "error": entry.get("error"),
    }
    row.update({name: scores.get(name) for name in METRICS})
    row["per_character"] = entry.get("per_character", [])
    return row


def format_summary(summary: dict[str, dict], metrics=None, *, failed: int = 0, total: int | None = None) -> str:
    """The summary as a text table: metric, n, mean, 95% t interval."""
    lines = [f"{'metric':<14}{'n':>5}{'mean':>10}   95% interval (t)"]
    for name in metrics or summary:
        stats = summary.get(name) or {}
        if stats.get("mean") is None:
            lines.append(f"{name:<14}{stats.get('n', 0):>5}{'-':>10}")
            continue
        interval = (
            f"[{stats['ci95_low']:.4f}, {stats['ci95_high']:.4f}]" if stats.get("ci95_low") is not None else "-"
        )
        lines.append(f"{name:<14}{stats['n']:>5}{stats['mean']:>10.4f}   {interval}")
    if failed:
        lines.append(f"{failed} of {total} cases failed to render (see scores.csv)")
    return "\n".join(lines)


def _write_outputs(bench: Benchmark, run: EvaluationRun, manifest: dict) -> dict[str, Path]:
    from core.evaluation.report import write_html_report

    out = run.out_dir
    files = {name: out / name for name in ("scores.csv", "scores.json", "summary.txt", "report.html")}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["id", "status", "seed", "characters", "prompt", "image", *run.metrics, "error"]
    writer.writerow(columns)
    for row in run.rows:
        values = {**row, "characters": ";".join(row["characters"])}
        writer.writerow(["" if values.get(column) is None else values[column] for column in columns])
    write_atomic(files["scores.csv"], buffer.getvalue().encode("utf-8"))
    write_json(
        files["scores.json"],
        {
            "benchmark": str(bench.root),
            "settings": manifest.get("settings"),
            "label": manifest.get("label"),
            "scorer": next((e.get("scorer") for e in manifest["cases"].values() if e.get("scorer")), None),
            "metrics": list(run.metrics),
            "summary": run.summary,
            "cases": run.rows,
        },
    )
    write_atomic(files["summary.txt"], (run.summary_text + "\n").encode("utf-8"))
    write_html_report(files["report.html"], bench, run, manifest)
    return files

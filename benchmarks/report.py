"""The bench's figures as text: one run (:func:`format_result`), a markdown table of several with the goals
checked (:func:`format_markdown`), and the JSON-lines files they are kept in (:func:`read_jsonl`).

Units: seconds, GiB (2**30 bytes).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

REFERENCE_STEPS = 28  # FLUX.1-dev's usual step count; s/image is also given at this count


def _gib(value) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def format_result(r: dict) -> str:
    """One run's figures, a few lines of text."""
    head = f"bench {r['run']} on {r['device']} ({r['models']} models, {r['dtype']}, {r['width']}x{r['height']}, " \
           f"{r['steps']} steps)"
    lines = [head,
             f"  load time      {r['load_s']:.2f} s",
             f"  per step       {r['s_per_step']:.3f} s",
             f"  per image      {r['s_per_image']:.2f} s" +
             (f"  ({r['s_per_image_at_28']:.2f} s at {REFERENCE_STEPS} steps, extrapolated)"
              if r["steps"] != REFERENCE_STEPS else ""),
             f"  peak GPU       {_gib(r['gpu_peak_gib'])} generating, {_gib(r['gpu_peak_load_gib'])} loading"
             + (f"  (planner: {_gib(r['estimate_gpu_gib'])})" if r.get("estimate_gpu_gib") is not None else ""),
             f"  peak RAM       {_gib(r['ram_peak_gib'])}"
             + (f"  (planner: {_gib(r['estimate_ram_gib'])})" if r.get("estimate_ram_gib") is not None else "")]
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


RUN_ORDER = ("as-released", "eager", "compiled", "fp8", "draft", "full", "balanced", "low", "minimal")


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_markdown(results: list[dict]) -> str:
    """A markdown table of several runs (errors included), with the issue's goals checked."""
    ok = [r for r in results if "error" not in r]
    order = {name: i for i, name in enumerate(RUN_ORDER)}
    rows = sorted(results, key=lambda r: order.get(r.get("run"), len(order)))
    first = ok[0] if ok else {}
    steps = first.get("steps")
    lines = []
    if first:
        lines.append(f"Device: {first['device']}, torch {first['torch']}, {first['models']} models, {first['dtype']}, "
                     f"{first['width']}x{first['height']}, {steps} steps timed after a 2-step warm-up; caches cleared "
                     "before the timed image.")
        if steps != REFERENCE_STEPS:
            lines.append(f"s/image at {REFERENCE_STEPS} steps is extrapolated: measured s/image + "
                         f"({REFERENCE_STEPS} - {steps}) x s/step.")
        lines.append("")
    lines += [("| run | transformer | offload | load s | s/step | s/image | s/image @28 | GPU peak | planner GPU "
               "| RAM peak | planner RAM | notes |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('run', '?')} | | | | | | | | | | | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['run']} | {r['transformer_quantization'] or r['dtype']} | {r['offload']} | {r['load_s']:.1f} "
            f"| {r['s_per_step']:.3f} | {r['s_per_image']:.2f} | {r['s_per_image_at_28']:.2f} "
            f"| {_cell(r['gpu_peak_gib'], '.1f')} | {_cell(r['estimate_gpu_gib'], '.1f')} "
            f"| {_cell(r['ram_peak_gib'], '.1f')} | {_cell(r['estimate_ram_gib'], '.1f')} "
            f"| {'; '.join(r.get('notes', []))} |")
    by_run = {r["run"]: r for r in ok}
    goals = []
    if "full" in by_run and "as-released" in by_run:
        ratio = by_run["full"]["s_per_step"] / by_run["as-released"]["s_per_step"]
        goals.append(f"full / as released, s/step: {ratio:.3f} (goal <= 0.95: {'met' if ratio <= 0.95 else 'missed'})")
    for run, limit in (("low", 16), ("minimal", 10)):
        if run in by_run and by_run[run]["gpu_peak_gib"] is not None:
            peak = by_run[run]["gpu_peak_gib"]
            goals.append(f"{run} GPU peak {peak:.1f} GiB (goal <= {limit}: {'met' if peak <= limit else 'missed'})")
    if goals:
        lines += ["", "Goals: " + "; ".join(goals) + "."]
    lines.append("")
    lines.append("GPU peak: torch.cuda.max_memory_allocated while generating (GiB); RAM peak: process max RSS, "
                 "loading included; load s: the engine's load, from_pretrained + apply_preset (files in the page "
                 "cache).")
    return "\n".join(lines)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; unreadable lines are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                records.append(json.loads(line))
    return records

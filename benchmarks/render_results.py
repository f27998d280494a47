"""The README's GPU tables, rendered from the JSON lines in ``benchmarks/results/*.jsonl``.

    python -m benchmarks.render_results            # rewrite the tables between the README's markers
    python -m benchmarks.render_results --check    # exit 1 when the README differs from what would be written

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``. Measured figures land by
committing a GPU check's ``gpu-check.jsonl`` as ``benchmarks/results/<card>-<date>.jsonl`` and running this; a run
with no row reads "not measured". Rows of the CPU rehearsal (``dry_run``) are never shown. The first round's
``h200-bench.jsonl`` (``bench --random-weights``, before the GPU check existed) is the code of commit 18a4912 and is
labelled so. Files are read in name order; a later file's row of a run replaces an earlier one's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
FIRST_ROUND = {"h200-bench.jsonl": "18a4912"}  # files written before records named their code: file -> commit
NOT_MEASURED = "not measured"
SPEED = ("as-released", "eager", "compiled", "fp8", "draft")
PRESETS = ("preset/streamed@8", "preset/fp8-streamed@16", "preset/fp8@24", "preset/low@12", "gguf/fp8-streamed@16",
           "preset/streamed@12", "preset/minimal@8", "preset/balanced@40")
TRAIN = ("train/24gb", "train/48gb", "train/80gb")
FIRST_ROUND_RUNS = ("as-released", "full", "low", "balanced", "minimal")
FIRST_ROUND_LABELS = {"as-released": "as released (projector every step, no caching)",
                      "low": "`low` (then nf4 + quanto int8 adapter, model offload)",
                      "minimal": "`minimal` (then nf4 + group offload)"}


def read_results(folder: Path = RESULTS) -> tuple[dict[str, dict], dict[str, dict]]:
    """(GPU check records by run, first-round records by run); dry runs and skipped runs left out."""
    check, first = {}, {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if path.name in FIRST_ROUND:
                first[record["run"]] = dict(record, code=FIRST_ROUND[path.name], file=path.name)
            elif record.get("check") == "gpu_check" and not record.get("dry_run") and "skipped" not in record:
                check[record["run"]] = dict(record, file=path.name)
    return check, first


def _n(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _source(r: dict) -> str:
    return f"{r.get('device', '?')}, code {r.get('code') or '?'} ({r['file']})"


def speed_table(check: dict[str, dict]) -> str:
    lines = ["| mode (1024x1024, one character) | ran as | s/step | s/image @28 | vs as-released | goal | compile s "
             "| GPU peak alloc / card | latents vs eager | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    goals = {"compiled": "<= 0.65x", "fp8": "<= 0.40x", "draft": "<= 0.30x"}
    eager = check.get("speed/eager", {})
    for mode in SPEED:
        r = check.get(f"speed/{mode}")
        if r is not None and mode == "as-released":  # measured when eager's latents existed, so on eager's row
            r = dict(r, latents_rel_diff_to_eager=eager.get("as_released_latents_rel_diff_to_eager"))
        if r is None:
            lines.append(f"| `{mode}` | {NOT_MEASURED} | | | | {goals.get(mode, '')} | | | | |")
        elif "error" in r:
            lines.append(f"| `{mode}` | failed: {r['error'][:120]} | | | | {goals.get(mode, '')} | | | | {_source(r)} |")
        else:
            lines.append(
                f"| `{mode}` | {r.get('ran_as', '-')} | {_n(r.get('s_per_step'), '.4f')} | "
                f"{_n(r.get('s_per_image_at_28'), '.2f')} | {_n(r.get('rel_to_as_released'), '.3f')} | "
                f"{r.get('goal') or goals.get(mode, '')} | {_n(r.get('compile_s'), '.1f')} | "
                f"{_n(r.get('gpu_peak_gib'), '.1f')} / {_n(r.get('gpu_card_peak_gib'), '.1f')} GiB | "
                f"{_n(r.get('latents_rel_diff_to_eager'), '.3g')} | {_source(r)} |")
    return "\n".join(lines)


def presets_table(check: dict[str, dict]) -> str:
    lines = ["| run (preset@card GiB) | ran as | s/step | GPU peak alloc / card | planner GPU | RAM peak / anon "
             "| planner RAM need / peak | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in PRESETS:
        r = check.get(name)
        label = f"`{name.split('/', 1)[1]}`" + (" GGUF Q8_0" if name.startswith("gguf/") else "")
        if r is None:
            lines.append(f"| {label} | {NOT_MEASURED} | | | | | | |")
            continue
        ran = f"failed: {r['error'][:120]}" if "error" in r else r.get("ran_as", "-")
        lines.append(
            f"| {label} | {ran} | {_n(r.get('s_per_step'), '.3f')} | {_n(r.get('gpu_peak_gib'), '.1f')} / "
            f"{_n(r.get('gpu_card_peak_gib'), '.1f')} GiB | {_n(r.get('estimate_gpu_gib'), '.1f')} GiB | "
            f"{_n(r.get('ram_peak_gib'), '.1f')} / {_n(r.get('ram_anon_peak_gib'), '.1f')} GiB | "
            f"{_n(r.get('estimate_ram_need_gib'), '.1f')} / {_n(r.get('estimate_ram_peak_gib'), '.1f')} GiB | "
            f"{_source(r)} |")
    return "\n".join(lines)


def train_table(check: dict[str, dict]) -> str:
    lines = ["| preset | ran as | stage | s per micro step | GPU peak alloc / card | planned | card | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in TRAIN:
        r = check.get(name)
        label = f"`{name.split('/', 1)[1]}`"
        if r is None:
            lines.append(f"| {label} | {NOT_MEASURED} | | | | | | |")
            continue
        ran = f"failed: {r['error'][:120]}" if "error" in r else r.get("ran_as", "-")
        lines.append(f"| {label} | {ran} | {r.get('stage', '-')} | {_n(r.get('s_per_micro_step'), '.3f')} | "
                     f"{_n(r.get('gpu_peak_gib'), '.1f')} / {_n(r.get('gpu_card_peak_gib'), '.1f')} GiB | "
                     f"{_n(r.get('planned_gib'), '.1f')} GiB | {_n(r.get('card_gib'), 'd')} GB | {_source(r)} |")
    return "\n".join(lines)


def first_round_table(first: dict[str, dict]) -> str:
    lines = ["| run (code of commit 18a4912) | load s | s/step | s/image @28 | GPU peak | RAM peak |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in FIRST_ROUND_RUNS:
        r = first.get(name)
        label = FIRST_ROUND_LABELS.get(name, f"`{name}`")
        if r is None:
            lines.append(f"| {label} | {NOT_MEASURED} | | | | |")
        elif "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:100]} | | | | |")
        else:
            lines.append(f"| {label} | {r['load_s']:.1f} | {r['s_per_step']:.3f} | {r['s_per_image_at_28']:.2f} | "
                         f"{r['gpu_peak_gib']:.1f} GiB | {r['ram_peak_gib']:.1f} GiB |")
    return "\n".join(lines)


def tables(folder: Path = RESULTS) -> dict[str, str]:
    check, first = read_results(folder)
    return {"speed": speed_table(check), "presets": presets_table(check), "train": train_table(check),
            "first-round": first_round_table(first)}


def render(text: str, rendered: dict[str, str]) -> str:
    """``text`` with each marked table replaced; a marker pair missing from ``text`` is an error."""
    for name, table in rendered.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)",
                             re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"error: README.md has no <!-- results:{name} --> ... <!-- /results:{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render_results", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is not up to date")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = render(text, tables())
    if args.check:
        if new != text:
            print("README.md's GPU tables are out of date: python -m benchmarks.render_results", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new)
        print("README.md: GPU tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

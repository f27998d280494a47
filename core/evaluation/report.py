"""Self-contained HTML reports: thumbnails embedded as base64 PNG, plots as inline SVG, no external files."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from PIL import Image

from core.evaluation.files import write_atomic

__all__ = ["thumbnail_data_uri", "bar_plot_svg", "write_html_report", "comparison_html"]

THUMBNAIL_SIDE = 160
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{display:block;border:1px solid #ddd}
.refs{display:flex;gap:4px}
.failed{color:#b00}
""".strip()


def thumbnail_data_uri(image: Image.Image | str | Path, side: int = THUMBNAIL_SIDE) -> str:
    """A ``data:image/png;base64,...`` URI of the image shrunk to fit ``side`` x ``side`` pixels."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def bar_plot_svg(bars: list[tuple[str, float | None, float | None, float | None]], title: str = "",
                 width: int = 520, zero_line: bool = True) -> str:
    """A horizontal bar plot as inline SVG; ``bars`` are ``(label, value, low, high)`` (interval optional).

    The axis spans the values and intervals and always includes 0, so positive and negative bars read correctly.
    """
    shown = [bar for bar in bars if bar[1] is not None]
    row, left, right, top = 26, 120, 70, 24 if title else 6
    height = top + row * max(1, len(shown)) + 18
    numbers = [0.0] + [v for bar in shown for v in bar[1:] if v is not None and math.isfinite(v)]
    low, high = min(numbers), max(numbers)
    if high - low < 1e-12:
        high = low + 1.0
    span = width - left - right

    def x(value: float) -> float:
        return left + (min(max(value, low), high) - low) / (high - low) * span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12" '
             f'font-family="sans-serif" role="img">']
    if title:
        parts.append(f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>')
    for index, (label, value, lo, hi) in enumerate(shown):
        y = top + index * row
        start, end = sorted((x(0.0), x(value)))
        colour = "#4a7bd0" if value >= 0 else "#d0694a"
        parts.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{start:.1f}" y="{y + 4}" width="{max(end - start, 1):.1f}" height="16" fill="{colour}"/>')
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            parts.append(f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y + 12}" y2="{y + 12}" stroke="#222"/>')
            for end_value in (lo, hi):
                parts.append(f'<line x1="{x(end_value):.1f}" x2="{x(end_value):.1f}" y1="{y + 7}" y2="{y + 17}" '
                             f'stroke="#222"/>')
        parts.append(f'<text x="{width - right + 6}" y="{y + 16}">{_fmt(value)}</text>')
    if zero_line:
        parts.append(f'<line x1="{x(0.0):.1f}" x2="{x(0.0):.1f}" y1="{top}" y2="{height - 18}" stroke="#888"/>')
    parts.append(f'<text x="{left}" y="{height - 4}" fill="#666">{_fmt(low, 2)}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 4}" text-anchor="end" fill="#666">{_fmt(high, 2)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html_report(path: Path, bench, run, manifest: dict) -> Path:
    """Write the run's report: settings, summary table and plot, then one row per case with thumbnails."""
    metrics = list(run.metrics)
    body = [f"<h1>Benchmark report: {html.escape(bench.root.name)}</h1>"]
    settings = manifest.get("settings") or {}
    details = [("benchmark", str(bench.root)), ("cases", str(len(run.rows))), ("failed", str(run.failed))]
    details += [(key, str(value)) for key, value in settings.items()]
    if manifest.get("label"):
        details.append(("label", manifest["label"]))
    scorer = next((entry.get("scorer") for entry in manifest["cases"].values() if entry.get("scorer")), None)
    if scorer:
        details += [(key, str(value)) for key, value in scorer.items() if value is not None]
    body.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                      for k, v in details) + "</table>")

    body.append("<h2>Summary</h2><p>Mean per metric with its 95% Student t interval over cases. CLIP-I, DINO-I "
                "and CLIP-T are raw cosines in [-1, 1] (the paper's scale).</p>")
    header = "<tr><th>metric</th><th>n</th><th>mean</th><th>95% low</th><th>95% high</th><th>std</th></tr>"
    rows = []
    for name in metrics:
        stats = run.summary.get(name, {})
        rows.append(f"<tr><td>{name}</td><td class=num>{stats.get('n', 0)}</td>"
                    + "".join(f"<td class=num>{_fmt(stats.get(key))}</td>"
                              for key in ("mean", "ci95_low", "ci95_high", "std")) + "</tr>")
    body.append("<table>" + header + "".join(rows) + "</table>")
    body.append(bar_plot_svg([(name, run.summary.get(name, {}).get("mean"), run.summary.get(name, {}).get("ci95_low"),
                               run.summary.get(name, {}).get("ci95_high")) for name in metrics],
                             title="Mean score (95% interval)"))

    body.append("<h2>Cases</h2>")
    reference_uris = {name: thumbnail_data_uri(character.image_path, 64) for name, character in bench.characters.items()}
    header = "<tr><th>id</th><th>characters</th><th>generated</th><th>prompt</th>" + "".join(
        f"<th>{name}</th>" for name in metrics) + "</tr>"
    rows = []
    for row in run.rows:
        references = "".join(f'<figure style="margin:0"><img src="{reference_uris[name]}" alt="{html.escape(name)}">'
                             f"<figcaption>{html.escape(name)}</figcaption></figure>" for name in row["characters"])
        if row["status"] == "done" and row["image"]:
            generated = f'<img src="{thumbnail_data_uri(run.out_dir / row["image"])}" alt="{html.escape(row["id"])}">'
        else:
            generated = f'<span class=failed>{html.escape(row["status"])}: {html.escape(row.get("error") or "")}</span>'
        rows.append(f"<tr><td>{html.escape(row['id'])}<br>seed {row['seed']}</td><td><div class=refs>{references}"
                    f"</div></td><td>{generated}</td><td>{html.escape(row['prompt'])}</td>"
                    + "".join(f"<td class=num>{_fmt(row.get(name))}</td>" for name in metrics) + "</tr>")
    body.append("<table>" + header + "".join(rows) + "</table>")
    write_atomic(Path(path), _page(f"Benchmark report: {bench.root.name}", body).encode("utf-8"))
    return Path(path)


def comparison_html(title: str, description: list[tuple[str, str]], tests: dict[str, dict]) -> str:
    """A page with the per-metric paired comparison table and a bar plot of the deltas with their intervals."""
    body = [f"<h1>{html.escape(title)}</h1>",
            "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                for k, v in description) + "</table>"]
    header = ("<tr><th>metric</th><th>n</th><th>mean A</th><th>mean B</th><th>delta (B-A)</th><th>95% low</th>"
              "<th>95% high</th><th>t</th><th>p</th></tr>")
    rows = [f"<tr><td>{name}</td><td class=num>{test['n']}</td>"
            + "".join(f"<td class=num>{_fmt(test.get(key))}</td>"
                      for key in ("mean_a", "mean_b", "delta", "ci95_low", "ci95_high", "t", "p")) + "</tr>"
            for name, test in tests.items()]
    body.append("<table>" + header + "".join(rows) + "</table>")
    body.append(bar_plot_svg([(name, t.get("delta"), t.get("ci95_low"), t.get("ci95_high")) for name, t in tests.items()],
                             title="Mean difference B - A (95% paired interval)"))
    return _page(title, body)

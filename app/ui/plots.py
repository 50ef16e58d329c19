"""Quality-versus-size and speed-versus-size plots of one base model's finished compressions, as inline SVG.

Drawn on the server (no charting library, nothing fetched by the browser): one marker shape per method,
the dense model as a reference point, and each point's recipe in its `<title>` (the browser shows it on
hover). Every point carries `data-job`, `data-params` and `data-value`, so tests (and scripts) can read what
is plotted without parsing geometry.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT, PAD = 640, 360, 56
SHAPES = ["circle", "square", "diamond", "triangle"]


@dataclass(frozen=True)
class Point:
    job_id: str | None  # None: the dense reference
    method: str
    params: int
    value: float
    label: str


def quality_points(jobs: list[Any]) -> list[Point]:
    """(parameters after, perplexity after) of every succeeded job with an evaluation, plus the dense model."""
    points: list[Point] = []
    dense: Point | None = None
    for job in jobs:
        result = job.result or {}
        after, ppl = result.get("params_after") or {}, result.get("perplexity_after")
        if job.status.value != "succeeded" or ppl is None or not after.get("total"):
            continue
        recipe = json.dumps(job.request.get("target", {}), sort_keys=True)
        points.append(Point(str(job.id), job.method, after["total"], float(ppl), f"{job.method} {recipe}"))
        before, dense_ppl = result.get("params_before") or {}, result.get("perplexity_before")
        if dense is None and before.get("total") and dense_ppl is not None:
            dense = Point(None, "dense", before["total"], float(dense_ppl), "dense (the base model)")
    return ([dense] if dense else []) + points


def speed_points(jobs: list[Any]) -> list[Point]:
    """(parameters after, measured speed-up) of succeeded speed-up jobs; the dense model at 1.0×."""
    points: list[Point] = []
    for job in jobs:
        result = job.result or {}
        speed, after = result.get("speedup") or {}, result.get("params_after") or {}
        if job.status.value != "succeeded" or speed.get("measured") is None or not after.get("total"):
            continue
        label = f"{job.method} target {speed.get('target')}× on {speed.get('device', '?')}"
        points.append(Point(str(job.id), job.method, after["total"], float(speed["measured"]), label))
        before = (result.get("params_before") or {}).get("total")
        if before and not any(p.job_id is None for p in points):
            points.insert(0, Point(None, "dense", before, 1.0, "dense (the base model)"))
    return points


def _marker(shape: str, x: float, y: float) -> str:
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6"'
    if shape == "square":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10"'
    if shape == "diamond":
        return f'<polygon points="{x:.1f},{y - 7:.1f} {x + 7:.1f},{y:.1f} {x:.1f},{y + 7:.1f} {x - 7:.1f},{y:.1f}"'
    return f'<polygon points="{x:.1f},{y - 7:.1f} {x + 7:.1f},{y + 6:.1f} {x - 7:.1f},{y + 6:.1f}"'


def svg(points: list[Point], y_label: str, plot_id: str) -> str:
    """The plot; an empty string when there is nothing to plot."""
    if not points:
        return ""
    xs, ys = [p.params for p in points], [p.value for p in points]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05 or 1
    y0, y1 = min(ys) * 0.9, max(ys) * 1.1 or 1
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(p: Point) -> tuple[float, float]:
        x = PAD + (p.params - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (p.value - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
        return x, y

    methods = sorted({p.method for p in points if p.job_id is not None})
    shape_of = {m: SHAPES[i % len(SHAPES)] for i, m in enumerate(methods)}
    parts = [
        f'<svg id="{plot_id}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(y_label)} against parameters">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" class="axis"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 14}" text-anchor="middle">parameters (millions)</text>',
        f'<text x="16" y="{HEIGHT / 2}" transform="rotate(-90 16 {HEIGHT / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
    ]
    for frac in (0.0, 0.5, 1.0):
        px, py = x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)
        parts.append(
            f'<text x="{PAD + frac * (WIDTH - 2 * PAD):.1f}" y="{HEIGHT - PAD + 18}" text-anchor="middle">'
            f"{px / 1e6:.1f}</text>"
        )
        parts.append(
            f'<text x="{PAD - 6}" y="{HEIGHT - PAD - frac * (HEIGHT - 2 * PAD) + 4:.1f}" text-anchor="end">'
            f"{py:.3g}</text>"
        )
    for p in points:
        x, y = at(p)
        kind = "dense" if p.job_id is None else p.method
        shape = "circle" if p.job_id is None else shape_of[p.method]
        attrs = (
            f' class="point {html.escape(kind)}" data-job="{p.job_id or ""}" data-method="{html.escape(p.method)}" '
            f'data-params="{p.params}" data-value="{p.value:.4f}">'
        )
        parts.append(f"{_marker(shape, x, y)}{attrs}<title>{html.escape(p.label)}: {p.value:.3f}</title>")
        parts.append("</circle>" if shape == "circle" else "</rect>" if shape == "square" else "</polygon>")
    legend_y = PAD - 24
    for i, method in enumerate(["dense", *methods]):
        shape = "circle" if method == "dense" else shape_of[method]
        x = PAD + 10 + i * 130
        parts.append(f'{_marker(shape, x, legend_y)} class="legend {html.escape(method)}"></{_close(shape)}>')
        parts.append(f'<text x="{x + 12}" y="{legend_y + 4}">{html.escape(method)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _close(shape: str) -> str:
    return {"circle": "circle", "square": "rect"}.get(shape, "polygon")

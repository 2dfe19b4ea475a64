"""The self-contained HTML burn-in report: inline CSS, inline SVG plots, a few lines of
JavaScript for filtering; nothing is fetched from anywhere."""

from __future__ import annotations

import math
from typing import Any

import jinja2
from markupsafe import Markup, escape

from provisioner.shipped import shipped_dir
from provisioner.ui.report import LOWER_IS_BETTER, fmt_threshold, fmt_value, test_label

# Throughput tests plotted against their floors, in report order.
PLOTTED = ("gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32", "memory_bandwidth",
           "h2d_bandwidth", "d2h_bandwidth", "p2p_bandwidth", "all_reduce_busbw",
           "all_gather_busbw", "multinode_all_reduce_busbw")
MAX_BARS = 160  # beyond this, one bar per node (its worst GPU)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f")
W, H, ML, MR, MT, MB = 860, 260, 64, 16, 28, 76
LINE_H = 220  # line charts: no rotated labels below, so less bottom margin


def _num(v: float) -> str:
    return f"{v:.3g}"


def _svg(title: str, body: list[str], marks: int, height: int = H,
         area: tuple[float, float, float, float] | None = None) -> Markup:
    """``area`` (x, y, width, height) is where the data marks must lie: the page's
    self-check (and so the browser test) fails a plot with a mark outside it."""
    x, y, w, h = area or (0, 0, W, height)
    # Every piece of text in ``body`` went through escape() where it was built.
    return Markup(  # noqa: S704
        f'<svg class="plot" data-marks="{marks}" data-area="{x:.1f} {y:.1f} {w:.1f} {h:.1f}" '
        f'viewBox="0 0 {W} {height}" width="{W}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        + "".join(body) + "</svg>")


def _y_axis(top: float, unit: str, plot_h: float) -> list[str]:
    """Grid lines and labels for 0..top over a plot area ``plot_h`` high below MT."""
    out = []
    for k in range(5):
        v = top * k / 4
        y = MT + plot_h - plot_h * k / 4
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>')
    out.append(f'<text x="14" y="{MT + plot_h / 2:.0f}" transform="rotate(-90 14 '
               f'{MT + plot_h / 2:.0f})" text-anchor="middle">{escape(unit)}</text>')
    return out


def bar_chart(test: str, bars: list[tuple[str, float, bool]], threshold: float | None,
              unit: str) -> Markup:
    """Bars (label, value, passed) with the floor as a dashed line."""
    top = max([b[1] for b in bars] + [threshold or 0]) * 1.12 or 1.0
    plot_w, plot_h = W - ML - MR, H - MT - MB
    step = plot_w / max(len(bars), 1)
    body = _y_axis(top, unit, plot_h)
    for k, (label, value, passed) in enumerate(bars):
        h = plot_h * value / top
        x = ML + k * step + step * 0.15
        body.append(f'<rect class="mark {"pass" if passed else "fail"}" x="{x:.1f}" '
                    f'y="{MT + plot_h - h:.1f}" width="{max(step * 0.7, 1):.1f}" '
                    f'height="{max(h, 0.5):.1f}"><title>{escape(label)}: {_num(value)} '
                    f'{escape(unit)}</title></rect>')
        if len(bars) <= 48:
            cx = x + step * 0.35
            body.append(f'<text class="lbl" x="{cx:.1f}" y="{MT + plot_h + 10}" '
                        f'transform="rotate(50 {cx:.1f} {MT + plot_h + 10})">'
                        f'{escape(label)}</text>')
    if threshold is not None:
        y = MT + plot_h - plot_h * threshold / top
        body.append(f'<line class="threshold" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" '
                    f'y2="{y:.1f}"/><text class="threshold-label" x="{W - MR}" '
                    f'y="{y - 4:.1f}" text-anchor="end">floor {_num(threshold)}</text>')
    return _svg(f"{test} ({unit})", body, len(bars), H, (ML, MT, plot_w, plot_h))


def line_chart(title: str, series: dict[str, list[tuple[float, float]]],
               unit: str) -> Markup:
    """One polyline per series (x in seconds since the first sample)."""
    points = [p for s in series.values() for p in s]
    t_max = max((p[0] for p in points), default=1.0) or 1.0
    top = max((p[1] for p in points), default=1.0) * 1.15 or 1.0
    height = LINE_H
    plot_w, plot_h = W - ML - MR, height - MT - 30
    body = _y_axis(top, unit, plot_h)
    for k in range(5):
        x = ML + plot_w * k / 4
        body.append(f'<text x="{x:.1f}" y="{MT + plot_h + 14}" text-anchor="middle">'
                    f'{_num(t_max * k / 4)} s</text>')
    marks = 0
    for n, (label, pts) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        coords = " ".join(f"{ML + plot_w * t / t_max:.1f},{MT + plot_h - plot_h * v / top:.1f}"
                          for t, v in pts)
        if len(pts) == 1:
            cx, cy = coords.split(",")
            body.append(f'<circle class="mark" cx="{cx}" cy="{cy}" r="3" fill="{color}"/>')
        else:
            body.append(f'<polyline class="mark" fill="none" stroke="{color}" '
                        f'stroke-width="1.5" points="{coords}"><title>{escape(label)}'
                        f'</title></polyline>')
        body.append(f'<text x="{ML + 8 + n * 70}" y="{MT - 10}" fill="{color}">'
                    f'{escape(label)}</text>')
        marks += 1
    return _svg(title, body, marks, height, (ML, MT, plot_w, plot_h))


def heatmap(title: str, matrix: list[list[float | None]], threshold: float | None) -> Markup:
    """The P2P matrix: source GPU rows, destination GPU columns, GB/s in each cell."""
    n = len(matrix)
    cell = min(56, (H + 140 - MT - 40) / max(n, 1))
    values = [v for row in matrix for v in row if isinstance(v, (int, float))]
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    body = []
    for i, row in enumerate(matrix):
        body.append(f'<text x="{ML - 6}" y="{MT + 20 + i * cell + cell / 2 + 4:.1f}" '
                    f'text-anchor="end">GPU{i}</text>')
        for j, v in enumerate(row):
            x, y = ML + j * cell, MT + 20 + i * cell
            if not isinstance(v, (int, float)):
                body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                            f'height="{cell:.1f}" fill="#eee"/>')
                continue
            frac = (v - lo) / (hi - lo) if hi > lo else 1.0
            light = ' fill="#fff"'  # text on the darker cells
            bad = threshold is not None and v < threshold
            color = "#d62728" if bad else f"hsl(210, 70%, {85 - 50 * frac:.0f}%)"
            body.append(f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                        f'height="{cell:.1f}" fill="{color}"><title>GPU{i} -&gt; GPU{j}: '
                        f'{_num(v)} GB/s</title></rect><text x="{x + cell / 2:.1f}" '
                        f'y="{y + cell / 2 + 4:.1f}" text-anchor="middle" class="cell"'
                        f'{light if bad or frac > 0.55 else ""}>'
                        f'{v:.0f}</text>')
    for j in range(n):
        body.append(f'<text x="{ML + j * cell + cell / 2:.1f}" y="{MT + 12}" '
                    f'text-anchor="middle">GPU{j}</text>')
    return _svg(title, body, len(values), int(MT + 40 + n * cell),
                (ML, MT + 20, n * cell, n * cell))


def _bars(doc: dict[str, Any], test: str) -> tuple[list[tuple[str, float, bool]],
                                                    float | None, str]:
    rows = [(n["name"], r) for n in doc["nodes"] for r in n["results"]
            if r["test"] == test and isinstance(r.get("value"), (int, float))]
    if len(rows) > MAX_BARS:  # a big fleet: each node's worst GPU
        worst: dict[str, dict[str, Any]] = {}
        for name, r in rows:
            if name not in worst or r["value"] < worst[name]["value"]:
                worst[name] = r
        rows = list(worst.items())
    bars = [(f"{name}" + (f"/gpu{r['gpu']}" if r.get("gpu") is not None else ""),
             float(r["value"]), r["verdict"] == "pass") for name, r in rows]
    threshold = next((r["threshold"] for _, r in rows if r.get("threshold") is not None), None)
    unit = rows[0][1]["unit"] if rows else ""
    return bars, threshold, unit


def _telemetry(node: dict[str, Any], key: str) -> dict[str, list[tuple[float, float]]]:
    samples = [s for s in node["telemetry"] if isinstance(s, dict)
               and isinstance(s.get(key), (int, float)) and isinstance(s.get("t"), (int, float))
               and math.isfinite(s[key])]
    if not samples:
        return {}
    t0 = min(s["t"] for s in samples)
    series: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        series.setdefault(f"GPU{s.get('gpu')}", []).append((s["t"] - t0, float(s[key])))
    return series


def render_html(doc: dict[str, Any]) -> str:
    charts = []
    for test in PLOTTED:
        bars, threshold, unit = _bars(doc, test)
        if bars:
            charts.append({"test": test, "svg": bar_chart(test, bars, threshold, unit)})
    nodes = []
    for n in doc["nodes"]:
        temp, power = _telemetry(n, "temp_c"), _telemetry(n, "power_w")
        p2p_floor = next((r["threshold"] for r in n["results"]
                          if r["test"] == "p2p_bandwidth"), None)
        nodes.append({
            **n,
            "temp_svg": line_chart(f"{n['name']} GPU temperature", temp, "C") if temp else None,
            "power_svg": line_chart(f"{n['name']} GPU power", power, "W") if power else None,
            "p2p_svg": heatmap(f"{n['name']} P2P bandwidth (GB/s)", n["p2p_matrix"], p2p_floor)
            if isinstance(n.get("p2p_matrix"), list) and n["p2p_matrix"] else None,
            "rows": [{**r, "label": test_label(r), "value_text": fmt_value(r),
                      "threshold_text": fmt_threshold(r)} for r in n["results"]],
        })
    env = jinja2.Environment(  # noqa: S701  (autoescape on for the template below)
        loader=jinja2.FileSystemLoader(str(shipped_dir() / "templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        doc=doc, charts=charts, nodes=nodes, lower_is_better=sorted(LOWER_IS_BETTER))

"""Figures and tables of a benchmark: accuracy-vs-latency Pareto scatter, per-layer time, table.

Examples
--------
>>> import workbench
>>> from workbench.backend import benchmark
>>> s = workbench.Session.default(progress=False)
>>> r = benchmark(s.base, ["torch"], batch_sizes=(1,), repeats=2, progress=False)
>>> fig = pareto_figure(r)
>>> [t.name for t in fig.data]
['torch', 'Pareto front']
>>> list(speed_table(r).columns[:3])
['variant', 'engine', 'batch']
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.plots.compare import _layout

ENGINE_COLORS = {"torch": "#636efa", "sparse": "#ef553b", "lowbit": "#00cc96",
                 "onnxruntime": "#ab63fa", "onnxruntime-int8": "#ffa15a", "inductor": "#19d3f3"}
OTHER_COLORS = ["#ff6692", "#b6e880", "#ff97ff", "#fecb52"]
KERNEL_COLORS = {"torch": "#9aa0a6"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower latency and higher accuracy.

    A point ``(latency, accuracy)`` is dominated if another has latency <= and accuracy >=
    with at least one strict. Identical points are both on the front.

    Parameters
    ----------
    points : sequence of (latency, accuracy)

    Returns
    -------
    list of int
        Indices into ``points``, ordered by increasing latency.

    Examples
    --------
    >>> pareto_front([(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (0.5, 0.50)])
    [3, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -np.inf
    for i in order:
        lat, acc = points[i]
        if acc > best:
            front.append(i)
            best = acc
        elif front and (lat, acc) == tuple(points[front[-1]]):
            front.append(i)
    return front


def _rows(result, batch: int | None):
    batch = batch if batch is not None else result.settings["batch_sizes"][0]
    return [r for r in result.rows if r.batch == batch and r.error is None
            and r.median_ms is not None and r.accuracy is not None], batch


def _marker_sizes(nbytes: list) -> np.ndarray:
    b = np.asarray([n or 0 for n in nbytes], dtype=float)
    top = b.max() if len(b) and b.max() > 0 else 1.0
    return 10 + 30 * np.sqrt(b / top)


def pareto_figure(result, batch: int | None = None) -> go.Figure:
    """Test accuracy (%) against median latency (ms) at one batch size.

    One trace per engine (marker area grows with the weight bytes; hover shows the details),
    and a dashed ``Pareto front`` line through the non-dominated points.

    Parameters
    ----------
    result : workbench.backend.BenchmarkResult
    batch : int, optional
        Batch size to show (default: the first one benchmarked).
    """
    rows, batch = _rows(result, batch)
    fig = go.Figure()
    engines = list(dict.fromkeys(r.engine for r in rows))
    sizes = dict(zip(map(id, rows), _marker_sizes([r.weight_bytes for r in rows])))
    for k, e in enumerate(engines):
        mine = [r for r in rows if r.engine == e]
        color = ENGINE_COLORS.get(e, OTHER_COLORS[k % len(OTHER_COLORS)])
        fig.add_trace(go.Scatter(
            x=[r.median_ms for r in mine], y=[100 * r.accuracy for r in mine], name=e,
            mode="markers", marker=dict(size=[sizes[id(r)] for r in mine], color=color,
                                        opacity=0.75, line=dict(width=1, color="white")),
            customdata=[[r.variant, r.p90_ms, r.throughput, r.weight_bytes or 0,
                         ", ".join(f"{n}×{k}" for k, n in r.kernels.items())] for r in mine],
            hovertemplate=(f"<b>%{{customdata[0]}}</b> on {e}<br>median %{{x:.3f}} ms · "
                           "p90 %{customdata[1]:.3f} ms<br>%{customdata[2]:,.0f} samples/s<br>"
                           "accuracy %{y:.1f}%<br>weights %{customdata[3]:,} B<br>"
                           "kernels %{customdata[4]}<extra></extra>")))
    front = pareto_front([(r.median_ms, r.accuracy) for r in rows])
    fig.add_trace(go.Scatter(
        x=[rows[i].median_ms for i in front], y=[100 * rows[i].accuracy for i in front],
        name="Pareto front", mode="lines", line=dict(color="black", dash="dash", width=1),
        hoverinfo="skip"))
    fig.update_xaxes(type="log")
    return _layout(fig, f"Accuracy vs latency (batch {batch})", "median latency (ms, log)",
                   "test accuracy (%)")


def layer_time_figure(times, title: str = "Time per layer") -> go.Figure:
    """Horizontal bars: median milliseconds per layer, colored by the kernel it ran on.

    Parameters
    ----------
    times : list of workbench.backend.layer_timing.LayerTime
    """
    fig = go.Figure()
    kernels = list(dict.fromkeys(t.kernel for t in times))
    palette = ["#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#636efa"]
    for k, kernel in enumerate(kernels):
        mine = [t for t in times if t.kernel == kernel]
        fig.add_trace(go.Bar(
            y=[t.name for t in mine], x=[t.ms for t in mine], name=kernel, orientation="h",
            marker_color=KERNEL_COLORS.get(kernel, palette[k % len(palette)]),
            customdata=[t.layer for t in mine],
            hovertemplate="%{y} (%{customdata})<br>%{x:.4f} ms<extra>" + kernel + "</extra>"))
    fig.update_yaxes(categoryorder="array", categoryarray=[t.name for t in times][::-1])
    return _layout(fig, title, "median time (ms)", "layer")


def speed_table(result) -> pd.DataFrame:
    """One row per (variant, engine, batch): latency, throughput, bytes, memory, accuracy."""
    cols = ["variant", "engine", "batch", "median_ms", "p90_ms", "throughput", "weight_bytes",
            "model_bytes", "peak_memory_bytes", "accuracy", "agreement", "kernels", "isa",
            "all_torch", "error"]
    data = []
    for r in result.rows:
        d = {c: getattr(r, c) for c in cols}
        d["kernels"] = ", ".join(f"{n}×{k}" for k, n in r.kernels.items())
        data.append(d)
    return pd.DataFrame(data, columns=cols)


__all__ = ["pareto_front", "pareto_figure", "layer_time_figure", "speed_table"]

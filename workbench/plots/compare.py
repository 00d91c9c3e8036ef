"""Figures that compare variants: accuracy-vs-sparsity curves, per-layer sparsity, trade-offs.

Examples
--------
>>> import workbench
>>> from workbench.sweep import sweep
>>> s = workbench.Session.default(progress=False)
>>> fig = sweep_figure(sweep(s, ["magnitude", "random"], [0.0, 0.5]))
>>> len(fig.data)
2
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.metrics import Metrics

TEMPLATE = "plotly_white"
HEIGHT = 380


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=HEIGHT, title=title, xaxis_title=x,
                      yaxis_title=y, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def sweep_figure(sweep) -> go.Figure:
    """Accuracy (%) against sparsity (%), one line per method, the parent's accuracy dashed.

    Parameters
    ----------
    sweep : workbench.sweep.Sweep

    Returns
    -------
    go.Figure
        One trace per method (the reference line is a shape, not a trace).
    """
    fig = go.Figure()
    for m in sweep.methods:
        x = np.where(np.isnan(sweep.achieved[m]), sweep.sparsities, sweep.achieved[m])
        fig.add_trace(go.Scatter(x=100 * x, y=100 * sweep.accuracy[m], name=m,
                                 mode="lines+markers",
                                 hovertemplate=f"{m}<br>sparsity %{{x:.1f}}%<br>"
                                               "accuracy %{y:.1f}%<extra></extra>"))
    fig.add_hline(y=100 * sweep.base_accuracy, line_dash="dash", line_color="gray",
                  annotation_text=f"{sweep.parent} {100 * sweep.base_accuracy:.1f}%",
                  annotation_position="bottom left")
    fig.update_xaxes(range=[-2, 100])
    fig.update_yaxes(range=[0, 102])
    return _layout(fig, "Accuracy vs sparsity", "sparsity (%)", "test accuracy (%)")


def layer_sparsity_figure(metrics: Mapping[str, Metrics]) -> go.Figure:
    """Grouped bars of each layer's sparsity (%), one trace per variant.

    Parameters
    ----------
    metrics : mapping of str to Metrics
        Variant name → its metrics, in display order.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> fig = layer_sparsity_figure({"base": s.base.metrics})
    >>> len(fig.data), list(fig.data[0].x) == list(s.base.metrics.layer_sparsity)
    (1, True)
    """
    fig = go.Figure()
    for name, m in metrics.items():
        layers = list(m.layer_sparsity)
        fig.add_trace(go.Bar(x=layers, y=[100 * m.layer_sparsity[n] for n in layers], name=name,
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.1f}}%<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 100])
    return _layout(fig, "Sparsity per layer", "layer", "weights removed (%)")


def variants_scatter(rows: Sequence[Mapping], x: str = "bytes_compressed",
                     y: str = "accuracy") -> go.Figure:
    """Each variant as a labelled point, one trace per kind (base, prune, quantize).

    Parameters
    ----------
    rows : sequence of mapping
        Rows of :meth:`Session.table` (need ``name``, ``kind``, ``x`` and ``y`` keys).
    x, y : str
        Columns to plot; ``bytes_*`` columns are shown in KB, ``accuracy`` and ``sparsity`` in %.
    """
    def scale(col):
        if col.startswith("bytes"):
            return 1 / 1024, f"{col.replace('_', ' ')} (KB)"
        if col in ("accuracy", "sparsity"):
            return 100.0, f"{col} (%)"
        return 1.0, col

    (sx, xl), (sy, yl) = scale(x), scale(y)
    fig = go.Figure()
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sel = [r for r in rows if r["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[sx * r[x] for r in sel], y=[sy * r[y] for r in sel], text=[r["name"] for r in sel],
            name=kind, mode="markers+text", textposition="top center", marker=dict(size=10),
            hovertemplate="%{text}<br>" + xl + " %{x:.3g}<br>" + yl + " %{y:.3g}<extra></extra>"))
    return _layout(fig, f"{y} vs {x}", xl, yl)


__all__ = ["sweep_figure", "layer_sparsity_figure", "variants_scatter"]

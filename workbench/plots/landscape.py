"""Figures of loss landscapes: a plane as contours or a surface, lines and interpolations.

Each function maps result objects of :mod:`workbench.analysis.landscape` to a plotly figure and
computes nothing else; the plotted arrays are the result's own (``fig.data[0].z`` of a contour
*is* ``Landscape.loss``).

Examples
--------
>>> import torch
>>> from workbench.analysis import landscape_2d
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
>>> ls = landscape_2d(net, x, y, steps=5, progress=False)
>>> fig = contour_figure(ls, points={"other": (0.3, -0.2)})
>>> [t.name for t in fig.data]
['loss', 'centre', 'other']
>>> bool((fig.data[0].z == ls.loss).all())
True
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go

from workbench.plots.compare import HEIGHT, TEMPLATE

METRICS = ("loss", "accuracy")
#: Marker colours of projected points (the centre is black).
POINT_COLORS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                "#7f7f7f")


def _values(result, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return result.loss if metric == "loss" else 100 * result.accuracy


def _label(metric: str) -> str:
    return "loss" if metric == "loss" else "accuracy (%)"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, title=title, xaxis_title=x,
                      yaxis_title=y, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def _point(p):
    """``(alpha, beta)`` from a pair or a :class:`~workbench.analysis.directions.Projection`."""
    if hasattr(p, "alpha"):
        return float(p.alpha), float(p.beta)
    a, b = p
    return float(a), float(b)


def contour_figure(landscape, *, metric: str = "loss", points: Mapping | None = None,
                   title: str | None = None) -> go.Figure:
    """The plane as filled contours, the model itself (the centre) and other models marked.

    Parameters
    ----------
    landscape : Landscape
    metric : {"loss", "accuracy"}
        ``Landscape.loss`` as it is, or ``100 * Landscape.accuracy``.
    points : mapping of str to (alpha, beta) or Projection, optional
        Further models placed on the plane, e.g. a pruned variant projected onto the dense
        model's landscape with :func:`~workbench.analysis.directions.project_onto`. A point
        outside the grid widens the axes so it stays visible.
    title : str, optional

    Returns
    -------
    go.Figure
        A ``Contour`` (``x = alphas``, ``y = betas``, ``z`` the metric), the centre marker,
        then one marker trace per point, named by its key.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import Landscape
    >>> ls = Landscape(np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 0.0, 1.0]), np.eye(3),
    ...                np.ones((3, 3)), 1.0)
    >>> fig = contour_figure(ls)
    >>> len(fig.data), fig.data[0].type, list(fig.data[1].x)
    (2, 'contour', [0.0])
    """
    z = _values(landscape, metric)
    fig = go.Figure(go.Contour(
        x=landscape.alphas, y=landscape.betas, z=z, name=metric,
        colorscale="Viridis" if metric == "loss" else "Viridis_r",
        contours=dict(showlabels=True, labelfont=dict(size=10, color="white")),
        colorbar=dict(title=_label(metric)),
        hovertemplate="α %{x:.3g}<br>β %{y:.3g}<br>" + metric + " %{z:.4g}<extra></extra>"))
    centre = landscape.center_loss if metric == "loss" else \
        100 * landscape.meta.get("center_accuracy", np.nan)
    fig.add_trace(go.Scatter(x=[0.0], y=[0.0], mode="markers", name="centre",
                             marker=dict(symbol="x", size=12, color="black"),
                             hovertemplate=f"centre<br>{metric} {centre:.4g}<extra></extra>"))
    xs, ys = [float(landscape.alphas[0]), float(landscape.alphas[-1])], \
        [float(landscape.betas[0]), float(landscape.betas[-1])]
    for i, (name, p) in enumerate((points or {}).items()):
        a, b = _point(p)
        xs.append(a)
        ys.append(b)
        fig.add_trace(go.Scatter(
            x=[a], y=[b], mode="markers+text", name=name, text=[name],
            textposition="top center",
            marker=dict(symbol="star", size=14, color=POINT_COLORS[i % len(POINT_COLORS)],
                        line=dict(width=1, color="white")),
            hovertemplate=f"{name}<br>α %{{x:.3g}}<br>β %{{y:.3g}}<extra></extra>"))
    if points:
        pad = 0.05 * (max(xs) - min(xs) or 1.0)
        fig.update_xaxes(range=[min(xs) - pad, max(xs) + pad])
        pad = 0.05 * (max(ys) - min(ys) or 1.0)
        fig.update_yaxes(range=[min(ys) - pad, max(ys) + pad])
    return _layout(fig, title or f"{_label(metric).capitalize()} landscape", "α (direction 1)",
                   "β (direction 2)", height=HEIGHT + 40)


def surface_figure(landscape, *, metric: str = "loss", title: str | None = None) -> go.Figure:
    """The plane as a 3-D surface, with the centre marked.

    Returns
    -------
    go.Figure
        A ``Surface`` (``x = alphas``, ``y = betas``, ``z`` the metric) and a ``Scatter3d``
        marker at the centre.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import Landscape
    >>> ls = Landscape(np.array([-1.0, 1.0]), np.array([-1.0, 1.0]), np.ones((2, 2)),
    ...                np.ones((2, 2)), 1.0)
    >>> [t.type for t in surface_figure(ls).data]
    ['surface', 'scatter3d']
    """
    z = _values(landscape, metric)
    centre = landscape.center_loss if metric == "loss" else \
        100 * landscape.meta.get("center_accuracy", np.nan)
    fig = go.Figure(go.Surface(x=landscape.alphas, y=landscape.betas, z=z, name=metric,
                               colorscale="Viridis" if metric == "loss" else "Viridis_r",
                               colorbar=dict(title=_label(metric))))
    fig.add_trace(go.Scatter3d(x=[0.0], y=[0.0], z=[centre], mode="markers", name="centre",
                               marker=dict(size=5, color="red")))
    fig.update_layout(template=TEMPLATE, height=HEIGHT + 80, title=title or
                      f"{_label(metric).capitalize()} surface",
                      margin=dict(l=10, r=10, t=50, b=10),
                      scene=dict(xaxis_title="α", yaxis_title="β", zaxis_title=_label(metric)))
    return fig


def curves_figure(curves: Mapping, *, metric: str = "loss", title: str | None = None) -> go.Figure:
    """Several 1-D curves overlaid, one trace each (e.g. the same random line through several
    variants, or the interpolations from a dense model to each of its variants).

    Parameters
    ----------
    curves : mapping of str to Curve
        Legend name → curve. If every curve is an interpolation (``meta["kind"]``), the two
        end points ``alpha = 0`` and ``alpha = 1`` are marked with dotted lines.
    metric : {"loss", "accuracy"}
    title : str, optional

    Returns
    -------
    go.Figure
        One ``Scatter`` per curve, ``x = alphas``, ``y`` the metric.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import Curve
    >>> c = Curve(np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.9, 0.3]), np.ones(3),
    ...           {"kind": "interpolation"})
    >>> fig = curves_figure({"base → pruned": c})
    >>> len(fig.data), fig.data[0].y.tolist(), len(fig.layout.shapes)
    (1, [0.1, 0.9, 0.3], 2)
    """
    fig = go.Figure()
    for name, c in curves.items():
        fig.add_trace(go.Scatter(x=c.alphas, y=_values(c, metric), name=name,
                                 mode="lines+markers", marker=dict(size=5),
                                 hovertemplate=f"{name}<br>α %{{x:.3g}}<br>{metric} "
                                               "%{y:.4g}<extra></extra>"))
    interp = bool(curves) and all(c.meta.get("kind") == "interpolation" for c in curves.values())
    if interp:
        for a, text in ((0.0, "start"), (1.0, "end")):
            fig.add_vline(x=a, line_dash="dot", line_color="gray", annotation_text=text,
                          annotation_position="top")
    x_title = "α (0: start model, 1: end model)" if interp else "α (along the direction)"
    default = "Interpolation" if interp else "Along a random direction"
    return _layout(fig, title or f"{default}: {_label(metric)}", x_title, _label(metric))


__all__ = ["contour_figure", "surface_figure", "curves_figure", "METRICS"]

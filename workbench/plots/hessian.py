"""Figures of Hessian spectra: top eigenvalues, traces and eigenvalue densities.

Inputs are the result objects of :mod:`workbench.analysis.hessian` and
:mod:`workbench.analysis.density`, keyed by variant name (and, for per-layer results, by layer).

Examples
--------
>>> import numpy as np
>>> from workbench.analysis import Eigen, Trace
>>> eig = {"base": Eigen(np.array([5.0, 2.0]), ()), "pruned": Eigen(np.array([9.0, 3.0]), ())}
>>> fig = eigenvalues_figure(eig)
>>> [t.name for t in fig.data], fig.data[1].y.tolist()
(['base', 'pruned'], [9.0, 3.0])
>>> tr = {"base": Trace(40.0, 2.0, np.zeros(3)), "pruned": Trace(70.0, 5.0, np.zeros(3))}
>>> list(trace_figure(tr).data[0].y)
[40.0, 70.0]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go

from workbench.plots.compare import HEIGHT, TEMPLATE

#: Added to the density before the log axis, as PyHessian's ``semilogy(grid, density + 1e-7)``.
DENSITY_FLOOR = 1e-7


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=HEIGHT, title=title, xaxis_title=x,
                      yaxis_title=y, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def _per_layer(results: Mapping) -> bool:
    """True if ``results`` maps variant → {layer → result} rather than variant → result."""
    return bool(results) and all(isinstance(v, Mapping) for v in results.values())


def _layers(results: Mapping) -> list[str]:
    return list(dict.fromkeys(layer for per in results.values() for layer in per))


def eigenvalues_figure(results: Mapping, *, title: str | None = None) -> go.Figure:
    """Top Hessian eigenvalues as grouped bars, one trace per variant.

    Parameters
    ----------
    results : mapping
        Either variant → :class:`~workbench.analysis.hessian.Eigen` (bars ``λ1 … λk``), or
        variant → {layer → Eigen} (bars per layer, the top eigenvalue ``λ1`` of each layer's
        block of the Hessian; a layer a variant lacks is left empty).
    title : str, optional

    Returns
    -------
    go.Figure
        One ``Bar`` per variant.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import Eigen
    >>> per = {"base": {"fc": Eigen(np.array([3.0]), ()), "conv": Eigen(np.array([7.0]), ())}}
    >>> fig = eigenvalues_figure(per)
    >>> list(fig.data[0].x), list(fig.data[0].y)
    (['fc', 'conv'], [3.0, 7.0])
    """
    fig = go.Figure()
    if _per_layer(results):
        layers = _layers(results)
        for name, per in results.items():
            y = [float(per[n].values[0]) if n in per else None for n in layers]
            fig.add_trace(go.Bar(x=layers, y=y, name=name,
                                 hovertemplate=f"{name}<br>%{{x}}: λ1 = %{{y:.4g}}"
                                               "<extra></extra>"))
        x_title, default = "layer", "Top Hessian eigenvalue per layer"
    else:
        k = max((len(e.values) for e in results.values()), default=0)
        labels = [f"λ{i + 1}" for i in range(k)]
        for name, e in results.items():
            fig.add_trace(go.Bar(x=labels[:len(e.values)], y=np.asarray(e.values, float),
                                 name=name,
                                 hovertemplate=f"{name}<br>%{{x}} = %{{y:.4g}}<extra></extra>"))
        x_title, default = "eigenvalue (largest magnitude first)", "Top Hessian eigenvalues"
    fig.update_layout(barmode="group")
    return _layout(fig, title or default, x_title, "eigenvalue")


def trace_figure(results: Mapping, *, title: str | None = None) -> go.Figure:
    """Hutchinson trace estimates with their standard errors as bars.

    Parameters
    ----------
    results : mapping
        Variant → :class:`~workbench.analysis.hessian.Trace` (one ``Bar`` trace, a bar per
        variant), or variant → {layer → Trace} (one ``Bar`` per variant, a bar per layer).

    Returns
    -------
    go.Figure
        Error bars are ``Trace.stderr``.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import Trace
    >>> fig = trace_figure({"base": Trace(10.0, 1.0, np.zeros(2))})
    >>> list(fig.data[0].x), list(fig.data[0].error_y.array)
    (['base'], [1.0])
    """
    fig = go.Figure()
    if _per_layer(results):
        layers = _layers(results)
        for name, per in results.items():
            fig.add_trace(go.Bar(
                x=layers, y=[per[n].mean if n in per else None for n in layers], name=name,
                error_y=dict(type="data", array=[per[n].stderr if n in per else 0.0
                                                 for n in layers]),
                hovertemplate=f"{name}<br>%{{x}}: tr = %{{y:.4g}}<extra></extra>"))
        fig.update_layout(barmode="group")
        x_title = "layer"
    else:
        names = list(results)
        fig.add_trace(go.Bar(
            x=names, y=[results[n].mean for n in names], name="trace",
            error_y=dict(type="data", array=[results[n].stderr for n in names]),
            marker_color=[f"hsl({(37 * i) % 360},55%,50%)" for i in range(len(names))],
            hovertemplate="%{x}<br>tr(H) = %{y:.4g}<extra></extra>"))
        x_title = "variant"
    return _layout(fig, title or "Hessian trace (Hutchinson, ± standard error)", x_title,
                   "trace")


def density_figure(results: Mapping, *, title: str | None = None) -> go.Figure:
    """Hessian eigenvalue densities on a log axis, one line per variant.

    Parameters
    ----------
    results : mapping of str to SpectralDensity
        Variant → density.

    Returns
    -------
    go.Figure
        One ``Scatter`` per variant: ``x = grid``, ``y = density + DENSITY_FLOOR`` (zeros have
        no logarithm), the y axis logarithmic.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis import SpectralDensity
    >>> sd = SpectralDensity(np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.zeros((1, 1)),
    ...                      np.ones((1, 1)))
    >>> fig = density_figure({"base": sd})
    >>> fig.layout.yaxis.type, fig.data[0].y.tolist()
    ('log', [1.0000001, 1e-07])
    """
    fig = go.Figure()
    for name, sd in results.items():
        fig.add_trace(go.Scatter(x=sd.grid, y=np.asarray(sd.density) + DENSITY_FLOOR, name=name,
                                 mode="lines",
                                 hovertemplate=f"{name}<br>λ %{{x:.4g}}<br>density %{{y:.3g}}"
                                               "<extra></extra>"))
    fig.update_yaxes(type="log")
    return _layout(fig, title or "Hessian eigenvalue density (SLQ)",
                   "eigenvalue", "density")


__all__ = ["eigenvalues_figure", "trace_figure", "density_figure", "DENSITY_FLOOR"]

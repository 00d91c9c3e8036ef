"""Figures of active subspaces: eigenvalue decay per layer, active neurons against realized
channel counts, the universal attack and its perturbation, and ASNet against pruned variants.

Inputs are the result objects of :mod:`workbench.analysis.subspace`,
:mod:`workbench.analysis.attack` and :mod:`workbench.analysis.asnet`.

Examples
--------
>>> import numpy as np
>>> from workbench.analysis import AttackCurve
>>> c = AttackCurve(np.array([0.0, 1.0]), np.array([0.0, 0.6]), np.array([0.0, 0.1]),
...                 np.array([0.0, 0.4]), np.zeros((1, 2, 2)))
>>> fig = attack_figure(c)
>>> [t.name for t in fig.data], fig.data[0].y.tolist()
(['active subspace', 'random', 'gradient sign'], [0.0, 60.0])
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.subplots import make_subplots

from workbench.plots.compare import HEIGHT, TEMPLATE

#: Variance fraction below which an eigenvalue counts as zero in :func:`decay_figure`.
FLOOR = 1e-12
#: Most subplots per row of :func:`decay_figure`.
MAX_COLUMNS = 5
ATTACKS = (("success_as", "active subspace", "solid"), ("success_random", "random", "dash"),
           ("success_sign", "gradient sign", "dot"))


def _color(i: int) -> str:
    return DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]


def decay_fractions(space) -> tuple[np.ndarray, np.ndarray]:
    """``(index, λ / trace)`` of the eigenvalues of an active subspace (1-based index) that hold
    more than ``FLOOR`` of the variance, what :func:`decay_figure` plots (smaller ones are zero
    up to round-off, e.g. dead ReLU neurons, and would only stretch the log axis).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.subspace import subspace_from_gradients
    >>> sp = subspace_from_gradients(np.array([[3.0, 0.0], [0.0, 1.0]]))
    >>> [a.tolist() for a in decay_fractions(sp)]
    [[1, 2], [0.9, 0.1]]
    """
    lam = np.asarray(space.eigenvalues, dtype=np.float64)
    total = space.total_variance if space.total_variance > 0 else 1.0
    keep = lam > FLOOR * total
    return np.arange(1, len(lam) + 1)[keep], lam[keep] / total


def decay_figure(spaces: Mapping, *, title: str | None = None) -> go.Figure:
    """Eigenvalue decay of every layer side by side (log scale), the active dimension marked.

    Parameters
    ----------
    spaces : mapping
        Layer → :class:`~workbench.analysis.subspace.ActiveSubspace` (one model), or
        variant → {layer → ActiveSubspace} (several models overlaid, one colour each).

    Returns
    -------
    go.Figure
        One subplot per layer (at most ``MAX_COLUMNS`` per row) and one ``Scatter`` per
        (variant, layer): ``x`` the eigenvalue index, ``y = λ / trace(C)`` (each eigenvalue's
        fraction of the variance; fractions below ``FLOOR`` are left out). A dashed vertical
        line marks each active dimension (``ActiveSubspace.active_dim`` at its ``threshold``).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.subspace import subspace_from_gradients
    >>> sp = subspace_from_gradients(np.array([[3.0, 0.0], [0.0, 1.0]]), layer="fc",
    ...                              threshold=0.8)
    >>> fig = decay_figure({"fc": sp})
    >>> len(fig.data), fig.layout.shapes[0].x0, fig.layout.yaxis.type
    (1, 1, 'log')
    """
    from workbench.analysis.subspace import ActiveSubspace

    if spaces and all(isinstance(v, ActiveSubspace) for v in spaces.values()):
        spaces = {"": spaces}
    layers = list(dict.fromkeys(layer for per in spaces.values() for layer in per))
    cols = max(1, min(MAX_COLUMNS, len(layers)))
    rows = max(1, math.ceil(len(layers) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=layers or None,
                        shared_yaxes=True, horizontal_spacing=0.03,
                        vertical_spacing=0.12 if rows > 1 else 0.0)
    single = len(spaces) == 1
    for vi, (variant, per) in enumerate(spaces.items()):
        color = _color(vi)
        for li, layer in enumerate(layers):
            if layer not in per:
                continue
            sp = per[layer]
            row, col = li // cols + 1, li % cols + 1
            x, y = decay_fractions(sp)
            label = variant or layer
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", marker=dict(size=4, color=color),
                line=dict(color=color), name=label, legendgroup=variant,
                showlegend=bool(variant) and li == 0,
                hovertemplate=f"{label} · {layer}<br>λ%{{x}}: %{{y:.3g}} of the variance<br>"
                              f"active dim {sp.active_dim} at {sp.threshold:.0%}<extra></extra>"),
                row=row, col=col)
            fig.add_vline(x=sp.active_dim, line_dash="dash", line_color=color, row=row, col=col,
                          annotation_text=f"k={sp.active_dim}" if single else None,
                          annotation_position="top right")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text="λ / trace", col=1)
    fig.update_xaxes(title_text="index", row=rows)
    thresholds = sorted({sp.threshold for per in spaces.values() for sp in per.values()})
    note = f" (dashed: active dimension at {', '.join(f'{t:.0%}' for t in thresholds)})" \
        if thresholds else ""
    fig.update_layout(template=TEMPLATE, height=max(HEIGHT, 300 * rows + 80),
                      title=title or "Active-subspace eigenvalue decay" + note,
                      margin=dict(l=60, r=20, t=70, b=50), legend=dict(orientation="h", y=-0.15))
    return fig


def active_counts_figure(active: Mapping[str, int], channels: Mapping[str, Mapping[str, int]],
                         *, title: str | None = None) -> go.Figure:
    """Active neurons per layer next to the channel counts of each model, as grouped bars.

    Parameters
    ----------
    active : mapping of str to int
        Layer → active dimension (e.g. :func:`~workbench.prune.active.active_neuron_counts`).
    channels : mapping of str to mapping
        Model name → {layer → output channels} (e.g.
        :func:`~workbench.prune.active.channel_counts` of the dense model and of each
        structured-pruned variant).

    Returns
    -------
    go.Figure
        One ``Bar`` named ``"active neurons"`` then one per model, ``x`` the layers of
        ``active``.

    Examples
    --------
    >>> fig = active_counts_figure({"conv": 3, "fc": 10},
    ...                            {"base": {"conv": 6, "fc": 10}, "slim": {"conv": 4, "fc": 10}})
    >>> [t.name for t in fig.data], list(fig.data[2].y)
    (['active neurons', 'base', 'slim'], [4, 10])
    """
    layers = list(active)
    fig = go.Figure(go.Bar(x=layers, y=[int(active[n]) for n in layers], name="active neurons",
                           marker_color="black",
                           hovertemplate="%{x}: %{y} active neurons<extra></extra>"))
    for i, (name, counts) in enumerate(channels.items()):
        fig.add_trace(go.Bar(x=layers, y=[counts.get(n) for n in layers], name=name,
                             marker_color=_color(i),
                             hovertemplate=f"{name}<br>%{{x}}: %{{y}} channels<extra></extra>"))
    fig.update_layout(barmode="group", template=TEMPLATE, height=HEIGHT,
                      title=title or "Active neurons vs channels kept",
                      xaxis_title="layer", yaxis_title="neurons / channels",
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.2))
    return fig


def attack_figure(curves, *, title: str | None = None) -> go.Figure:
    """Universal attack success rate (%) against the perturbation's L2 norm.

    Parameters
    ----------
    curves : AttackCurve or mapping of str to AttackCurve
        One model (three traces: active subspace, random, gradient sign) or several (three
        traces each, one colour per model, the attack told apart by the line style).

    Returns
    -------
    go.Figure
        ``Scatter`` traces with ``x = norms`` and ``y = 100 * success_*``.
    """
    from workbench.analysis import AttackCurve

    named = {"": curves} if isinstance(curves, AttackCurve) else dict(curves)
    fig = go.Figure()
    for vi, (variant, c) in enumerate(named.items()):
        for ai, (attr, label, dash) in enumerate(ATTACKS):
            name = f"{variant}: {label}" if variant else label
            color = _color(ai) if not variant or len(named) == 1 else _color(vi)
            fig.add_trace(go.Scatter(
                x=c.norms, y=100 * np.asarray(getattr(c, attr)), name=name, mode="lines+markers",
                line=dict(dash=dash, color=color), legendgroup=variant or label,
                hovertemplate=f"{name}<br>‖δ‖₂ %{{x:.3g}}<br>success %{{y:.1f}}%"
                              "<extra></extra>"))
    fig.update_yaxes(range=[-2, 102])
    fig.update_layout(template=TEMPLATE, height=HEIGHT,
                      title=title or "Universal attack: success rate vs perturbation norm",
                      xaxis_title="perturbation norm ‖δ‖₂",
                      yaxis_title="samples fooled (% of correct)",
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.2))
    return fig


def perturbation_figure(perturbation, *, title: str | None = None) -> go.Figure:
    """The universal perturbation as an image (diverging colours, zero is white).

    Parameters
    ----------
    perturbation : np.ndarray shaped (C, H, W) or (H, W), or an AttackCurve
        An AttackCurve contributes its ``perturbation`` (the unit active-subspace direction).

    Returns
    -------
    go.Figure
        One ``Heatmap`` per channel, side by side, rows top to bottom as in the image.

    Examples
    --------
    >>> import numpy as np
    >>> fig = perturbation_figure(np.arange(4.0).reshape(1, 2, 2))
    >>> len(fig.data), fig.data[0].z.tolist()
    (1, [[0.0, 1.0], [2.0, 3.0]])
    """
    p = np.asarray(getattr(perturbation, "perturbation", perturbation), dtype=np.float64)
    if p.ndim == 1:
        p = p[None, None, :]
    elif p.ndim == 2:
        p = p[None]
    elif p.ndim > 3:
        p = p.reshape(-1, *p.shape[-2:])
    lim = float(np.abs(p).max()) or 1.0
    channels = len(p)
    fig = make_subplots(rows=1, cols=channels, horizontal_spacing=0.04,
                        subplot_titles=[f"channel {c}" for c in range(channels)]
                        if channels > 1 else None)
    for c in range(channels):
        fig.add_trace(go.Heatmap(z=p[c], zmin=-lim, zmax=lim, zmid=0.0, colorscale="RdBu_r",
                                 showscale=c == channels - 1, name=f"channel {c}",
                                 hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra></extra>"),
                      row=1, col=c + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c + 1 if c else ''}",
                         showticklabels=False, row=1, col=c + 1)
        fig.update_xaxes(showticklabels=False, row=1, col=c + 1)
    fig.update_layout(template=TEMPLATE, height=HEIGHT, width=None,
                      title=title or "Active-subspace perturbation (unit norm)",
                      margin=dict(l=20, r=20, t=50, b=20))
    return fig


def asnet_rows(result, metrics: Mapping | None = None, *, closest: int = 3) -> list[dict]:
    """The ASNet, the original model and the pruned variants closest to the ASNet in size.

    Parameters
    ----------
    result : ASNetResult
    metrics : mapping of str to Metrics, optional
        Variant name → metrics of other models to compare with (the original, usually the
        session's ``"base"``, is taken from ``result`` and should not be repeated). Their size
        is ``nonzero_params`` and their cost ``macs_nonzero``.
    closest : int
        Keep this many variants, the closest in parameters to the ASNet (on a log scale).

    Returns
    -------
    list of dict
        ``name``, ``kind`` (``"original"``, ``"ASNet"``, ``"variant"``), ``params``, ``macs``,
        ``accuracy``, ``params_vs_original`` and ``macs_vs_original`` (fractions) and
        ``accuracy_vs_original`` (difference), the original first, the ASNet second.
    """
    def row(name, kind, params, macs, acc):
        return {"name": name, "kind": kind, "params": int(params), "macs": int(macs),
                "accuracy": float(acc),
                "params_vs_original": params / max(result.base_params, 1),
                "macs_vs_original": macs / max(result.base_macs, 1),
                "accuracy_vs_original": float(acc) - result.base_accuracy}

    rows = [row("original", "original", result.base_params, result.base_macs,
                result.base_accuracy),
            row(f"ASNet r={result.r}", "ASNet", result.params, result.macs, result.accuracy)]
    others = [(name, m) for name, m in (metrics or {}).items()]
    others.sort(key=lambda item: abs(math.log(max(item[1].nonzero_params, 1)
                                              / max(result.params, 1))))
    rows += [row(name, "variant", m.nonzero_params, m.macs_nonzero, m.accuracy)
             for name, m in others[:max(0, int(closest))]]
    return rows


def asnet_figure(rows, *, title: str | None = None) -> go.Figure:
    """Parameters, MACs and accuracy of the rows of :func:`asnet_rows`, as three bar charts.

    Returns
    -------
    go.Figure
        Three ``Bar`` traces (parameters, MACs, accuracy in %), ``x`` the row names.

    Examples
    --------
    >>> rows = [{"name": "original", "kind": "original", "params": 100, "macs": 1000,
    ...          "accuracy": 0.9}, {"name": "ASNet", "kind": "ASNet", "params": 10,
    ...          "macs": 300, "accuracy": 0.85}]
    >>> fig = asnet_figure(rows)
    >>> len(fig.data), list(fig.data[2].y)
    (3, [90.0, 85.0])
    """
    names = [r["name"] for r in rows]
    colors = {"original": "#7f7f7f", "ASNet": "#d62728", "variant": "#1f77b4"}
    marker = dict(color=[colors.get(r.get("kind"), "#1f77b4") for r in rows])
    fig = make_subplots(rows=1, cols=3, subplot_titles=["parameters", "MACs per sample",
                                                        "test accuracy (%)"],
                        horizontal_spacing=0.08)
    for col, (key, scale, label) in enumerate((("params", 1, "parameters"),
                                               ("macs", 1, "MACs"),
                                               ("accuracy", 100, "accuracy (%)")), start=1):
        fig.add_trace(go.Bar(x=names, y=[scale * r[key] for r in rows], name=label,
                             marker=marker, showlegend=False,
                             hovertemplate=f"%{{x}}<br>{label} %{{y:,.4g}}<extra></extra>"),
                      row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=HEIGHT,
                      title=title or "ASNet vs the original and pruned variants of similar size",
                      margin=dict(l=60, r=20, t=70, b=80))
    return fig


__all__ = ["decay_figure", "decay_fractions", "active_counts_figure", "attack_figure",
           "perturbation_figure", "asnet_rows", "asnet_figure"]

"""Figures of last-layer feature geometry (the "Robustness Lottery" views, Li et al. 2024).

Angle-vs-length scatters, margin histograms, per-sample drift, sample embeddings, the model
similarity map with its minimum spanning tree, parallel coordinates of geometry vectors, a CKA
matrix and neural-collapse bars. Each function maps result objects of
:mod:`workbench.analysis.geometry` / :mod:`workbench.analysis.similarity` to a plotly figure
and computes nothing else. Every per-sample point carries its sample index as ``customdata``,
so a click on any of these figures names the same sample in every variant.

Examples
--------
>>> import numpy as np
>>> from workbench.analysis.geometry import geometry_from_features
>>> g = geometry_from_features(np.array([[1.0, 0.2], [0.1, 2.0], [1.0, 1.0]]), np.eye(2),
...                            np.zeros(2), np.array([0, 1, 0]))
>>> fig = angle_length_figure({"dense": g}, indices=[5, 6, 7])
>>> [t.name for t in fig.data], fig.data[0].customdata.tolist()
(['class 0', 'class 1'], [5, 7])
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis.similarity import GLOBAL_STATS, geometry_vector_labels
from workbench.plots.compare import HEIGHT, TEMPLATE
from workbench.plots.robustness import VARIANT_COLORS, variant_color

#: Colour of each class (cycles past ten).
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")
COLORINGS = ("class", "correct", "margin")
CORRECT_COLORS = {True: "#2ca02c", False: "#d62728"}
SELECTED = dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1.5))


def class_color(c: int) -> str:
    return CLASS_COLORS[int(c) % len(CLASS_COLORS)]


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **kw) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, title=title,
                      margin=dict(l=60, r=20, t=60, b=50), **kw)
    return fig


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _indices(indices, n: int) -> np.ndarray:
    idx = np.arange(n) if indices is None else np.asarray(indices).astype(int)
    if idx.shape != (n,):
        raise ValueError(f"indices must name {n} samples, got shape {idx.shape}")
    return idx


def _points(fig, row, col, x, y, g, idx, mask, color, first, hover, margin_range):
    """Add the points of one subplot, split into traces by ``color``."""
    labels, margin, correct = np.asarray(g.labels), np.asarray(g.margin), g.correct
    pred = np.asarray(g.predictions)
    template = "sample %{customdata}<br>" + hover + "<extra>%{fullData.name}</extra>"
    if color == "class":
        groups = [(f"class {c}", mask & (labels == c), dict(color=class_color(c)), f"class {c}")
                  for c in np.unique(labels[mask])]
    elif color == "correct":
        groups = [(name, mask & (correct == ok), dict(color=CORRECT_COLORS[ok]), name)
                  for ok, name in ((True, "correct"), (False, "misclassified"))]
    elif color == "margin":
        lo, hi = margin_range
        groups = [("margin", mask, dict(color=np.where(np.isfinite(margin), margin, 0.0)[mask],
                                        colorscale="RdBu", cmid=0.0, cmin=lo, cmax=hi,
                                        showscale=first,
                                        colorbar=dict(title="margin", len=0.8)), "margin")]
    else:
        raise ValueError(f"color must be one of {COLORINGS}, got {color!r}")
    for name, m, marker, group in groups:
        if not m.any():
            continue
        sel = np.flatnonzero(m)
        texts = [f"class {labels[i]} → {pred[i]} · margin {margin[i]:.2f}" for i in sel]
        fig.add_trace(go.Scatter(
            x=np.asarray(x)[sel], y=np.asarray(y)[sel], customdata=idx[sel], mode="markers",
            name=name, legendgroup=group, showlegend=first and color != "margin",
            marker=dict(size=6, opacity=0.75, **marker), text=texts,
            hovertemplate=template, meta="points"), row, col)


def _selected(fig, row, col, x, y, idx, selected, first):
    if selected is None:
        return
    pos = np.flatnonzero(idx == int(selected))
    if len(pos):
        p = pos[0]
        fig.add_trace(go.Scatter(x=[np.asarray(x)[p]], y=[np.asarray(y)[p]], customdata=[idx[p]],
                                 mode="markers", marker=SELECTED, name=f"sample {selected}",
                                 legendgroup="selected", showlegend=first,
                                 hovertemplate="selected sample %{customdata}<extra></extra>",
                                 meta="selected"), row, col)


def _share_axes(fig: go.Figure) -> None:
    """Every subplot on the same x and y ranges (compare variants at a glance)."""
    fig.update_xaxes(matches="x", showticklabels=True)
    fig.update_yaxes(matches="y", showticklabels=True)


def _margin_range(geometries) -> tuple[float, float]:
    m = np.concatenate([np.asarray(g.margin)[np.isfinite(g.margin)] for g in geometries])
    peak = float(np.abs(m).max()) if len(m) else 1.0
    return -peak, peak


def angle_length_figure(geometries: Mapping, *, indices=None, color: str = "class",
                        cls: int | None = None, selected: int | None = None,
                        title: str | None = None) -> go.Figure:
    """Angle to the true class direction (x, degrees) against feature length (y), one plot per
    variant (same samples, shared axes).

    Parameters
    ----------
    geometries : mapping of str to Geometry
        Variant name → geometry of the same samples, in display order.
    indices : array of int, optional
        The samples' indices (``customdata`` of every point); default ``0..n-1``.
    color : {"class", "correct", "margin"}
        Colour by true class, by correctness or by margin (diverging, 0 white).
    cls : int, optional
        Only the samples of this true class.
    selected : int, optional
        A sample index to mark with a star in every plot.

    Returns
    -------
    go.Figure
        Points traces (``meta == "points"``) per subplot, then a ``"selected"`` trace if the
        sample is shown.
    """
    names = list(geometries)
    if not names:
        raise ValueError("no geometries to plot")
    n = len(geometries[names[0]].labels)
    idx = _indices(indices, n)
    rows, cols = _grid(len(names))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.05,
                        vertical_spacing=min(0.14, 0.4 / rows))
    _share_axes(fig)
    mr = _margin_range(geometries.values())
    for k, name in enumerate(names):
        g = geometries[name]
        if len(g.labels) != n:
            raise ValueError(f"{name!r} has {len(g.labels)} samples, {names[0]!r} {n}")
        mask = np.ones(n, bool) if cls is None else np.asarray(g.labels) == cls
        r, c = k // cols + 1, k % cols + 1
        _points(fig, r, c, g.angle, g.length, g, idx, mask, color, k == 0,
                "angle %{x:.1f}° · length %{y:.2f}<br>%{text}", mr)
        if selected is not None and mask[idx == selected].any():
            _selected(fig, r, c, g.angle, g.length, idx, selected, k == 0)
    fig.update_xaxes(title_text="angle to class direction (°)", row=rows)
    fig.update_yaxes(title_text="feature length", col=1)
    what = "" if cls is None else f" (class {cls})"
    return _layout(fig, title or f"Angle vs length{what}", height=140 + 280 * rows,
                   legend=dict(orientation="h", y=-0.12))


def margin_histogram_figure(geometries: Mapping, *, bins: int = 40,
                            title: str | None = None) -> go.Figure:
    """Overlaid histograms of the margins (finite ones), one per variant; 0 marked.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.geometry import geometry_from_features
    >>> g = geometry_from_features(np.eye(2), np.eye(2), np.zeros(2), np.array([0, 0]))
    >>> list(margin_histogram_figure({"dense": g}).data[0].x) == list(g.margin)
    True
    """
    fig = go.Figure()
    for i, (name, g) in enumerate(geometries.items()):
        m = np.asarray(g.margin)
        fig.add_trace(go.Histogram(x=m[np.isfinite(m)], name=name, nbinsx=bins, opacity=0.55,
                                   marker_color=variant_color(i),
                                   hovertemplate=f"{name}<br>margin %{{x}}: %{{y}} samples"
                                                 "<extra></extra>"))
    fig.update_layout(barmode="overlay")
    fig.add_vline(x=0, line_dash="dash", line_color="gray",
                  annotation_text="decision boundary", annotation_position="top left")
    return _layout(fig, title or "Margins (negative = misclassified)", xaxis_title="margin",
                   yaxis_title="samples", legend=dict(orientation="h", y=-0.2))


def drift_figure(drifts: Mapping, *, indices=None, selected: int | None = None,
                 reference: str = "dense", title: str | None = None) -> go.Figure:
    """Per-sample change of angle (x) and length (y) from a reference to each variant, coloured
    by broken (right → wrong), fixed (wrong → right) and unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.geometry import drift, geometry_from_features
    >>> a = geometry_from_features(np.array([[1.0, 0], [0, 1.0]]), np.eye(2), np.zeros(2),
    ...                            np.array([0, 1]))
    >>> b = geometry_from_features(np.array([[1.0, 0], [2.0, 1.0]]), np.eye(2), np.zeros(2),
    ...                            np.array([0, 1]))
    >>> fig = drift_figure({"v": drift(a, b)})
    >>> [(t.name, t.customdata.tolist()) for t in fig.data]
    [('unchanged', [0]), ('broken', [1])]
    """
    names = list(drifts)
    if not names:
        raise ValueError("no drifts to plot")
    n = len(drifts[names[0]].angle)
    idx = _indices(indices, n)
    rows, cols = _grid(len(names))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{reference} → {m}"
                                                              for m in names],
                        horizontal_spacing=0.05, vertical_spacing=min(0.14, 0.4 / rows))
    _share_axes(fig)
    status = (("unchanged", "#9a9a9a"), ("broken", "#d62728"), ("fixed", "#2ca02c"))
    for k, name in enumerate(names):
        d = drifts[name]
        groups = {"broken": np.asarray(d.broken), "fixed": np.asarray(d.fixed)}
        groups["unchanged"] = ~(groups["broken"] | groups["fixed"])
        r, c = k // cols + 1, k % cols + 1
        for label, col in status:
            m = groups[label]
            if not m.any():
                continue
            fig.add_trace(go.Scatter(
                x=np.asarray(d.angle)[m], y=np.asarray(d.length)[m], customdata=idx[m],
                mode="markers", name=label, legendgroup=label, showlegend=k == 0,
                marker=dict(size=6, color=col, opacity=0.75), meta="points",
                hovertemplate="sample %{customdata}<br>Δ angle %{x:+.1f}° · Δ length "
                              "%{y:+.2f}<extra>" + label + "</extra>"), r, c)
        _selected(fig, r, c, d.angle, d.length, idx, selected, k == 0)
    fig.update_xaxes(title_text="Δ angle (°)", row=rows, zeroline=True)
    fig.update_yaxes(title_text="Δ length", col=1, zeroline=True)
    return _layout(fig, title or f"Geometry drift from {reference}", height=140 + 280 * rows,
                   legend=dict(orientation="h", y=-0.12))


def embedding_figure(embeddings: Mapping, geometries: Mapping, *, indices=None,
                     color: str = "class", selected: int | None = None,
                     title: str | None = None) -> go.Figure:
    """The samples' embedded features, one plot per variant; the same sample has the same
    ``customdata`` in each, and ``selected`` is starred in all of them.

    Parameters
    ----------
    embeddings : mapping of str to Embedding
        Variant name → 2-D embedding of its features (rows = samples).
    geometries : mapping of str to Geometry
        The geometries the embeddings came from (for labels, correctness and margins).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.geometry import embed, geometry_from_features
    >>> h = np.random.default_rng(0).normal(size=(6, 3))
    >>> g = geometry_from_features(h, np.eye(3), np.zeros(3), np.array([0, 1, 2, 0, 1, 2]))
    >>> e = embed(g, "pca")
    >>> fig = embedding_figure({"dense": e}, {"dense": g}, selected=4)
    >>> fig.data[-1].meta, bool(fig.data[-1].x[0] == e.coords[4, 0])
    ('selected', True)
    """
    names = list(embeddings)
    if not names:
        raise ValueError("no embeddings to plot")
    n = len(embeddings[names[0]].coords)
    idx = _indices(indices, n)
    rows, cols = _grid(len(names))
    method = embeddings[names[0]].method
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.04,
                        vertical_spacing=min(0.12, 0.4 / rows))
    mr = _margin_range(geometries[m] for m in names)
    for k, name in enumerate(names):
        e, g = np.asarray(embeddings[name].coords), geometries[name]
        if len(e) != n or len(g.labels) != n:
            raise ValueError(f"{name!r}: embedding and geometry must describe {n} samples")
        r, c = k // cols + 1, k % cols + 1
        _points(fig, r, c, e[:, 0], e[:, 1], g, idx, np.ones(n, bool), color, k == 0,
                "%{text}", mr)
        _selected(fig, r, c, e[:, 0], e[:, 1], idx, selected, k == 0)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, title or f"Features embedded ({method.upper()}), same samples in "
                                 "every variant", height=140 + 280 * rows,
                   legend=dict(orientation="h", y=-0.08))


# --- models -----------------------------------------------------------------------------------
def similarity_figure(similarity, *, title: str | None = None) -> go.Figure:
    """The model map: models as labelled points, edges of the minimum spanning tree as lines.

    Trace 0 draws the tree (segments separated by ``None``), trace 1 the models
    (``customdata`` = names).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.similarity import model_similarity
    >>> s = model_similarity({"a": np.zeros(3), "b": np.ones(3), "c": np.full(3, 5.0)})
    >>> fig = similarity_figure(s)
    >>> [t.name for t in fig.data], list(fig.data[1].text)
    (['minimum spanning tree', 'models'], ['a', 'b', 'c'])
    """
    xy = np.asarray(similarity.coords)
    ex, ey, labels = [], [], []
    for i, j, d in similarity.mst_edges:
        ex += [xy[i, 0], xy[j, 0], None]
        ey += [xy[i, 1], xy[j, 1], None]
        labels.append(((xy[i] + xy[j]) / 2, d))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", name="minimum spanning tree",
                             line=dict(color="#888", width=2), hoverinfo="skip"))
    names = list(similarity.names)
    fig.add_trace(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=names, customdata=names,
        textposition="top center", name="models",
        marker=dict(size=14, color=[variant_color(i) for i in range(len(names))],
                    line=dict(color="black", width=1)),
        hovertemplate="%{text}<extra></extra>"))
    for (x, y), d in labels:
        fig.add_annotation(x=x, y=y, text=f"{d:.2f}", showarrow=False, font=dict(size=10,
                                                                                  color="#666"))
    fig.update_xaxes(showticklabels=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor="x")
    return _layout(fig, title or f"Model map ({similarity.method.upper()}) + minimum spanning "
                                 "tree", showlegend=False)


def parallel_coordinates_figure(vectors: Mapping, num_classes: int, *,
                                stat: str = "margin_mean",
                                title: str | None = None) -> go.Figure:
    """Parallel coordinates of geometry vectors: one line per model over ``num_classes + 3``
    axes, the per-class ``stat`` then the global mean angle, length and margin.

    Parameters
    ----------
    vectors : mapping of str to array
        Model name → :func:`~workbench.analysis.similarity.geometry_vector`.
    stat : str
        One of :data:`~workbench.analysis.similarity.CLASS_STATS`.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.geometry import geometry_from_features
    >>> from workbench.analysis.similarity import geometry_vector
    >>> g = geometry_from_features(np.eye(2), np.eye(2), np.zeros(2), np.array([0, 1]))
    >>> fig = parallel_coordinates_figure({"a": geometry_vector(g)}, 2)
    >>> [d.label for d in fig.data[0].dimensions]
    ['0 margin', '1 margin', 'angle', 'length', 'margin']
    """
    labels = geometry_vector_labels(num_classes)
    names = list(vectors)
    mat = np.stack([np.asarray(vectors[n], dtype=float) for n in names])
    if mat.shape[1] != len(labels):
        raise ValueError(f"vectors have {mat.shape[1]} entries, a {num_classes}-class geometry "
                         f"vector has {len(labels)}")
    keys = [f"{c}/{stat}" for c in range(num_classes)] + [s for s in GLOBAL_STATS[:3]]
    if keys[0] not in labels:
        raise ValueError(f"unknown statistic {stat!r}")
    short = stat.replace("_mean", "").replace("_std", " std")
    dims = []
    for key in keys:
        col = mat[:, labels.index(key)]
        label = (f"{key.split('/')[0]} {short}" if "/" in key else key.replace("_mean", ""))
        finite = col[np.isfinite(col)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        dims.append(dict(label=label, values=col, range=[lo, hi]))
    m = len(names)
    colors = [variant_color(i) for i in range(m)]
    scale = ([[0, colors[0]], [1, colors[0]]] if m == 1 else
             [[k / (m - 1), c] for k, c in enumerate(colors)])
    fig = go.Figure(go.Parcoords(
        line=dict(color=list(range(m)), colorscale=scale, cmin=0, cmax=max(m - 1, 1),
                  showscale=True, colorbar=dict(tickvals=list(range(m)), ticktext=names,
                                                title="model", len=0.9)),
        dimensions=dims))
    fig = _layout(fig, title or f"Geometry vectors: per-class {short} and global means",
                  height=HEIGHT + 80)
    return fig.update_layout(margin=dict(l=60, r=40, t=120, b=40))


def cka_figure(names: Sequence[str], matrix, *, title: str | None = None) -> go.Figure:
    """Heatmap of a model × model CKA matrix (1 = the same representation).

    Examples
    --------
    >>> cka_figure(["a", "b"], [[1.0, 0.8], [0.8, 1.0]]).data[0].z.tolist()
    [[1.0, 0.8], [0.8, 1.0]]
    """
    names = list(names)
    fig = go.Figure(go.Heatmap(z=np.asarray(matrix, dtype=float), x=names, y=names,
                               colorscale="Viridis", zmin=0, zmax=1, texttemplate="%{z:.2f}",
                               colorbar=dict(title="CKA"),
                               hovertemplate="%{y} vs %{x}<br>CKA %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title or "Linear CKA of the penultimate features",
                   height=max(260, 140 + 40 * len(names)))


def collapse_figure(collapse: Mapping, *, title: str | None = None) -> go.Figure:
    """Bars of the neural-collapse metric NC1 per model (lower = tighter classes).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.similarity import neural_collapse
    >>> nc = neural_collapse(np.array([[-1.1], [-0.9], [0.9], [1.1]]), np.array([0, 0, 1, 1]))
    >>> list(collapse_figure({"dense": nc}).data[0].y) == [nc.nc1]
    True
    """
    names = list(collapse)
    fig = go.Figure(go.Bar(x=names, y=[float(collapse[n].nc1) for n in names],
                           marker_color=[variant_color(i) for i in range(len(names))],
                           hovertemplate="%{x}<br>NC1 %{y:.4g}<extra></extra>"))
    return _layout(fig, title or "Neural collapse NC1 = tr(Σ_W Σ_B⁺) / C", xaxis_title="model",
                   yaxis_title="NC1")


__all__ = ["angle_length_figure", "margin_histogram_figure", "drift_figure", "embedding_figure",
           "similarity_figure", "parallel_coordinates_figure", "cka_figure", "collapse_figure",
           "class_color", "CLASS_COLORS", "COLORINGS", "VARIANT_COLORS"]

"""Figures of relevance maps: a samples × variants grid of heatmaps and preservation scores.

Each function maps :class:`~workbench.relevance.Attribution` /
:class:`~workbench.relevance.Preservation` objects to a plotly figure. Maps of several input
channels are shown summed over the channels (:func:`channel_sum`); every cell keeps its own
symmetric colour range (``±max|R|``, red positive, blue negative), since the total relevance
differs from model to model. Every cell carries its sample index as ``customdata``.

Examples
--------
>>> import torch
>>> from workbench.relevance import Attribution
>>> a = Attribution(torch.randn(2, 1, 4, 4), torch.tensor([0, 1]), "lrp")
>>> fig = relevance_grid_figure({"dense": a}, indices=[7, 9])
>>> len(fig.data), bool((fig.data[1].z == a.maps[1, 0].numpy()).all())
(2, True)
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.plots.compare import HEIGHT, TEMPLATE

HEAT_SCALE = "RdBu_r"
PRESERVATION_COLORS = {"spearman": "#1f77b4", "topk_overlap": "#ff7f0e"}


def channel_sum(maps) -> np.ndarray:
    """``(n, H, W)`` maps from an Attribution, a tensor or an array shaped ``(n, C, H, W)`` or
    ``(n, H, W)`` (channels summed).

    Examples
    --------
    >>> import numpy as np
    >>> channel_sum(np.ones((2, 3, 4, 5))).shape, float(channel_sum(np.ones((1, 3, 2, 2)))[0, 0, 0])
    ((2, 4, 5), 3.0)
    """
    m = getattr(maps, "maps", maps)
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 4:
        return m.sum(1)
    if m.ndim == 3:
        return m
    raise ValueError(f"relevance maps must be (n, C, H, W) or (n, H, W), got shape {m.shape}")


def _image(img) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return img[0] if img.ndim == 3 and img.shape[0] != 3 else img


def relevance_grid_figure(attributions: Mapping, *, indices=None, images=None, labels=None,
                          predictions: Mapping | None = None, selected: int | None = None,
                          transpose: bool = False, cell: int = 90,
                          title: str | None = None) -> go.Figure:
    """Heatmaps of relevance, one row per variant and one column per sample.

    Parameters
    ----------
    attributions : mapping of str to Attribution (or map tensor)
        Variant name → maps of the same samples, in display order.
    indices : sequence of int, optional
        The samples' indices (column titles and ``customdata``); default ``0..n-1``.
    images : array ``(n, C, H, W)``, optional
        The inputs, drawn as a first row ``input``.
    labels : sequence of int, optional
        True classes (in the column titles).
    predictions : mapping of str to sequence of int, optional
        Variant name → predicted class per sample (on hover).
    selected : int, optional
        A sample index whose column title is starred.
    transpose : bool
        Samples as rows and variants as columns instead (one sample reads as a strip).

    Returns
    -------
    go.Figure
        With ``images``, trace ``s`` (0 ≤ s < n) is image ``s``; then, variant after variant,
        one heatmap per sample whose ``z`` is :func:`channel_sum` of its map.
    """
    names = list(attributions)
    if not names:
        raise ValueError("no relevance maps to plot")
    maps = {n: channel_sum(attributions[n]) for n in names}
    n = len(maps[names[0]])
    for name in names:
        if maps[name].shape != maps[names[0]].shape:
            raise ValueError(f"{name!r} has maps shaped {maps[name].shape}, "
                             f"{names[0]!r} {maps[names[0]].shape}")
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    rows_named = (["input"] if images is not None else []) + names
    samples = [f"{'★ ' if i == selected else ''}#{i}"
               + ("" if labels is None else f" ({int(labels[k])})") for k, i in enumerate(idx)]
    nr, nc = (len(rows_named), n) if not transpose else (n, len(rows_named))
    col_titles = samples if not transpose else rows_named
    fig = make_subplots(rows=nr, cols=nc, column_titles=col_titles,
                        row_titles=rows_named if not transpose else samples,
                        horizontal_spacing=min(0.01, 1 / max(nc - 1, 1)),
                        vertical_spacing=min(0.02, 1 / max(nr - 1, 1)))

    def at(row_name_pos, sample_pos):
        return (row_name_pos + 1, sample_pos + 1) if not transpose else \
            (sample_pos + 1, row_name_pos + 1)

    if images is not None:
        imgs = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
        if len(imgs) != n:
            raise ValueError(f"{len(imgs)} images for {n} samples")
        for s in range(n):
            img = _image(imgs[s])
            trace = (go.Image(z=255 * np.moveaxis(img, 0, -1)) if img.ndim == 3 else
                     go.Heatmap(z=img, colorscale="gray", zmin=0, zmax=1, showscale=False))
            trace.update(customdata=np.full(img.shape[-2:], idx[s]), name="input",
                         hovertemplate="sample %{customdata}<extra>input</extra>")
            fig.add_trace(trace, *at(0, s))
    offset = 1 if images is not None else 0
    for v, name in enumerate(names):
        for s in range(n):
            z = maps[name][s]
            peak = float(np.abs(z).max()) or 1.0
            pred = ("" if predictions is None or name not in predictions
                    else f" · predicts {int(predictions[name][s])}")
            fig.add_trace(go.Heatmap(
                z=z, colorscale=HEAT_SCALE, zmid=0, zmin=-peak, zmax=peak, showscale=False,
                customdata=np.full(z.shape, idx[s]), name=name,
                hovertemplate=f"sample %{{customdata}} · {name}{pred}<br>relevance %{{z:.3g}}"
                              "<extra></extra>"), *at(v + offset, s))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_annotations(font_size=11)
    return fig.update_layout(template=TEMPLATE, title=title or "Relevance (red: for the class, "
                             "blue: against)", height=90 + cell * nr,
                             width=None if nc > 6 else 120 + cell * nc,
                             margin=dict(l=30, r=30, t=80, b=20))


def preservation_figure(preservations: Mapping, *, reference: str = "dense",
                        title: str | None = None) -> go.Figure:
    """Mean Spearman correlation and top-k overlap of each variant's maps with the reference's
    (error bars: standard deviation over samples).

    Examples
    --------
    >>> import torch
    >>> from workbench.relevance import relevance_preservation
    >>> a = torch.arange(8.0).reshape(2, 4)
    >>> fig = preservation_figure({"same": relevance_preservation(a, a, k=2)})
    >>> [t.name for t in fig.data], list(fig.data[0].y)
    (['Spearman', 'top-k overlap'], [1.0])
    """
    names = list(preservations)
    fig = go.Figure()
    k = {preservations[n].k for n in names}
    for key, label in (("spearman", "Spearman"), ("topk_overlap", "top-k overlap")):
        means, stds = [], []
        for n in names:
            vals = np.asarray(getattr(preservations[n], key), dtype=float)
            vals = vals[np.isfinite(vals)]
            means.append(float(vals.mean()) if len(vals) else math.nan)
            stds.append(float(vals.std()) if len(vals) else 0.0)
        fig.add_trace(go.Bar(x=names, y=means, name=label, marker_color=PRESERVATION_COLORS[key],
                             error_y=dict(type="data", array=stds, visible=True),
                             hovertemplate=f"%{{x}}<br>{label} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[min(0.0, *[min(t.y) for t in fig.data if len(t.y)]) - 0.02, 1.05])
    ks = ", ".join(map(str, sorted(k)))
    fig.update_layout(template=TEMPLATE, height=HEIGHT, title=title or
                      f"How well each variant preserves the relevance of {reference} "
                      f"(top-k: k = {ks})", xaxis_title="variant", yaxis_title="agreement",
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.2))
    return fig


__all__ = ["relevance_grid_figure", "preservation_figure", "channel_sum"]

"""Figures of robustness to corruptions: the evaluation table, severity curves, galleries, the
layer × corruption sensitivity matrix, one sample's outcomes, and the table of flipped samples.

Each function maps result objects of :mod:`workbench.analysis.robustness` to a plotly figure (or
a DataFrame) and computes nothing else: the plotted arrays are the results' own, in their units
(error rates as fractions, shown as percentages by the text and hover formats).

Examples
--------
>>> import workbench
>>> from workbench.analysis import corruption_errors
>>> s = workbench.Session.default(progress=False)
>>> r = corruption_errors(s.base, corruptions=["rotate", "fog"], severities=(1, 3),
...                       progress=False)
>>> fig = evaluation_table_figure({"base": r})
>>> bool((fig.data[0].z == r.mean_error[None, :]).all()), list(fig.data[0].x)
(True, ['rotate', 'fog'])
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis.robustness import mce, sample_flags
from workbench.plots.compare import HEIGHT, TEMPLATE

#: One colour per variant, in order (plotly's default sequence).
VARIANT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")
ERROR_SCALE = "Reds"


def variant_color(i: int) -> str:
    """The colour of the ``i``-th variant (cycles)."""
    return VARIANT_COLORS[i % len(VARIANT_COLORS)]


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **kw) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, title=title,
                      margin=dict(l=60, r=20, t=50, b=50), **kw)
    return fig


def _check(results: Mapping) -> list[str]:
    if not results:
        raise ValueError("no results to plot: pass {variant name: CorruptionResult}")
    names = list(results)
    first = results[names[0]]
    for n in names[1:]:
        r = results[n]
        if r.corruptions != first.corruptions or r.severities != first.severities:
            raise ValueError(f"{n!r} covers other corruptions or severities than {names[0]!r}")
    return names


# --- evaluation table --------------------------------------------------------------------------
def evaluation_values(results: Mapping, baseline=None, severity: int | None = None) -> dict:
    """The numbers :func:`evaluation_table_figure` shows (read from the results, plus :func:`mce`).

    Returns
    -------
    dict
        ``names``, ``corruptions``, ``error`` (variants × corruptions: the mean over severities,
        or the column of ``severity``), ``clean`` (variants,), ``mce`` and ``relative_mce``
        (variants,; ``nan`` without a baseline).
    """
    names = _check(results)
    first = results[names[0]]
    if severity is None:
        error = np.stack([np.asarray(results[n].mean_error) for n in names])
    else:
        if severity not in first.severities:
            raise ValueError(f"severity {severity} was not evaluated (have {first.severities})")
        j = first.severities.index(severity)
        error = np.stack([np.asarray(results[n].error)[:, j] for n in names])
    clean = np.array([results[n].clean_error for n in names])
    if baseline is not None:
        base = results[baseline] if isinstance(baseline, str) else baseline
        scores = [mce(results[n], base) for n in names]
        m = np.array([s["mce"] for s in scores])
        rel = np.array([s["relative_mce"] for s in scores])
    else:
        m = rel = np.full(len(names), np.nan)
    return {"names": names, "corruptions": list(first.corruptions), "error": error,
            "clean": clean, "mce": m, "relative_mce": rel}


def evaluation_table_figure(results: Mapping, baseline=None, *, severity: int | None = None,
                            title: str | None = None) -> go.Figure:
    """Variants × corruptions error heatmap, with clean error, mCE and relative mCE columns.

    Parameters
    ----------
    results : mapping of str to CorruptionResult
        Variant name → its errors (same corruptions and severities), in display order.
    baseline : str or CorruptionResult, optional
        The reference of mCE (a key of ``results`` or a result); without it the mCE columns
        are empty.
    severity : int, optional
        Show the errors at this severity instead of the mean over severities.

    Returns
    -------
    go.Figure
        Trace 0 is the error heatmap (``z[i] = results[names[i]].mean_error``); trace 1 the
        summary heatmap with columns clean error, mCE, relative mCE.
    """
    v = evaluation_values(results, baseline, severity)
    names = v["names"]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.78, 0.22],
                        horizontal_spacing=0.02)
    what = "mean over severities" if severity is None else f"severity {severity}"
    fig.add_trace(go.Heatmap(
        z=v["error"], x=v["corruptions"], y=names, colorscale=ERROR_SCALE, zmin=0, zmax=1,
        texttemplate="%{z:.0%}", colorbar=dict(title="error", x=1.02, tickformat=".0%"),
        hovertemplate="%{y} · %{x}<br>error %{z:.1%} (" + what + ")<extra></extra>",
        name="error"), 1, 1)
    summary = np.stack([v["clean"], v["mce"], v["relative_mce"]], 1)
    text = [[f"{100 * row[0]:.1f}%"] + ["–" if not math.isfinite(x) else f"{100 * x:.0f}%"
                                        for x in row[1:]] for row in summary]
    fig.add_trace(go.Heatmap(
        z=summary[:, 1:].tolist(), x=["mCE", "rel. mCE"], y=names, colorscale="RdBu_r",
        zmid=1.0, showscale=False, text=[t[1:] for t in text], texttemplate="%{text}",
        hovertemplate="%{y}<br>%{x} %{z:.1%} (100% = baseline)<extra></extra>",
        name="mCE"), 1, 2)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    base = baseline if isinstance(baseline, str) else ("the baseline" if baseline else None)
    clean = ", ".join(f"{n} {100 * c:.1f}%" for n, c in zip(names, v["clean"]))
    return _layout(fig, title or (f"Error per corruption ({what}); mCE vs {base}" if base
                                  else f"Error per corruption ({what})"),
                   height=max(220, 110 + 38 * len(names)),
                   annotations=[dict(text=f"clean error: {clean}", x=0, y=-0.12,
                                     xref="paper", yref="paper", showarrow=False,
                                     xanchor="left", font=dict(size=11))])


# --- severity curves ---------------------------------------------------------------------------
def severity_curves_figure(results: Mapping, corruptions=None, *, cols: int = 5,
                           title: str | None = None) -> go.Figure:
    """Error against severity, one small plot per corruption, one line per variant.

    Trace ``k * len(results) + i`` is corruption ``corruptions[k]`` of variant ``i``: its ``y``
    is that row of :attr:`CorruptionResult.error`. The clean error is the point at severity 0.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.robustness import CorruptionResult
    >>> r = CorruptionResult(("a", "b"), (1, 2), np.array([[0.1, 0.2], [0.3, 0.5]]), 0.05,
    ...                      np.zeros((2, 2, 1), np.int16), np.zeros(1), np.zeros(1, np.int16))
    >>> fig = severity_curves_figure({"dense": r})
    >>> [t.name for t in fig.data], list(fig.data[1].y)
    (['dense', 'dense'], [0.05, 0.3, 0.5])
    """
    names = _check(results)
    first = results[names[0]]
    chosen = list(first.corruptions) if corruptions is None else list(corruptions)
    missing = [c for c in chosen if c not in first.corruptions]
    if missing:
        raise ValueError(f"corruptions {missing} were not evaluated")
    cols = max(1, min(cols, len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=chosen, shared_yaxes=True,
                        vertical_spacing=min(0.12, 0.5 / rows), horizontal_spacing=0.03)
    sev = [0, *first.severities]
    for k, c in enumerate(chosen):
        i_c = first.corruptions.index(c)
        for i, n in enumerate(names):
            r = results[n]
            fig.add_trace(go.Scatter(
                x=sev, y=[r.clean_error, *np.asarray(r.error)[i_c].tolist()], name=n,
                legendgroup=n, showlegend=k == 0, mode="lines+markers",
                line=dict(color=variant_color(i)), marker=dict(size=5),
                hovertemplate=f"{n} · {c}<br>severity %{{x}}: error %{{y:.1%}}<extra></extra>"),
                k // cols + 1, k % cols + 1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(tickvals=sev, ticktext=["clean", *map(str, first.severities)])
    fig.update_annotations(font_size=11)
    return _layout(fig, title or "Error vs severity", height=170 + 170 * rows,
                   legend=dict(orientation="h", y=-0.08))


# --- galleries ---------------------------------------------------------------------------------
def _gray(img: np.ndarray) -> np.ndarray:
    return img[0] if img.shape[0] != 3 else img


def gallery_mosaic(gallery, sample: int = 0, pad: int = 1) -> np.ndarray:
    """One image of ``gallery`` laid out as tiles: rows = corruptions, columns = clean then the
    severities, ``pad`` pixels of NaN between tiles. ``(H', W')`` for one channel, ``(H', W',
    3)`` for RGB."""
    imgs, clean = np.asarray(gallery.images), np.asarray(gallery.clean)
    c, s = imgs.shape[:2]
    ch, h, w = clean.shape[1:]
    rgb = ch == 3
    out = np.full((c * (h + pad) - pad, (s + 1) * (w + pad) - pad) + ((3,) if rgb else ()),
                  np.nan if not rgb else 1.0, dtype=np.float64)
    for i in range(c):
        for j in range(s + 1):
            tile = clean[sample] if j == 0 else imgs[i, j - 1, sample]
            tile = np.moveaxis(tile, 0, -1) if rgb else tile[0]
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = tile
    return out


def gallery_figure(gallery, sample: int = 0, *, predictions: Mapping | None = None,
                   label: int | None = None, title: str | None = None) -> go.Figure:
    """One image under every corruption (rows) and severity (columns ``s1``…; the first is
    clean).

    Parameters
    ----------
    gallery : Gallery
    sample : int
        Which of the gallery's images.
    predictions : mapping, optional
        Variant name → ``(clean prediction, (corruptions, severities) predictions)`` of this
        image, shown on hover (✓ / ✗ against ``label``).
    label : int, optional
        The image's true class.

    Examples
    --------
    >>> import torch
    >>> from workbench.analysis import gallery
    >>> g = gallery(torch.rand(2, 1, 8, 8), ["rotate", "fog"], severities=(1, 5))
    >>> fig = gallery_figure(g, 1)
    >>> fig.data[0].z.shape  # 2 rows of 8 px + 1 px gap, 3 columns
    (17, 26)
    """
    mosaic = gallery_mosaic(gallery, sample)
    h, w = np.asarray(gallery.clean).shape[2:]
    cols = ["clean", *[f"s{s}" for s in gallery.severities]]
    hover = None
    if predictions:
        hover = np.full(mosaic.shape[:2], "", dtype=object)
        for i in range(len(gallery.corruptions)):
            for j in range(len(cols)):
                parts = []
                for name, (clean_pred, preds) in predictions.items():
                    p = int(clean_pred if j == 0 else np.asarray(preds)[i, j - 1])
                    mark = "" if label is None else (" ✓" if p == label else " ✗")
                    parts.append(f"{name}: {p}{mark}")
                hover[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = \
                    "<br>".join(parts)
    template = ("%{customdata}<extra></extra>" if hover is not None
                else "pixel %{z:.2f}<extra></extra>")
    if mosaic.ndim == 3:
        trace = go.Image(z=255 * mosaic, customdata=hover, hovertemplate=template)
    else:
        trace = go.Heatmap(z=mosaic, colorscale="gray", zmin=0, zmax=1, showscale=False,
                           customdata=hover, hovertemplate=template)
    fig = go.Figure(trace)
    fig.update_xaxes(tickvals=[j * (w + 1) + (w - 1) / 2 for j in range(len(cols))],
                     ticktext=cols, side="top", showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=[i * (h + 1) + (h - 1) / 2 for i in range(len(gallery.corruptions))],
                     ticktext=list(gallery.corruptions), autorange="reversed", showgrid=False,
                     zeroline=False, scaleanchor="x")
    suffix = "" if label is None else f" (class {label})"
    tile = 56  # CSS pixels per image
    return _layout(fig, title or f"Corrupted versions{suffix}",
                   height=130 + tile * len(gallery.corruptions), width=200 + tile * len(cols))


# --- layer × corruption sensitivity ------------------------------------------------------------
def sensitivity_figure(matrix, *, title: str | None = None) -> go.Figure:
    """Heatmap of :attr:`SensitivityMatrix.delta_error` (layers × corruptions), 0 in white.

    A last column ``clean`` holds :attr:`SensitivityMatrix.delta_clean_error` as a second trace.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.robustness import SensitivityMatrix
    >>> m = SensitivityMatrix(("conv1", "fc"), ("fog",), np.array([[0.1], [-0.02]]),
    ...                       np.zeros((2, 1)), np.zeros(1), np.array([0.05, 0.0]))
    >>> fig = sensitivity_figure(m)
    >>> fig.data[0].z.tolist(), fig.data[1].z.ravel().tolist()
    ([[0.1], [-0.02]], [0.05, 0.0])
    """
    d = np.asarray(matrix.delta_error)
    peak = float(np.nanmax(np.abs(d))) if d.size else 0.0
    peak = max(peak, float(np.nanmax(np.abs(matrix.delta_clean_error)))
               if len(matrix.layers) else 0.0, 1e-6)
    layers = list(matrix.layers)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.88, 0.12],
                        horizontal_spacing=0.02)
    common = dict(colorscale="RdBu_r", zmid=0, zmin=-peak, zmax=peak, texttemplate="%{z:+.0%}")
    fig.add_trace(go.Heatmap(z=d, x=list(matrix.corruptions), y=layers, name="Δ error",
                             colorbar=dict(title="Δ error", tickformat="+.0%"),
                             hovertemplate="compressing %{y}<br>%{x}: error %{z:+.1%}"
                                           "<extra></extra>", **common), 1, 1)
    fig.add_trace(go.Heatmap(z=np.asarray(matrix.delta_clean_error)[:, None], x=["clean"],
                             y=layers, showscale=False, name="Δ clean error",
                             hovertemplate="compressing %{y}<br>clean: error %{z:+.1%}"
                                           "<extra></extra>", **common), 1, 2)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    return _layout(fig, title or f"Error increase when one layer is compressed "
                                 f"({matrix.transform}, severity {matrix.severity})",
                   height=max(240, 130 + 36 * len(layers)))


# --- one sample --------------------------------------------------------------------------------
def outcomes_figure(flags: Mapping, position, *, title: str | None = None) -> go.Figure:
    """Which corruptions flip one sample, per variant: the lowest flipping severity (0 = none).

    Parameters
    ----------
    flags : mapping of str to SampleFlags
        Variant name → :func:`~workbench.analysis.robustness.sample_flags` of its result.
    position : int or mapping of str to int
        The sample's position in those results (per variant if they cover different samples).

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.robustness import CorruptionResult, sample_flags
    >>> preds = np.array([[[0, 1], [1, 1]]], dtype=np.int16)
    >>> r = CorruptionResult(("a",), (1, 3), np.zeros((1, 2)), 0.0, preds, np.array([0, 1]),
    ...                      np.array([0, 1], dtype=np.int16))
    >>> outcomes_figure({"dense": sample_flags(r)}, 0).data[0].z.tolist()
    [[3]]
    """
    names = list(flags)
    if not names:
        raise ValueError("no flags to plot")
    first = flags[names[0]]
    pos = {n: int(position[n] if isinstance(position, Mapping) else position) for n in names}
    if any(flags[n].corruptions != first.corruptions for n in names):
        raise ValueError("the flags cover different corruptions")
    z = np.stack([np.asarray(flags[n].first_flip)[:, pos[n]] for n in names])
    clean = [bool(np.asarray(flags[n].clean_correct)[pos[n]]) for n in names]
    text = [["✗ clean" if not ok else ("" if v == 0 else f"s{v}") for v in row]
            for row, ok in zip(z.tolist(), clean)]
    top = max(first.severities)
    edge = 0.5 / top  # 0 (never flipped) is grey; severity 1 (most fragile) darkest
    fig = go.Figure(go.Heatmap(
        z=z, x=list(first.corruptions), y=names, zmin=0, zmax=top, text=text,
        texttemplate="%{text}",
        colorscale=[[0, "#f2f2f2"], [edge, "#f2f2f2"], [edge, "#a63603"], [1, "#fdd0a2"]],
        colorbar=dict(title="flips at", tickvals=[0, *first.severities],
                      ticktext=["never", *map(str, first.severities)]),
        hovertemplate="%{y} · %{x}<br>lowest flipping severity %{z} (0 = none)<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    return _layout(fig, title or "Lowest severity that flips the sample",
                   height=max(200, 120 + 36 * len(names)))


def flips_table(results: Mapping, indices=None, *, reference: str | None = None,
                limit: int = 200) -> pd.DataFrame:
    """The samples the corruptions flip (right when clean, wrong when corrupted), most first.

    Columns: ``sample`` (the sample's index, from ``indices``), ``label``, then per variant the
    number of (corruption, severity) cells that flip it, and, with a ``reference``, per other
    variant ``broken vs <reference>``: cells the reference gets right and the variant wrong.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.robustness import CorruptionResult
    >>> preds = np.array([[[0, 1, 1], [1, 1, 1]]], dtype=np.int16)
    >>> r = CorruptionResult(("a",), (1, 3), np.zeros((1, 2)), 0.0, preds,
    ...                      np.array([0, 1, 0]), np.array([0, 1, 0], dtype=np.int16))
    >>> flips_table({"dense": r}, indices=[10, 11, 12]).to_dict("list")
    {'sample': [12, 10], 'label': [0, 0], 'dense': [2, 1]}
    """
    names = _check(results)
    first = results[names[0]]
    labels = np.asarray(first.labels)
    idx = np.arange(len(labels)) if indices is None else np.asarray(indices)
    table = pd.DataFrame({"sample": idx.astype(int), "label": labels.astype(int)})
    for n in names:
        table[n] = np.asarray(sample_flags(results[n]).flip_count).astype(int)
    if reference is not None and reference in results:
        ref_ok = np.asarray(results[reference].predictions) == labels
        for n in names:
            if n != reference:
                ok = np.asarray(results[n].predictions) == labels
                table[f"broken vs {reference}"
                      if len(names) == 2 else f"{n} broken vs {reference}"] = \
                    (ref_ok & ~ok).sum(axis=(0, 1)).astype(int)
    counts = table.drop(columns=["sample", "label"]).to_numpy()
    keep = counts.sum(1) > 0
    order = np.argsort(-counts.sum(1)[keep], kind="stable")
    return table[keep].iloc[order].head(limit).reset_index(drop=True)


__all__ = ["evaluation_values", "evaluation_table_figure", "severity_curves_figure",
           "gallery_mosaic", "gallery_figure", "sensitivity_figure", "outcomes_figure",
           "flips_table", "variant_color", "VARIANT_COLORS"]

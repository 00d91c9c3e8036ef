"""SampleGrid: samples × variants, each cell an image with its prediction and margin.

The front end is ``widgets/sample_grid.js``; :class:`SampleGrid` runs it in JupyterLab
(anywidget) and :class:`~workbench.widgets.panel.SampleGridPanel` in Panel. Columns are samples,
rows are variants. Hovering highlights a sample's column; clicking selects it and ``selected``
(the column index, -1 for none) is synced back to Python, so other views can follow it; setting
``selected`` in Python highlights the column in the browser. Fields:

=================  ==========================================================================
``images``         the N samples, channels first (N×C×H×W), float32 in [0, 1] or uint8
``image_shape``    ``[C, H, W]`` (C = 1 grayscale, 3 RGB; otherwise channel 0 is drawn)
``image_dtype``    ``"float32"`` or ``"uint8"``
``heatmaps``       relevance overlay, float32, V×N×H×W (per cell) or N×H×W (per sample) or
                   empty; positive red, negative blue
``show_heatmap``   draw the overlay
``variants``       row names (V)
``indices``        the samples' indices in the dataset split (column headers)
``labels``         true class per sample, float32 (N), or empty
``class_names``    class names (optional)
``predictions``    predicted class per cell, float32, V×N (variant-major)
``margins``        margin per cell, float32, V×N
``selected``       selected column, -1 for none (synced both ways)
``cell_size``      drawn image size in CSS pixels
=================  ==========================================================================
"""

from __future__ import annotations

import anywidget
import numpy as np
import torch
import traitlets

from workbench.errors import DataError, ParameterError
from workbench.evaluate import predict_logits
from workbench.widgets.assets import asset
from workbench.widgets.buffers import from_bytes, to_bytes

DTYPES = {"float32": "<f4", "uint8": "u1"}
BINARY = ("heatmaps", "labels", "predictions", "margins")


def top2_margin(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and margin (top-1 minus top-2 logit) of each row of ``logits``.

    A margin in logit space is cheap and model-agnostic; a margin measured in feature space
    (distance to the decision boundary) can replace it without changing the widget.

    Examples
    --------
    >>> pred, margin = top2_margin(torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.0, -1.0]]))
    >>> pred.tolist(), margin.tolist()
    ([1, 0], [2.0, 0.0])
    """
    top = torch.topk(logits.float(), 2, dim=1)
    return top.indices[:, 0].numpy(), (top.values[:, 0] - top.values[:, 1]).numpy()


def sample_grid_data(session, variants=None, n: int = 12, *, indices=None, split: str = "test",
                     heatmaps=None) -> dict:
    """The fields of a sample grid for ``session`` (pure; no widget).

    Parameters
    ----------
    session : workbench.Session
    variants : list of str, optional
        Rows (default: every variant of the session, base first).
    n : int
        Number of samples when ``indices`` is not given: the first ``n`` of the split.
    indices : sequence of int, optional
        Which samples of the split to show.
    split : {"test", "val", "train"}
    heatmaps : array, optional
        Relevance per cell (V×N×H×W) or per sample (N×H×W).

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> d = sample_grid_data(s, ["base"], n=3)
    >>> d["image_shape"], len(d["images"]) // 4, from_bytes(d["predictions"]).shape
    ([1, 8, 8], 192, (3,))
    """
    if split not in ("test", "val", "train"):
        raise ParameterError(f"split must be 'test', 'val' or 'train', got {split!r}")
    data = session.data
    x_all, y_all = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if x_all.ndim != 4:
        raise DataError(f"a sample grid shows images shaped (C, H, W); {data.name!r} has inputs "
                        f"shaped {tuple(x_all.shape[1:])}")
    idx = list(range(min(n, len(x_all)))) if indices is None else [int(i) for i in indices]
    if not idx or min(idx) < 0 or max(idx) >= len(x_all):
        raise ParameterError(f"sample indices must lie in 0..{len(x_all) - 1}, got {idx[:5]}…")
    names = list(session.variants) if variants is None else list(variants)
    x = x_all[idx]
    preds, margins = [], []
    for name in names:
        p, m = top2_margin(predict_logits(session[name].model, x))
        preds.append(p)
        margins.append(m)
    return {
        "images": to_bytes(x.clamp(0, 1)), "image_shape": list(x.shape[1:]),
        "image_dtype": "float32", "heatmaps": to_bytes(heatmaps), "variants": names,
        "indices": idx, "labels": to_bytes(y_all[idx]), "class_names": list(data.classes),
        "predictions": to_bytes(np.stack(preds)), "margins": to_bytes(np.stack(margins)),
        "selected": -1,
    }


def encode_arrays(kwargs: dict) -> dict:
    """``kwargs`` with array-valued buffers turned into bytes (images keep uint8 if given so)."""
    out = {k: (to_bytes(v) if k in BINARY else v) for k, v in kwargs.items()}
    if "images" in out and not isinstance(out["images"], (bytes, bytearray, memoryview)):
        images = out["images"]
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        images = np.asarray(images)
        out["image_dtype"] = "uint8" if images.dtype == np.uint8 else "float32"
        out.setdefault("image_shape", list(images.shape[1:]))
        out["images"] = to_bytes(images, DTYPES[out["image_dtype"]])
    return out


class SampleGridMixin:
    """What both the anywidget and the Panel sample grid offer on top of their fields."""

    @classmethod
    def from_session(cls, session, variants=None, n: int = 12, **kwargs):
        """A grid of ``n`` samples × ``variants``; see :func:`sample_grid_data` for ``indices``,
        ``split`` and ``heatmaps``; the rest go to the constructor."""
        data_keys = ("indices", "split", "heatmaps")
        data = sample_grid_data(session, variants, n, **{k: kwargs.pop(k) for k in data_keys
                                                         if k in kwargs})
        return cls(**{**data, **kwargs})

    @property
    def sample_count(self) -> int:
        """Number of samples (columns)."""
        size = int(np.prod(self.image_shape)) * (4 if self.image_dtype == "float32" else 1)
        return len(self.images) // size if size else 0

    def array(self, name: str) -> np.ndarray:
        """A buffer decoded: ``images`` as N×C×H×W, ``predictions``/``margins`` as V×N, the
        rest flat."""
        if name == "images":
            return from_bytes(self.images, DTYPES[self.image_dtype],
                              (self.sample_count, *self.image_shape))
        if name in ("predictions", "margins"):
            return from_bytes(getattr(self, name), shape=(len(self.variants), -1))
        return from_bytes(getattr(self, name))

    @property
    def selected_index(self) -> int | None:
        """The selected sample's index in the dataset split, or ``None``."""
        if not 0 <= self.selected < len(self.indices):
            return None
        return self.indices[self.selected]


class SampleGrid(SampleGridMixin, anywidget.AnyWidget):
    """Linked samples × variants grid for JupyterLab.

    Examples
    --------
    >>> import numpy as np
    >>> g = SampleGrid(images=np.zeros((2, 1, 4, 4), np.uint8), variants=["base"],
    ...                predictions=[[3, 1]], margins=[[0.5, 2.0]])
    >>> g.image_shape, g.image_dtype, g.sample_count, g.array("margins").tolist()
    ([1, 4, 4], 'uint8', 2, [[0.5, 2.0]])
    """

    _esm = asset("sample_grid.js")
    _css = asset("sample_grid.css")

    images = traitlets.Bytes(b"", help="N×C×H×W images, channels first").tag(sync=True)
    image_shape = traitlets.List(traitlets.Int(), [1, 1, 1], help="[C, H, W]").tag(sync=True)
    image_dtype = traitlets.Enum(tuple(DTYPES), "float32",
                                 help="element type of images").tag(sync=True)
    heatmaps = traitlets.Bytes(b"", help="float32 relevance, V×N×H×W or N×H×W").tag(sync=True)
    show_heatmap = traitlets.Bool(True, help="draw the heatmap overlay").tag(sync=True)
    variants = traitlets.List(traitlets.Unicode(), help="row names").tag(sync=True)
    indices = traitlets.List(traitlets.Int(), help="dataset index per column").tag(sync=True)
    labels = traitlets.Bytes(b"", help="float32 true class per sample").tag(sync=True)
    class_names = traitlets.List(traitlets.Unicode(), help="class names").tag(sync=True)
    predictions = traitlets.Bytes(b"", help="float32 predicted class, V×N").tag(sync=True)
    margins = traitlets.Bytes(b"", help="float32 margin, V×N").tag(sync=True)
    selected = traitlets.Int(-1, help="selected column, -1 for none").tag(sync=True)
    cell_size = traitlets.Int(56, help="image size in CSS pixels").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**encode_arrays(kwargs))

    @traitlets.validate("selected")
    def _valid_selected(self, proposal):
        value = int(proposal["value"])
        return value if 0 <= value < max(self.sample_count, len(self.indices)) else -1

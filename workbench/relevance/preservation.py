"""Does compression preserve what the model looks at? Rank agreement of two attributions.

:func:`relevance_preservation` compares the maps of the dense model with those of a variant,
sample by sample: the Spearman rank correlation of all map entries, and the overlap of their
``k`` most relevant entries (``|top_k(a) ∩ top_k(b)| / k``). Both are 1 for identical maps.
Explain the same ``target`` in both (pass it explicitly: a compressed model may predict another
class); ``targets_match`` flags samples where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.errors import ParameterError
from workbench.relevance.attribution import Attribution


@dataclass(frozen=True, eq=False)
class Preservation:
    """Per-sample agreement of two attribution batches.

    Attributes
    ----------
    spearman : np.ndarray
        Rank correlation per sample (NaN where a map is constant).
    topk_overlap : np.ndarray
        Fraction of the ``k`` top entries shared, per sample.
    k : int
        Entries per map counted as "top".
    targets_match : np.ndarray
        True where both attributions explain the same output.
    """

    spearman: np.ndarray
    topk_overlap: np.ndarray
    k: int
    targets_match: np.ndarray

    @property
    def mean_spearman(self) -> float:
        """Mean rank correlation over the samples with a defined value (NaN if none)."""
        ok = ~np.isnan(self.spearman)
        return float(self.spearman[ok].mean()) if ok.any() else float("nan")

    @property
    def mean_topk_overlap(self) -> float:
        return float(self.topk_overlap.mean())

    @property
    def mean(self) -> dict:
        """``{"spearman": …, "topk_overlap": …}`` averaged over samples."""
        return {"spearman": self.mean_spearman, "topk_overlap": self.mean_topk_overlap}


def _maps(a) -> torch.Tensor:
    m = a.maps if isinstance(a, Attribution) else a
    if not isinstance(m, torch.Tensor) or m.ndim < 2:
        raise ParameterError("pass two Attributions (or (n, ...) map tensors)")
    return m.detach().flatten(1).double()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats takes a second to import: only when used

    ra, rb = rankdata(a), rankdata(b)
    if np.array_equal(ra, rb):
        return 1.0
    return float(np.clip(np.corrcoef(ra, rb)[0, 1], -1.0, 1.0))


def relevance_preservation(attr_a, attr_b, k=0.1, absolute: bool = False) -> Preservation:
    """Rank correlation and top-``k`` overlap between two attribution batches.

    Parameters
    ----------
    attr_a, attr_b : Attribution or torch.Tensor
        Maps of the same inputs (same shape), e.g. of the dense model and of a variant.
    k : int or float
        Number of top entries per map, or a fraction of the entries (``0.1``: the top 10 %).
    absolute : bool
        Rank by ``|relevance|`` instead of by signed relevance.

    Examples
    --------
    >>> import torch
    >>> a = torch.arange(8.0).reshape(2, 4)
    >>> p = relevance_preservation(a, a, k=2)
    >>> p.spearman.tolist(), p.topk_overlap.tolist(), p.mean
    ([1.0, 1.0], [1.0, 1.0], {'spearman': 1.0, 'topk_overlap': 1.0})
    >>> relevance_preservation(a, -a, k=2).topk_overlap.tolist()
    [0.0, 0.0]
    """
    ma, mb = _maps(attr_a), _maps(attr_b)
    if ma.shape != mb.shape:
        raise ParameterError(f"the attributions have different shapes {tuple(ma.shape)} and "
                             f"{tuple(mb.shape)}")
    n, d = ma.shape
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0:
        raise ParameterError(f"k must be a positive count or a fraction in (0, 1], got {k!r}")
    if isinstance(k, float) and k <= 1.0:
        k = max(1, int(round(k * d)))
    k = int(k)
    if k > d:
        raise ParameterError(f"k={k} exceeds the {d} entries of a map")
    if absolute:
        ma, mb = ma.abs(), mb.abs()
    a, b = ma.numpy(), mb.numpy()
    rho = np.array([_spearman(a[i], b[i]) for i in range(n)])
    top_a = torch.topk(ma, k, dim=1, sorted=False).indices  # ties: torch's order, deterministic
    top_b = torch.topk(mb, k, dim=1, sorted=False).indices
    overlap = np.array([len(set(top_a[i].tolist()) & set(top_b[i].tolist())) / k
                        for i in range(n)])
    if isinstance(attr_a, Attribution) and isinstance(attr_b, Attribution):
        match = (attr_a.target == attr_b.target).numpy()
    else:
        match = np.ones(n, dtype=bool)
    return Preservation(rho, overlap, k, match)

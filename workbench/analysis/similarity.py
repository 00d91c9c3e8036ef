"""Comparing representations and models: linear CKA, geometry vectors, a model map with its
minimum spanning tree, and neural collapse.

* Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"): ``||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F)`` on column-centred ``X``, ``Y``.
* Geometry vectors and the model map follow the Robustness Lottery (Li et al., TVCG 2024): one
  vector of angle / length / margin statistics per model, embedded in 2-D (MDS or UMAP) and
  connected by the minimum spanning tree of their pairwise distances.
* Neural collapse NC1 (Papyan, Han & Donoho 2020): ``tr(Σ_W Σ_B⁺) / C``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.analysis.geometry import Geometry, as_matrix, per_class
from workbench.errors import DataError, ParameterError
from workbench.threads import single_threaded_blas

SIMILARITY_METHODS = ("mds", "umap")
#: Statistics per class in :func:`geometry_vector`, in order.
CLASS_STATS = ("angle_mean", "angle_std", "length_mean", "length_std", "margin_mean",
               "margin_std", "accuracy")
GLOBAL_STATS = ("angle_mean", "length_mean", "margin_mean", "accuracy")


def _frozen(a) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


# --- CKA ----------------------------------------------------------------------------------------
def linear_cka(x, y) -> float:
    """Linear centred kernel alignment between representations ``x`` (n, p) and ``y`` (n, q).

    1 for identical representations; invariant to orthogonal transforms and isotropic scaling
    of either side (not to arbitrary invertible maps). Computed in feature space, or via the
    ``n × n`` Gram matrices when that is cheaper (the same number).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(linear_cka(x, 3 * x), 6), round(linear_cka(x, x[:, :2]), 2) < 1
    (1.0, True)
    """
    a, b = as_matrix(x, "x"), as_matrix(y, "y")
    if len(a) != len(b):
        raise DataError(f"x and y must describe the same samples: {len(a)} vs {len(b)} rows")
    if len(a) < 2:
        raise DataError("CKA needs at least two samples")
    a = a - a.mean(0)
    b = b - b.mean(0)
    n = len(a)
    if n < min(a.shape[1], b.shape[1]):
        ka, kb = a @ a.T, b @ b.T
        hsic, norm_a, norm_b = (ka * kb).sum(), np.linalg.norm(ka), np.linalg.norm(kb)
    else:
        hsic = np.linalg.norm(b.T @ a) ** 2
        norm_a, norm_b = np.linalg.norm(a.T @ a), np.linalg.norm(b.T @ b)
    if norm_a == 0 or norm_b == 0:
        raise DataError("a representation is constant over the samples (zero variance after "
                        "centring); CKA is undefined")
    return float(hsic / (norm_a * norm_b))


# --- geometry vectors and the model map ---------------------------------------------------------
def geometry_vector(g: Geometry) -> np.ndarray:
    """One vector of geometry statistics for a model.

    Per class ``c`` (in order) the :data:`CLASS_STATS` (mean / std of angle, length, margin and
    the accuracy), then the :data:`GLOBAL_STATS` over all samples: ``7 K + 4`` values; names in
    :func:`geometry_vector_labels`. Angles in degrees; infinite margins are left out.

    Examples
    --------
    >>> import numpy as np
    >>> from workbench.analysis.geometry import geometry_from_features
    >>> g = geometry_from_features(np.eye(2), np.eye(2), np.zeros(2), np.array([0, 1]))
    >>> v = geometry_vector(g)
    >>> v.shape, v[:2].tolist()  # class 0: mean angle 0°, std 0°
    ((18,), [0.0, 0.0])
    """
    if not isinstance(g, Geometry):
        raise ParameterError(f"expected a Geometry, got {type(g).__name__}")
    pc = per_class(g)
    per = np.stack([getattr(pc, s) for s in CLASS_STATS], 1).reshape(-1)
    margin = np.asarray(g.margin)
    margin = margin[np.isfinite(margin)]
    angle = np.asarray(g.angle)
    glob = [np.nanmean(angle) if np.isfinite(angle).any() else np.nan, float(np.mean(g.length)),
            float(margin.mean()) if len(margin) else np.nan, float(g.correct.mean())]
    return np.concatenate([per, glob]).astype(np.float64)


def geometry_vector_labels(num_classes: int) -> list[str]:
    """Names of the entries of :func:`geometry_vector` (``"3/margin_mean"``, ``"accuracy"``…)."""
    return [f"{c}/{s}" for c in range(num_classes) for s in CLASS_STATS] + list(GLOBAL_STATS)


@dataclass(frozen=True, eq=False)
class Similarity:
    """A 2-D map of models and the minimum spanning tree of their distances.

    Attributes
    ----------
    names : tuple of str
    coords : np.ndarray, (m, 2)
        Row ``i`` places ``names[i]``.
    distances : np.ndarray, (m, m)
        Euclidean distances between the (standardised) vectors; the tree uses these, not the
        2-D coordinates.
    mst_edges : tuple of (int, int, float)
        The ``m - 1`` edges ``(i, j, distance)`` of the minimum spanning tree, ``i < j``.
    method : str
    """

    names: tuple
    coords: np.ndarray
    distances: np.ndarray = field(repr=False)
    mst_edges: tuple = ()
    method: str = "mds"


def minimum_spanning_tree(distances: np.ndarray) -> tuple:
    """Edges ``(i, j, d)`` of the minimum spanning tree of a full distance matrix (scipy).

    Zero distances (identical vectors) are kept as edges (scipy would read them as missing).

    Examples
    --------
    >>> import numpy as np
    >>> d = np.array([[0, 1, 4], [1, 0, 2], [4, 2, 0]], dtype=float)
    >>> minimum_spanning_tree(d)
    ((0, 1, 1.0), (1, 2, 2.0))
    """
    from scipy.sparse.csgraph import minimum_spanning_tree as mst

    d = np.asarray(distances, dtype=np.float64)
    m = len(d)
    if m < 2:
        return ()
    # every spanning tree has m - 1 edges, so adding 1 to all weights keeps the minimum tree
    # and turns zero distances into edges (scipy reads zeros as "no edge")
    w = np.where(np.eye(m, dtype=bool), 0.0, d + 1.0)
    tree = mst(w).tocoo()
    edges = sorted((min(i, j), max(i, j)) for i, j in zip(tree.row.tolist(), tree.col.tolist()))
    return tuple((i, j, float(d[i, j])) for i, j in edges)


def model_similarity(vectors: dict, method: str = "mds", *, seed: int = 0,
                     standardize: bool = True) -> Similarity:
    """Place models by the similarity of their vectors (e.g. :func:`geometry_vector`).

    Parameters
    ----------
    vectors : dict
        Model name → 1-D vector (all the same length, finite).
    method : "mds" or "umap"
        2-D layout of the distance matrix: metric MDS (scikit-learn, classical-MDS start) or
        UMAP on the precomputed distances (needs at least 4 models).
    standardize : bool
        z-score every entry across models first (entries mix degrees, lengths and rates;
        constant entries become 0).

    Examples
    --------
    >>> import numpy as np
    >>> s = model_similarity({"a": np.zeros(3), "b": np.ones(3), "c": np.full(3, 5.0)})
    >>> s.coords.shape, [(i, j) for i, j, _ in s.mst_edges]
    ((3, 2), [(0, 1), (1, 2)])
    """
    if method not in SIMILARITY_METHODS:
        raise ParameterError(f"method must be one of {SIMILARITY_METHODS}, got {method!r}")
    if not isinstance(vectors, dict) or len(vectors) < 2:
        raise ParameterError("vectors must be a dict of at least two model name → vector")
    names = tuple(str(k) for k in vectors)
    try:
        mat = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors.values()])
    except ValueError:
        raise DataError("all vectors must have the same length") from None
    if not np.isfinite(mat).all():
        bad = [n for n, row in zip(names, mat) if not np.isfinite(row).all()]
        raise DataError(f"vectors of {bad} contain NaN or Inf (e.g. a class without samples); "
                        "drop those entries or evaluate on data with every class")
    if standardize:
        std = mat.std(0)
        mat = np.where(std > 0, (mat - mat.mean(0)) / np.where(std > 0, std, 1.0), 0.0)
    from scipy.spatial.distance import cdist

    dist = cdist(mat, mat)
    m = len(names)
    if method == "mds":
        from sklearn.manifold import MDS

        if m == 2:
            coords = np.array([[-dist[0, 1] / 2, 0.0], [dist[0, 1] / 2, 0.0]])
        else:
            with single_threaded_blas():  # see workbench.threads
                coords = MDS(n_components=2, metric="precomputed", init="classical_mds",
                             random_state=seed, n_init=1).fit_transform(dist)
    else:
        import warnings

        import umap

        if m < 4:
            raise ParameterError(f"method='umap' needs at least 4 models, got {m}; use 'mds'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coords = umap.UMAP(n_components=2, metric="precomputed", random_state=seed,
                               n_neighbors=min(15, m - 1)).fit_transform(dist)
    return Similarity(names, _frozen(np.asarray(coords, dtype=np.float64)), _frozen(dist),
                      minimum_spanning_tree(dist), method)


# --- neural collapse ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NC:
    """Within- and between-class covariance of features and the NC1 collapse metric.

    Attributes
    ----------
    within : np.ndarray, (d, d)
        ``Σ_W = (1/N) Σ_i (h_i - μ_{y_i})(h_i - μ_{y_i})ᵀ``.
    between : np.ndarray, (d, d)
        ``Σ_B = (1/C) Σ_c (μ_c - μ_G)(μ_c - μ_G)ᵀ`` with ``μ_G`` the mean of all features.
    nc1 : float
        ``tr(Σ_W Σ_B⁺) / C`` (0 for perfectly collapsed classes).
    class_means : np.ndarray, (C, d)
    global_mean : np.ndarray, (d,)
    classes : np.ndarray
        The class labels present, in the order of ``class_means``.
    """

    within: np.ndarray = field(repr=False)
    between: np.ndarray = field(repr=False)
    nc1: float = 0.0
    class_means: np.ndarray = field(default=None, repr=False)
    global_mean: np.ndarray = field(default=None, repr=False)
    classes: np.ndarray = field(default=None, repr=False)


def pinv_psd(m: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Moore–Penrose pseudo-inverse of a symmetric PSD matrix, dropping eigenvalues below
    ``rtol`` × the largest (so rounding noise in the null space is not blown up)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    keep = vals > rtol * max(vals.max(), 0.0) if vals.max() > 0 else np.zeros_like(vals, bool)
    inv = np.where(keep, 1.0 / np.where(keep, vals, 1.0), 0.0)
    return (vecs * inv) @ vecs.T


def neural_collapse(features, labels=None) -> NC:
    """NC1 of Papyan et al. 2020 for ``features`` (``(n, d)`` or a :class:`Geometry`).

    Examples
    --------
    >>> import numpy as np
    >>> h = np.array([[-1.1], [-0.9], [0.9], [1.1]])
    >>> round(neural_collapse(h, np.array([0, 0, 1, 1])).nc1, 6)  # (1/2) · 0.01 / 1
    0.005
    """
    if isinstance(features, Geometry) and labels is None:
        labels = features.labels
    h = as_matrix(features)
    if labels is None:
        raise DataError("pass the labels (or a Geometry)")
    y = np.asarray(labels)
    if y.shape != (len(h),):
        raise DataError(f"need one label per feature row: {len(h)} rows, labels {y.shape}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError("neural collapse needs at least two classes")
    means = np.stack([h[y == c].mean(0) for c in classes])
    mu = h.mean(0)
    centred = h - means[np.searchsorted(classes, y)]
    within = centred.T @ centred / len(h)
    diff = means - mu
    between = diff.T @ diff / len(classes)
    nc1 = float(np.trace(within @ pinv_psd(between)) / len(classes))
    return NC(_frozen(within), _frozen(between), nc1, _frozen(means), _frozen(mu),
              _frozen(classes))


__all__ = ["linear_cka", "geometry_vector", "geometry_vector_labels", "Similarity",
           "model_similarity", "minimum_spanning_tree", "NC", "neural_collapse", "pinv_psd"]

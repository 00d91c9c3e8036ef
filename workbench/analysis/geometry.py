"""Feature geometry of the last layer (the "Robustness Lottery" view, Li et al., TVCG 2024).

With cross-entropy, logit ``z_c = w_c · h + b_c`` of the penultimate feature ``h`` (the input of
the final ``nn.Linear``) grows with the feature's length ``||h||`` and shrinks with the angle
between ``h`` and the class direction ``w_c``. Per sample this module reports

* ``angle``: the angle between ``h`` and its true class direction ``w_y``, in **degrees**
  (``nan`` when ``h`` or ``w_y`` is zero),
* ``length``: ``||h||``,
* ``margin``: the signed Euclidean distance from ``h`` to the nearest pairwise decision
  boundary of the true class, ``min_{j≠y} ((w_y - w_j)·h + b_y - b_j) / ||w_y - w_j||``;
  negative exactly when some class beats the true one (misclassified; an exact tie gives 0).

Features are read with a forward pre-hook on the final layer, through a handle that is removed
even when the forward pass fails; the model is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.errors import DataError, ParameterError, UnsupportedLayerError
from workbench.evaluate import predict_logits
from workbench.threads import single_threaded_blas

EMBEDDINGS = ("pca", "umap", "tsne")


def _frozen(a) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


# --- reading the penultimate features ----------------------------------------------------------
def final_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the final ``nn.Linear``: ``layer`` if given, else ``fc``, else the
    last ``nn.Linear`` in module order (e.g. the last entry of ``classifier``)."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ParameterError(f"the model has no layer {layer!r}; linear layers are "
                                 f"{[n for n, m in modules.items() if isinstance(m, nn.Linear)]}")
        if not isinstance(modules[layer], nn.Linear):
            raise UnsupportedLayerError(f"layer {layer!r} is a {type(modules[layer]).__name__}; "
                                        "feature geometry needs the final nn.Linear")
        return layer, modules[layer]
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc", model.fc
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnsupportedLayerError("the model has no nn.Linear layer to read class directions "
                                    "from; feature geometry needs a final linear classifier")
    return linears[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor, layer: str | None = None,
                        batch_size: int = 1024) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(layer name, penultimate features (n, d), model outputs (n, K))`` in one pass.

    A forward pre-hook on the final linear layer records its input; the hook handle is removed
    in a ``finally`` block, so no hook is left behind even if the forward pass raises.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> name, h, z = features_and_logits(net, torch.randn(5, 4))
    >>> name, tuple(h.shape), tuple(z.shape)
    ('2', (5, 3), (5, 2))
    """
    name, fc = final_linear(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_module, args):
        captured.append(args[0].detach().clone())

    handle = fc.register_forward_pre_hook(hook)
    try:
        logits = predict_logits(model, x, batch_size)
    finally:
        handle.remove()
    if not captured:
        raise UnsupportedLayerError(f"layer {name!r} was not called in the forward pass")
    h = torch.cat(captured)
    if h.ndim != 2 or len(h) != len(x):
        raise UnsupportedLayerError(f"layer {name!r} receives inputs shaped {tuple(h.shape[1:])} "
                                    "per sample; feature geometry needs flat (n, d) features")
    return name, h, logits


# --- per-sample geometry ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Geometry:
    """Angle, length and margin of every sample's penultimate feature.

    Attributes
    ----------
    angle : np.ndarray, (n,)
        Degrees between ``h`` and the true class weight ``w_y`` (``nan`` if either is zero).
    length : np.ndarray, (n,)
        ``||h||``.
    margin : np.ndarray, (n,)
        Signed distance to the nearest pairwise boundary of the true class (< 0: misclassified).
    nearest : np.ndarray of int, (n,)
        The class ``j`` whose boundary with ``y`` is nearest.
    logits : np.ndarray, (n, K)
        The layer's outputs ``h Wᵀ + b`` (the model's outputs when the layer is its last op).
    labels, predictions : np.ndarray of int, (n,)
    features : np.ndarray, (n, d)
        Penultimate features ``h``.
    weight, bias : np.ndarray, (K, d) and (K,)
        The final layer's class directions and biases.
    layer : str
        Name of the final linear layer.
    meta : dict
        ``fc_is_output``: whether the model's output equals ``h Wᵀ + b``; if not (a softmax or
        another layer follows), logits and predictions are the layer's, not the model's.
    """

    angle: np.ndarray = field(repr=False)
    length: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    nearest: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    layer: str = "fc"
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    @property
    def num_classes(self) -> int:
        return len(self.bias)


def geometry_from_features(h, weight, bias, labels, logits=None, layer: str = "fc") -> Geometry:
    """:class:`Geometry` of features ``h`` (n, d) under a linear layer ``(weight, bias)``.

    ``logits`` are the model's outputs, used when they equal ``h Wᵀ + b`` (the layer is the
    model's last operation); otherwise, or when omitted, ``h Wᵀ + b`` is used, so predictions
    and margins always agree.

    Examples
    --------
    >>> import numpy as np
    >>> W, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2)
    >>> g = geometry_from_features(np.array([[3.0, 4.0]]), W, b, np.array([0]))
    >>> round(float(g.angle[0]), 2), float(g.length[0]), round(float(g.margin[0]), 4)
    (53.13, 5.0, -0.7071)
    """
    h = np.asarray(h, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1] or b.shape != (len(w),):
        raise DataError(f"features {h.shape}, weight {w.shape} and bias {b.shape} do not fit "
                        "(need (n, d), (K, d), (K,))")
    if y.shape != (len(h),) or (len(y) and (y.min() < 0 or y.max() >= len(w))):
        raise DataError(f"labels must be {len(h)} class indices in 0..{len(w) - 1}")
    if len(w) < 2:
        raise DataError("margins need at least two classes")
    z = h @ w.T + b
    model_out = None if logits is None else np.asarray(logits, dtype=np.float64)
    fc_is_output = model_out is None or (model_out.shape == z.shape
                                         and np.allclose(model_out, z, rtol=1e-4, atol=1e-4))
    logits = model_out if model_out is not None and fc_is_output else z
    wy = w[y]
    length = np.linalg.norm(h, axis=1)
    wnorm = np.linalg.norm(wy, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("nd,nd->n", h, wy) / (length * wnorm)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    angle[(length == 0) | (wnorm == 0)] = np.nan
    # pairwise boundaries: margin_j = (z_y - z_j) / ||w_y - w_j||
    num = z[np.arange(len(h)), y][:, None] - z  # (n, K)
    dist = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=2)[y]  # (n, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        margins = np.where(dist > 0, num / np.where(dist > 0, dist, 1.0),
                           np.sign(num) * np.inf)  # identical directions: never/always crossed
    margins = np.where(np.isnan(margins), 0.0, margins)
    margins[np.arange(len(h)), y] = np.inf
    nearest = margins.argmin(1)
    return Geometry(
        _frozen(angle), _frozen(length), _frozen(margins[np.arange(len(h)), nearest]),
        _frozen(nearest), _frozen(logits), _frozen(y), _frozen(logits.argmax(1)), _frozen(h),
        _frozen(w), _frozen(b), layer, {"fc_is_output": bool(fc_is_output)})


def feature_geometry(model, x=None, y=None, *, layer: str | None = None,
             batch_size: int = 1024) -> Geometry:
    """Per-sample angle, length and margin of ``model``'s penultimate features on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module, Variant or Session
        A Variant / Session supplies its test split when ``x`` is omitted.
    x, y : inputs and labels, or ``x`` a Dataset
    layer : str, optional
        The final linear layer (default ``fc``, else the last ``nn.Linear``).

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> g = feature_geometry(s.base)
    >>> g.features.shape, bool(((g.margin < 0) == ~g.correct).all())
    ((360, 84), True)
    """
    module, x, y = _resolve(model, x, y)
    name, h, logits = features_and_logits(module, x, layer, batch_size)
    fc = dict(module.named_modules())[name]
    bias = fc.bias.detach() if fc.bias is not None else torch.zeros(fc.out_features)
    g = geometry_from_features(h.double().numpy(), fc.weight.detach().double().numpy(),
                               bias.double().numpy(), y.numpy(), logits.double().numpy(), name)
    return g


def _resolve(model, x, y):
    if hasattr(model, "variants") and hasattr(model, "base"):  # a Session
        model = model.base
    if not isinstance(model, nn.Module):
        if not (hasattr(model, "model") and isinstance(model.model, nn.Module)):
            raise ParameterError(f"expected a torch.nn.Module, a workbench Variant or Session, "
                                 f"got {type(model).__name__}")
        if x is None and hasattr(model, "data"):
            x = model.data
        model = model.model
    if hasattr(x, "x_test") and hasattr(x, "y_test"):
        x, y = x.x_test, x.y_test
    if x is None or y is None:
        raise DataError("pass inputs x and labels y (or a Variant / Session / Dataset)")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if y.ndim != 1 or len(y) != len(x) or len(x) == 0:
        raise DataError(f"need one label per input: {len(x)} inputs, labels shaped "
                        f"{tuple(y.shape)}")
    if not x.dtype.is_floating_point:
        raise DataError(f"inputs must be floating point, got {x.dtype}")
    return model, x, y.long()


# --- aggregates and drift -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ClassGeometry:
    """Per-class means and standard deviations of angle, length and margin (``nan`` for classes
    without samples; infinite margins of degenerate layers are left out of the statistics)."""

    classes: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    angle_mean: np.ndarray
    angle_std: np.ndarray
    length_mean: np.ndarray
    length_std: np.ndarray
    margin_mean: np.ndarray
    margin_std: np.ndarray


def _by_class(values: np.ndarray, labels: np.ndarray, k: int, fn) -> np.ndarray:
    out = np.full(k, np.nan)
    for c in range(k):
        v = values[labels == c]
        v = v[np.isfinite(v)]
        if len(v):
            out[c] = fn(v)
    return out


def per_class(g: Geometry) -> ClassGeometry:
    """Aggregate a :class:`Geometry` per true class.

    Examples
    --------
    >>> import numpy as np
    >>> g = geometry_from_features(np.array([[1.0, 0], [3.0, 0], [0, 2.0]]), np.eye(2),
    ...                            np.zeros(2), np.array([0, 0, 1]))
    >>> pc = per_class(g)
    >>> pc.count.tolist(), pc.length_mean.tolist()
    ([2, 1], [2.0, 2.0])
    """
    k, y = g.num_classes, np.asarray(g.labels)
    return ClassGeometry(
        _frozen(np.arange(k)), _frozen(np.bincount(y, minlength=k)),
        _frozen(_by_class(g.correct.astype(float), y, k, np.mean)),
        _frozen(_by_class(g.angle, y, k, np.mean)), _frozen(_by_class(g.angle, y, k, np.std)),
        _frozen(_by_class(g.length, y, k, np.mean)), _frozen(_by_class(g.length, y, k, np.std)),
        _frozen(_by_class(g.margin, y, k, np.mean)), _frozen(_by_class(g.margin, y, k, np.std)))


@dataclass(frozen=True, eq=False)
class Drift:
    """How the geometry moves from model ``a`` (e.g. dense) to ``b`` (a variant), ``b - a``.

    Attributes
    ----------
    angle, length, margin : np.ndarray, (n,)
        Per-sample change.
    feature_cosine : np.ndarray, (n,)
        Cosine between the two feature vectors (``nan`` if their dimensions differ).
    changed : np.ndarray of bool, (n,)
        Different predictions.
    broken, fixed : np.ndarray of bool, (n,)
        Right for ``a`` and wrong for ``b``; wrong for ``a`` and right for ``b``.
    class_angle, class_length, class_margin : np.ndarray, (K,)
        Mean change per true class (``nan`` for empty classes).
    """

    angle: np.ndarray = field(repr=False)
    length: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    feature_cosine: np.ndarray = field(repr=False)
    changed: np.ndarray = field(repr=False)
    broken: np.ndarray = field(repr=False)
    fixed: np.ndarray = field(repr=False)
    class_angle: np.ndarray = field(repr=False)
    class_length: np.ndarray = field(repr=False)
    class_margin: np.ndarray = field(repr=False)


def drift(g_a: Geometry, g_b: Geometry) -> Drift:
    """Per-sample and per-class change of the geometry from ``g_a`` to ``g_b`` (same samples).

    Examples
    --------
    >>> import numpy as np
    >>> a = geometry_from_features(np.array([[1.0, 0]]), np.eye(2), np.zeros(2), np.array([0]))
    >>> b = geometry_from_features(np.array([[2.0, 0]]), np.eye(2), np.zeros(2), np.array([0]))
    >>> d = drift(a, b)
    >>> float(d.length[0]), float(d.angle[0]), float(d.feature_cosine[0])
    (1.0, 0.0, 1.0)
    """
    if len(g_a.labels) != len(g_b.labels) or not np.array_equal(g_a.labels, g_b.labels):
        raise DataError("the two geometries are of different samples (their labels differ)")
    if g_a.num_classes != g_b.num_classes:
        raise DataError(f"the two models have {g_a.num_classes} and {g_b.num_classes} classes")
    fa, fb = np.asarray(g_a.features), np.asarray(g_b.features)
    if fa.shape == fb.shape:
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.einsum("nd,nd->n", fa, fb) / (np.linalg.norm(fa, axis=1)
                                                  * np.linalg.norm(fb, axis=1))
    else:
        cos = np.full(len(fa), np.nan)
    d_angle = np.asarray(g_b.angle) - np.asarray(g_a.angle)
    d_length = np.asarray(g_b.length) - np.asarray(g_a.length)
    with np.errstate(invalid="ignore"):
        d_margin = np.asarray(g_b.margin) - np.asarray(g_a.margin)
    y, k = np.asarray(g_a.labels), g_a.num_classes
    ca, cb = g_a.correct, g_b.correct
    return Drift(_frozen(d_angle), _frozen(d_length), _frozen(d_margin), _frozen(cos),
                 _frozen(g_a.predictions != g_b.predictions), _frozen(ca & ~cb),
                 _frozen(~ca & cb), _frozen(_by_class(d_angle, y, k, np.mean)),
                 _frozen(_by_class(d_length, y, k, np.mean)),
                 _frozen(_by_class(d_margin, y, k, np.mean)))


# --- embeddings ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Embedding:
    """Low-dimensional coordinates of the samples, row ``i`` for input row ``i``."""

    coords: np.ndarray
    method: str
    seed: int = 0
    params: dict = field(default_factory=dict)


def as_matrix(features, what: str = "features") -> np.ndarray:
    """A finite float64 ``(n, d)`` array from an array, tensor or :class:`Geometry`."""
    if isinstance(features, Geometry):
        features = features.features
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    try:
        a = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a numeric (n, d) array") from None
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{what} must be a 2-D (samples, dimensions) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{what} contain NaN or Inf")
    return a


def embed(features, method: str = "pca", seed: int = 0, n_components: int = 2,
          **params) -> Embedding:
    """Embed features (``(n, d)`` array, tensor or :class:`Geometry`) in ``n_components`` dims.

    ``pca``: scikit-learn ``PCA`` (full SVD, signs fixed by ``svd_flip``); ``tsne``:
    scikit-learn ``TSNE`` (PCA init, perplexity ``min(30, (n - 1) / 3)`` unless given);
    ``umap``: umap-learn ``UMAP`` (``n_neighbors = min(15, n - 1)`` unless given; with
    ``random_state`` set it runs single-threaded and is reproducible). Extra ``params`` go to
    the estimator. Deterministic for a given ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> e = embed(np.random.default_rng(0).normal(size=(20, 5)), "pca")
    >>> e.coords.shape, e.method
    ((20, 2), 'pca')
    """
    if method not in EMBEDDINGS:
        raise ParameterError(f"method must be one of {EMBEDDINGS}, got {method!r}")
    x = as_matrix(features)
    n = len(x)
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) \
            or not 1 <= n_components <= min(x.shape):
        raise ParameterError(f"n_components must be an integer in 1..{min(x.shape)}, got "
                             f"{n_components!r}")
    if method == "pca":
        from sklearn.decomposition import PCA

        est = PCA(n_components=n_components, svd_solver="full", random_state=seed, **params)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        if n < 4:
            raise DataError(f"t-SNE needs at least 4 samples, got {n}")
        params.setdefault("perplexity", min(30.0, (n - 1) / 3))
        params.setdefault("init", "pca")
        est = TSNE(n_components=n_components, random_state=seed, **params)
    else:
        import warnings

        import umap

        if n < 4:
            raise DataError(f"UMAP needs at least 4 samples, got {n}")
        params.setdefault("n_neighbors", min(15, n - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and friends
            est = umap.UMAP(n_components=n_components, random_state=seed, **params)
            coords = est.fit_transform(x)
        return Embedding(_frozen(coords.astype(np.float64)), method, seed, dict(params))
    with single_threaded_blas():  # see workbench.threads: same result, no thread fight
        coords = est.fit_transform(x)
    return Embedding(_frozen(np.asarray(coords, dtype=np.float64)), method, seed, dict(params))


__all__ = ["Geometry", "feature_geometry", "geometry_from_features", "features_and_logits",
           "final_linear", "ClassGeometry", "per_class", "Drift", "drift", "Embedding", "embed",
           "as_matrix"]

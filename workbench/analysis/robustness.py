"""Robustness to common corruptions: error per corruption × severity, mCE, per-sample flips,
layer × corruption sensitivity, and image galleries.

Everything is computed on the corrupted copies of a fixed set of images
(:mod:`workbench.corruptions`, seeded), returns frozen result objects of NumPy arrays with their
coordinates (corruption names, severities), and never modifies the model. Definitions follow
Hendrycks & Dietterich 2019 ("Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations"): ``E[c, s]`` is the top-1 error under corruption ``c`` at severity ``s``,

* ``CE_c = Σ_s E[c, s] / Σ_s E_base[c, s]`` and ``mCE = mean_c CE_c``,
* ``relative CE_c = Σ_s (E[c, s] - E_clean) / Σ_s (E_base[c, s] - E_base_clean)``,

reported as fractions (1.0 = as robust as the baseline; the paper prints percentages). Choose
the baseline yourself (the dense model, an earlier variant): CIFAR and MNIST have no AlexNet
reference numbers (hendrycks/robustness#28).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from workbench.cancel import tqdm  # tqdm.auto, stoppable by a CancelToken

from workbench.corruptions import CORRUPTIONS, corruption_names
from workbench.corruptions.base import check_images, check_seed, check_severity
from workbench.errors import DataError, ParameterError, UnsupportedLayerError, WorkbenchError
from workbench.evaluate import predict_logits

SEVERITIES = (1, 2, 3, 4, 5)


# --- inputs ------------------------------------------------------------------------------------
def resolve_model_and_data(model, x=None, y=None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(module, x, y)`` from a module, a Variant or a Session, and images or a Dataset.

    A Session means its base model; a Variant or Session supplies its test split when ``x`` is
    omitted; ``x`` may also be a :class:`~workbench.data.Dataset` (its test split is used).
    """
    if hasattr(model, "variants") and hasattr(model, "base"):  # a Session
        model = model.base
    if not isinstance(model, nn.Module):
        if not (hasattr(model, "model") and isinstance(model.model, nn.Module)):
            raise ParameterError(f"expected a torch.nn.Module, a workbench Variant or Session, got "
                                 f"{type(model).__name__}")
        if x is None and hasattr(model, "data"):
            x = model.data
        model = model.model
    if hasattr(x, "x_test") and hasattr(x, "y_test"):  # a Dataset
        x, y = x.x_test, x.y_test
    if x is None or y is None:
        raise DataError("pass images x and labels y (or a Variant / Session / Dataset, whose test "
                        "split is used)")
    x, _ = check_images(x)
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"labels must be a 1-D vector with one label per image: got shape "
                        f"{tuple(y.shape)} for {len(x)} images")
    if y.dtype.is_floating_point and not bool((y == y.round()).all()):
        raise DataError("labels must be integer class indices")
    return model, x, y.long()


def check_corruptions(corruptions, x: torch.Tensor) -> tuple[str, ...]:
    """Names to run: all that accept ``x``'s channels by default; unknown or unsupported → error."""
    kind = "gray" if x.shape[1] == 1 else "rgb"
    if corruptions is None:
        return tuple(corruption_names(kind))
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    names = tuple(corruptions)
    if not names:
        raise ParameterError("corruptions is empty; pass names or None for all")
    if len(set(names)) != len(names):
        raise ParameterError(f"corruptions lists a name twice: {list(names)}")
    bad = [n for n in names if not CORRUPTIONS[n].supports(x.shape[1])]
    if bad:
        raise DataError(f"corruptions {bad} do not support {kind} images; available: "
                        f"{corruption_names(kind)}")
    return names


def check_severities(severities) -> tuple[int, ...]:
    if isinstance(severities, (int, np.integer)) and not isinstance(severities, bool):
        severities = (severities,)
    try:
        out = tuple(check_severity(s) for s in severities)
    except TypeError:
        raise ParameterError(f"severities must be integers from 1 to 5, got "
                             f"{severities!r}") from None
    if not out or len(set(out)) != len(out):
        raise ParameterError(f"severities must be distinct integers from 1 to 5, got "
                             f"{severities!r}")
    return out


@contextmanager
def intra_op_threads(threads: int | None):
    """Run with ``torch.set_num_threads(threads)`` and restore the previous value afterwards
    (``None``: leave torch's setting alone)."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ParameterError(f"threads must be a positive integer or None, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    logits = predict_logits(model, x, batch_size)
    if logits.ndim != 2:
        raise DataError(f"the model must output (n, classes) scores, got {tuple(logits.shape)}")
    return logits.argmax(1).numpy().astype(np.int16)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


# --- corruption errors ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CorruptionResult:
    """Top-1 errors of one model under corruptions × severities, with every prediction.

    Attributes
    ----------
    corruptions : tuple of str
    severities : tuple of int
    error : np.ndarray, shape (len(corruptions), len(severities))
        ``error[i, j]`` is the error rate under ``corruptions[i]`` at ``severities[j]``.
    clean_error : float
        Error on the uncorrupted images.
    predictions : np.ndarray of int16, shape (corruptions, severities, n)
    labels : np.ndarray of int64, shape (n,)
    clean_predictions : np.ndarray of int16, shape (n,)
    seed : int
        Seed of the corruptions (sample ``i`` gets the same corruption for a given seed).
    meta : dict
        ``seconds`` per corruption (corrupting + predicting), ``total_seconds``, ``n``.
    """

    corruptions: tuple
    severities: tuple
    error: np.ndarray
    clean_error: float
    predictions: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    clean_predictions: np.ndarray = field(repr=False)
    seed: int = 0
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def mean_error(self) -> np.ndarray:
        """Error per corruption averaged over the severities, shape (corruptions,)."""
        return self.error.mean(1)

    def rows(self) -> list[dict]:
        """One ``{"corruption", "severity", "error"}`` dict per cell (for a DataFrame)."""
        return [{"corruption": c, "severity": s, "error": float(self.error[i, j])}
                for i, c in enumerate(self.corruptions) for j, s in enumerate(self.severities)]


def corruption_errors(model, x=None, y=None, corruptions=None, severities=SEVERITIES,
                      seed: int = 0, progress=True, *, batch_size: int = 1024,
                      threads: int | None = 1) -> CorruptionResult:
    """Error of ``model`` on ``(x, y)`` under every corruption and severity.

    Parameters
    ----------
    model : nn.Module, Variant or Session
        A Variant or Session supplies its test split when ``x`` is omitted.
    x, y : images ``(n, C, H, W)`` in [0, 1] and labels, or ``x`` a Dataset
    corruptions : list of str, optional
        Default: every registered corruption for the images' channels
        (``corruption_names("gray" | "rgb")``).
    severities : sequence of int
        Subset of 1..5.
    seed : int
        Corruption seed; the same seed corrupts sample ``i`` identically in every call (so
        results of different models are comparable sample by sample).
    progress : bool
        Show a progress bar.
    batch_size : int
        Images per forward pass.
    threads : int or None
        Intra-op threads while corrupting and predicting (restored afterwards). The default 1
        suits small images: their many small tensor ops gain nothing from a second thread and,
        on a busy machine, lose a lot to thread synchronisation (7× measured on a loaded
        2-core box). ``None`` keeps torch's setting (better for large models on idle cores).

    Notes
    -----
    Each corruption is applied to all of ``x`` at once (sample ``i``'s noise depends on its
    position ``i``), so memory grows with ``len(x)``: a 10,000-image CIFAR test set needs a few
    hundred MB per corrupted copy.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> r = corruption_errors(s.base, corruptions=["rotate", "shot_noise"], severities=(1, 5),
    ...                       progress=False)
    >>> r.error.shape, r.predictions.shape[:2]
    ((2, 2), (2, 2))
    >>> bool(r.error[0, 1] > r.error[0, 0])  # rotating by 1 rad hurts more than by 0.2 rad
    True
    """
    module, x, y = resolve_model_and_data(model, x, y)
    names = check_corruptions(corruptions, x)
    sev = check_severities(severities)
    seed = check_seed(seed)
    labels = y.numpy()
    start = time.perf_counter()
    preds = np.zeros((len(names), len(sev), len(x)), dtype=np.int16)
    seconds = {}
    bar = tqdm(total=len(names) * len(sev), desc="corruptions", disable=not progress,
               leave=False)
    with intra_op_threads(threads):
        clean = _predict(module, x, batch_size)
        _sweep(module, x, names, sev, seed, batch_size, preds, seconds, bar)
    error = (preds != labels[None, None, :]).mean(2)
    return CorruptionResult(
        names, sev, _frozen(error), float((clean != labels).mean()), _frozen(preds),
        _frozen(labels), _frozen(clean), seed,
        {"seconds": seconds, "total_seconds": time.perf_counter() - start, "n": len(x),
         "threads": torch.get_num_threads() if threads is None else int(threads)})


def _sweep(module, x, names, sev, seed, batch_size, preds, seconds, bar):
    try:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            for j, s in enumerate(sev):
                bar.set_postfix_str(f"{name} {s}")
                preds[i, j] = _predict(module, CORRUPTIONS[name](x, s, seed=seed), batch_size)
                bar.update()
            seconds[name] = time.perf_counter() - t0
    finally:
        bar.close()


# --- mCE ----------------------------------------------------------------------------------------
def mce(result: CorruptionResult, baseline: CorruptionResult) -> dict:
    """Corruption errors of ``result`` normalised by a ``baseline`` (Hendrycks & Dietterich).

    ``CE_c = Σ_s E[c, s] / Σ_s E_base[c, s]``; ``relative CE_c = Σ_s (E[c, s] - E_clean) /
    Σ_s (E_base[c, s] - E_base_clean)``; ``mCE`` and ``relative mCE`` are their means over
    corruptions. Every corruption and severity of ``result`` must be in ``baseline``.

    A zero denominator (the baseline makes no corruption errors, or as many as on clean data)
    leaves that CE undefined: it is ``nan``, a note says why, and the means run over the
    defined values only (also noted). A negative relative denominator (the baseline does better
    on corrupted than on clean images) is computed but noted, as its sign is not meaningful.

    Returns
    -------
    dict
        ``ce``, ``relative_ce`` (name → float), ``mce``, ``relative_mce`` (float),
        ``corruptions`` (names), ``notes`` (list of str).

    Examples
    --------
    >>> import numpy as np
    >>> def result(err, clean):
    ...     err = np.asarray(err, dtype=float)
    ...     n = np.zeros((1,), dtype=np.int16)
    ...     return CorruptionResult(("a",), (1, 2), err, clean, np.zeros((1, 2, 1), np.int16),
    ...                             np.zeros(1, np.int64), n)
    >>> out = mce(result([[0.2, 0.4]], 0.1), result([[0.3, 0.5]], 0.1))
    >>> round(out["ce"]["a"], 4), round(out["relative_ce"]["a"], 4)  # 0.6/0.8, 0.4/0.6
    (0.75, 0.6667)
    """
    for r, what in ((result, "result"), (baseline, "baseline")):
        if not isinstance(r, CorruptionResult):
            raise ParameterError(f"{what} must be a CorruptionResult, got {type(r).__name__}")
    missing = [c for c in result.corruptions if c not in baseline.corruptions]
    if missing:
        raise ParameterError(f"the baseline has no errors for corruptions {missing}; run it with "
                             f"the same corruptions")
    missing = [s for s in result.severities if s not in baseline.severities]
    if missing:
        raise ParameterError(f"the baseline has no errors at severities {missing}")
    rows = [baseline.corruptions.index(c) for c in result.corruptions]
    cols = [baseline.severities.index(s) for s in result.severities]
    base = np.asarray(baseline.error)[np.ix_(rows, cols)]
    ce, rel, notes = {}, {}, []
    for i, name in enumerate(result.corruptions):
        num, den = float(result.error[i].sum()), float(base[i].sum())
        if den == 0:
            ce[name] = float("nan")
            notes.append(f"{name}: the baseline makes no errors under this corruption, so CE is "
                         "undefined (nan)")
        else:
            ce[name] = num / den
        rnum = float((result.error[i] - result.clean_error).sum())
        rden = float((base[i] - baseline.clean_error).sum())
        if abs(rden) < 1e-12:
            rel[name] = float("nan")
            notes.append(f"{name}: the baseline's corrupted error equals its clean error, so the "
                         "relative CE is undefined (nan)")
        else:
            rel[name] = rnum / rden
            if rden < 0:
                notes.append(f"{name}: the baseline does better on corrupted than on clean images "
                             "(negative relative denominator); the relative CE's sign is not "
                             "meaningful")

    def mean(values: dict, label: str) -> float:
        finite = [v for v in values.values() if np.isfinite(v)]
        if len(finite) < len(values):
            notes.append(f"{label} averages {len(finite)} of {len(values)} corruptions "
                         "(the others are undefined)")
        return float(np.mean(finite)) if finite else float("nan")

    return {"ce": ce, "mce": mean(ce, "mCE"), "relative_ce": rel,
            "relative_mce": mean(rel, "relative mCE"), "corruptions": list(result.corruptions),
            "notes": notes}


# --- per-sample flags and flips -----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SampleFlags:
    """Which samples survive which corruptions.

    Attributes
    ----------
    corruptions, severities : tuple
    clean_correct : np.ndarray of bool, (n,)
    correct : np.ndarray of bool, (corruptions, severities, n)
    flipped : np.ndarray of bool, (corruptions, severities, n)
        Correct on the clean image, wrong on the corrupted one.
    recovered : np.ndarray of bool, (corruptions, severities, n)
        Wrong on the clean image, right on the corrupted one.
    robust : np.ndarray of bool, (n,)
        Correct when clean and under every corruption and severity.
    fragile : np.ndarray of bool, (n,)
        Correct when clean but flipped by at least one corruption / severity.
    flip_count : np.ndarray of int, (n,)
        Number of (corruption, severity) cells that flip the sample.
    first_flip : np.ndarray of int, (corruptions, n)
        The lowest severity (from ``severities``) that flips the sample, 0 if none does.
    """

    corruptions: tuple
    severities: tuple
    clean_correct: np.ndarray = field(repr=False)
    correct: np.ndarray = field(repr=False)
    flipped: np.ndarray = field(repr=False)
    recovered: np.ndarray = field(repr=False)
    robust: np.ndarray = field(repr=False)
    fragile: np.ndarray = field(repr=False)
    flip_count: np.ndarray = field(repr=False)
    first_flip: np.ndarray = field(repr=False)


def sample_flags(result: CorruptionResult) -> SampleFlags:
    """Per-sample robust / fragile flags from a :class:`CorruptionResult`.

    Examples
    --------
    >>> import numpy as np
    >>> preds = np.array([[[0, 1, 1], [1, 1, 1]]], dtype=np.int16)  # 1 corruption, 2 severities
    >>> r = CorruptionResult(("a",), (1, 3), np.zeros((1, 2)), 0.0, preds,
    ...                      np.array([0, 1, 0]), np.array([0, 1, 0], dtype=np.int16))
    >>> f = sample_flags(r)
    >>> f.robust.tolist(), f.first_flip.tolist(), f.flip_count.tolist()
    ([False, True, False], [[3, 0, 1]], [1, 0, 2])
    """
    labels = np.asarray(result.labels)
    clean = np.asarray(result.clean_predictions) == labels
    correct = np.asarray(result.predictions) == labels[None, None, :]
    flipped = clean[None, None, :] & ~correct
    recovered = ~clean[None, None, :] & correct
    sev = np.asarray(result.severities)
    order = np.argsort(sev, kind="stable")
    first = np.zeros((len(result.corruptions), len(labels)), dtype=np.int64)
    for j in order[::-1]:  # highest severity first, so the lowest flipping severity wins
        first = np.where(flipped[:, j, :], sev[j], first)
    return SampleFlags(
        tuple(result.corruptions), tuple(result.severities), _frozen(clean), _frozen(correct),
        _frozen(flipped), _frozen(recovered), _frozen(clean & correct.all(axis=(0, 1))),
        _frozen(clean & flipped.any(axis=(0, 1))), _frozen(flipped.sum(axis=(0, 1))),
        _frozen(first))


@dataclass(frozen=True, eq=False)
class Flips:
    """Sample-level differences between two models on the same corrupted images.

    ``a`` is the reference (e.g. the dense model), ``b`` the variant.

    Attributes
    ----------
    corruptions, severities : tuple
    broken : np.ndarray of bool, (corruptions, severities, n)
        Right for ``a``, wrong for ``b``.
    fixed : np.ndarray of bool, (corruptions, severities, n)
        Wrong for ``a``, right for ``b``.
    changed : np.ndarray of bool, (corruptions, severities, n)
        ``a`` and ``b`` predict different classes.
    clean_broken, clean_fixed : np.ndarray of bool, (n,)
        The same on the clean images.
    broken_count, fixed_count : np.ndarray of int, (corruptions, severities)
    delta_error : np.ndarray, (corruptions, severities)
        ``error_b - error_a`` (= ``(broken_count - fixed_count) / n``).
    """

    corruptions: tuple
    severities: tuple
    broken: np.ndarray = field(repr=False)
    fixed: np.ndarray = field(repr=False)
    changed: np.ndarray = field(repr=False)
    clean_broken: np.ndarray = field(repr=False)
    clean_fixed: np.ndarray = field(repr=False)
    broken_count: np.ndarray = field(repr=False)
    fixed_count: np.ndarray = field(repr=False)
    delta_error: np.ndarray = field(repr=False)


def flips(result_a: CorruptionResult, result_b: CorruptionResult) -> Flips:
    """Which samples ``b`` gets wrong that ``a`` got right (and vice versa), per cell.

    Both results must come from the same images, labels, corruptions, severities and seed.

    Examples
    --------
    >>> import numpy as np
    >>> def run(p):
    ...     p = np.array(p, dtype=np.int16).reshape(1, 1, -1)
    ...     return CorruptionResult(("a",), (2,), np.zeros((1, 1)), 0.0, p, np.array([0, 1, 2]),
    ...                             np.array([0, 1, 2], dtype=np.int16))
    >>> f = flips(run([0, 1, 0]), run([1, 1, 2]))
    >>> f.broken[0, 0].tolist(), f.fixed[0, 0].tolist(), round(float(f.delta_error[0, 0]), 3)
    ([True, False, False], [False, False, True], 0.0)
    """
    a, b = result_a, result_b
    if a.corruptions != b.corruptions or a.severities != b.severities:
        raise ParameterError("the two results cover different corruptions or severities: "
                             f"{a.corruptions}×{a.severities} vs {b.corruptions}×{b.severities}")
    if a.seed != b.seed:
        raise ParameterError(f"the two results used different corruption seeds ({a.seed} vs "
                             f"{b.seed}), so their corrupted images differ")
    if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        raise DataError("the two results are on different samples (their labels differ)")
    labels = np.asarray(a.labels)
    ca = np.asarray(a.predictions) == labels
    cb = np.asarray(b.predictions) == labels
    clean_a = np.asarray(a.clean_predictions) == labels
    clean_b = np.asarray(b.clean_predictions) == labels
    broken, fixed = ca & ~cb, ~ca & cb
    return Flips(tuple(a.corruptions), tuple(a.severities), _frozen(broken), _frozen(fixed),
                 _frozen(np.asarray(a.predictions) != np.asarray(b.predictions)),
                 _frozen(clean_a & ~clean_b), _frozen(~clean_a & clean_b),
                 _frozen(broken.sum(-1)), _frozen(fixed.sum(-1)),
                 _frozen(np.asarray(b.error) - np.asarray(a.error)))


# --- layer × corruption sensitivity ---------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SensitivityMatrix:
    """How much compressing one layer at a time raises each corruption's error.

    Attributes
    ----------
    layers, corruptions : tuple of str
    delta_error : np.ndarray, (layers, corruptions)
        ``error[l, c] - base_error[c]``: positive = compressing layer ``l`` hurts under ``c``.
    error : np.ndarray, (layers, corruptions)
        Error of the model with only layer ``l`` compressed, under corruption ``c``.
    base_error : np.ndarray, (corruptions,)
        Error of the uncompressed model under each corruption.
    clean_error : np.ndarray, (layers,)
        Clean error with only layer ``l`` compressed.
    base_clean_error : float
    severity : int
    transform : str
    meta : dict
    """

    layers: tuple
    corruptions: tuple
    delta_error: np.ndarray
    error: np.ndarray = field(repr=False)
    base_error: np.ndarray = field(repr=False)
    clean_error: np.ndarray = field(repr=False)
    base_clean_error: float = 0.0
    severity: int = 3
    transform: str = "magnitude"
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def delta_clean_error(self) -> np.ndarray:
        """Clean error increase per layer, shape (layers,)."""
        return self.clean_error - self.base_clean_error


TRANSFORMS = ("magnitude", "uniform")


def _layer_transform(transform, sparsity: float, bits: int, seed: int):
    """``fn(model, layer, all_layers) -> new model`` compressing only ``layer``."""
    if callable(transform):
        def custom(model, layer, layers):
            import copy

            out = transform(copy.deepcopy(model), layer)
            if not isinstance(out, nn.Module):
                raise ParameterError(f"the transform must return an nn.Module, got "
                                     f"{type(out).__name__}")
            return out
        return custom, getattr(transform, "__name__", "custom")
    if transform == "magnitude":
        from workbench.prune import PRUNERS

        def prune(model, layer, layers):
            others = [n for n in layers if n != layer]
            return PRUNERS["magnitude"](model, sparsity, exclude=others, seed=seed).model
        return prune, f"magnitude-{int(round(sparsity * 100))}%"
    if transform in ("uniform", "quantize"):
        from workbench.quantize import QUANTIZERS

        if "uniform" not in QUANTIZERS:
            raise ParameterError("transform='uniform' needs the 'uniform' quantization method, "
                                 f"which is not registered (registered: {QUANTIZERS.names()})")

        def quantize(model, layer, layers):
            others = [n for n in layers if n != layer]
            return QUANTIZERS["uniform"](model, bits, exclude=others, seed=seed).model
        return quantize, f"uniform-{bits}bit"
    raise ParameterError(f"transform must be one of {TRANSFORMS} or a callable "
                         f"fn(model, layer_name) -> model, got {transform!r}")


def layer_sensitivity(model, data=None, transform="magnitude", corruptions=None,
                      severity: int = 3, *, layers: Sequence[str] | None = None,
                      sparsity: float = 0.5, bits: int = 4, seed: int = 0,
                      batch_size: int = 1024, threads: int | None = 1,
                      progress=True) -> SensitivityMatrix:
    """Compress one layer at a time and measure each corruption's error increase.

    Parameters
    ----------
    model : nn.Module, Variant or Session
        A Session means its base model; a Variant or Session supplies its test split.
    data : Dataset or (x, y), optional
        Images and labels (default: the Variant's / Session's test split).
    transform : "magnitude", "uniform" or callable
        ``"magnitude"``: magnitude-prune the layer to ``sparsity`` (``PRUNERS["magnitude"]``
        with every other layer in ``exclude``); ``"uniform"``: quantize its weights to ``bits``
        (``QUANTIZERS["uniform"]``, other layers excluded); a callable
        ``fn(model_copy, layer_name) -> nn.Module`` does anything else.
    corruptions : list of str, optional
        Default: all for the images' channels.
    severity : int
        One severity for every corruption.
    layers : list of str, optional
        Default: every Conv2d / Linear layer.
    sparsity, bits : float, int
        Pruning fraction for ``"magnitude"``, bit width for ``"uniform"``.
    threads : int or None
        Intra-op threads while running (see :func:`corruption_errors`).

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> m = layer_sensitivity(s, corruptions=["rotate", "fog"], progress=False)
    >>> m.delta_error.shape == (len(m.layers), 2), m.layers[-1]
    (True, 'fc')
    """
    from workbench.prune.base import check_sparsity, prunable_layers

    if isinstance(data, (tuple, list)) and len(data) == 2:
        module, x, y = resolve_model_and_data(model, *data)
    else:
        module, x, y = resolve_model_and_data(model, data)
    names = check_corruptions(corruptions, x)
    severity = check_severity(severity)
    seed = check_seed(seed)
    sparsity = check_sparsity(sparsity)
    all_layers = list(prunable_layers(module))
    if layers is None:
        layers = all_layers
    else:
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in layers if n not in all_layers]
        if unknown:
            raise ParameterError(f"layers {unknown} are not Conv2d/Linear layers of the model; "
                                 f"layers are {all_layers}")
    fn, label = _layer_transform(transform, sparsity, bits, seed)
    with intra_op_threads(threads):
        return _sensitivity(module, x, y, names, severity, seed, layers, all_layers, fn, label,
                            batch_size, progress)


def _sensitivity(module, x, y, names, severity, seed, layers, all_layers, fn, label, batch_size,
                 progress):
    start = time.perf_counter()
    labels = y.numpy()
    inputs = {name: CORRUPTIONS[name](x, severity, seed=seed) for name in names}

    def errors(m):
        clean = float((_predict(m, x, batch_size) != labels).mean())
        return clean, np.array([(_predict(m, inputs[c], batch_size) != labels).mean()
                                for c in names])

    base_clean, base = errors(module)
    error = np.zeros((len(layers), len(names)))
    clean = np.zeros(len(layers))
    for i, layer in enumerate(tqdm(layers, desc="layers", disable=not progress, leave=False)):
        try:
            compressed = fn(module, layer, all_layers)
        except WorkbenchError:
            raise
        except (RuntimeError, ValueError, TypeError) as err:
            raise UnsupportedLayerError(f"the transform failed on layer {layer!r}: "
                                        f"{type(err).__name__}: {err}") from err
        clean[i], error[i] = errors(compressed)
    return SensitivityMatrix(
        tuple(layers), names, _frozen(error - base[None, :]), _frozen(error), _frozen(base),
        _frozen(clean), base_clean, severity, label,
        {"seed": seed, "n": len(x), "seconds": time.perf_counter() - start})


# --- galleries ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Gallery:
    """Corrupted versions of a few images.

    Attributes
    ----------
    images : np.ndarray of float32, (corruptions, severities, k, C, H, W)
    clean : np.ndarray of float32, (k, C, H, W)
    corruptions, severities : tuple
    seed : int
    """

    images: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    corruptions: tuple = ()
    severities: tuple = ()
    seed: int = 0


#: A gallery is for looking at: more images than this is almost certainly a mistake.
GALLERY_MAX = 256


def gallery(x, corruptions=None, severities=SEVERITIES, seed: int = 0) -> Gallery:
    """Every corruption × severity of a few images ``x`` (``(k, C, H, W)`` in [0, 1]).

    Sample ``i`` is corrupted exactly as sample ``i`` of :func:`corruption_errors` with the same
    seed, so ``gallery(x[:k])`` shows the images the first ``k`` predictions were made on.

    Examples
    --------
    >>> import torch
    >>> g = gallery(torch.rand(3, 1, 8, 8), ["rotate", "fog"], severities=(1, 5))
    >>> g.images.shape
    (2, 2, 3, 1, 8, 8)
    """
    x, _ = check_images(x)
    if len(x) > GALLERY_MAX:
        raise ParameterError(f"a gallery is for a few images (at most {GALLERY_MAX}), got "
                             f"{len(x)}; pass x[:k]")
    names = check_corruptions(corruptions, x)
    sev = check_severities(severities)
    seed = check_seed(seed)
    out = np.zeros((len(names), len(sev), *x.shape), dtype=np.float32)
    for i, name in enumerate(names):
        for j, s in enumerate(sev):
            out[i, j] = CORRUPTIONS[name](x, s, seed=seed).numpy()
    return Gallery(_frozen(out), _frozen(x.numpy()), names, sev, seed)


__all__ = ["CorruptionResult", "corruption_errors", "mce", "SampleFlags", "sample_flags", "Flips",
           "flips", "SensitivityMatrix", "layer_sensitivity", "Gallery", "gallery",
           "resolve_model_and_data"]

"""Loss landscapes: a plane, a line, and the path between two models (Li et al. 2018).

Structure from loss-landscapes (pure functions returning data), numerics from the reference
implementation of Li et al. (filter-normalised Gaussian directions, ``biasbn`` ignored, grids
``linspace(-span, span, steps)``), plus seeds and coordinates: every result carries its axes.
Evaluation is batched over grid points (see :mod:`workbench.analysis.grid`), so a 21×21 surface
of a small CNN takes about a second on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.analysis.directions import (check_directions, mask_directions, random_directions,
                                           unwrap)
from workbench.analysis.grid import check_data, evaluate_points
from workbench.errors import ParameterError


@dataclass(frozen=True, eq=False)
class Landscape:
    """Loss and accuracy on a plane ``θ + alpha·d1 + beta·d2``.

    Attributes
    ----------
    alphas, betas : np.ndarray
        Coordinates along the first and second direction.
    loss, accuracy : np.ndarray, shape (len(betas), len(alphas))
        ``loss[j, i]`` is the mean cross-entropy at ``(alphas[i], betas[j])`` (rows are beta,
        as for ``matplotlib.contour(alphas, betas, loss)``).
    center_loss : float
        The loss at ``alpha = beta = 0`` (the model itself), evaluated exactly.
    meta : dict
        How it was computed (seed, span, norm, masked, mode, seconds, …), JSON-friendly.
    directions : tuple of dict
        The two directions (parameter name → tensor), e.g. for :func:`project_onto`.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    center_loss: float
    meta: dict = field(default_factory=dict)
    directions: tuple = field(default=(), repr=False)


@dataclass(frozen=True, eq=False)
class Curve:
    """Loss and accuracy along a line ``θ + alpha·d`` (or between two models)."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    meta: dict = field(default_factory=dict)
    directions: tuple = field(default=(), repr=False)


def axis(steps: int, span) -> np.ndarray:
    """``np.linspace(lo, hi, steps)`` for ``span`` given as ``s`` (→ ``[-s, s]``) or ``(lo, hi)``.

    Examples
    --------
    >>> axis(3, 0.5).tolist(), axis(3, (0, 2)).tolist()
    ([-0.5, 0.0, 0.5], [0.0, 1.0, 2.0])
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ParameterError(f"steps must be a positive integer, got {steps!r}")
    try:
        lo, hi = (-float(span), float(span)) if np.ndim(span) == 0 else map(float, span)
    except (TypeError, ValueError):
        raise ParameterError(f"span must be a number or a (low, high) pair, got {span!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo or (steps > 1 and hi == lo):
        raise ParameterError(f"span must give a finite interval low < high, got {span!r}")
    return np.linspace(lo, hi, int(steps))


def _setup(model, x, y, masks):
    module, masks = unwrap(model, masks)
    if x is None and y is None and hasattr(model, "data"):
        x, y = model.data.x_test, model.data.y_test
    x, y = check_data(module, x, y)
    return module, x, y, masks


def _directions(module, count, directions, seed, ignore, norm, masks):
    if directions is None:
        return random_directions(module, seed, count=count, ignore=ignore, norm=norm, masks=masks)
    dirs = check_directions(module, directions, count)
    return mask_directions(module, dirs, masks) if masks else dirs


def landscape_2d(model, x=None, y=None, *, steps: int = 21, span=1.0, seed: int = 0, masks=None,
                 ignore: str | None = "biasbn", norm: str | None = "filter", directions=None,
                 batch_size: int | None = None, chunk: int | None = None,
                 max_memory_mb: float = 1024.0, mode: str = "auto", progress=True) -> Landscape:
    """The loss surface of ``model`` on the plane of two (random, filter-normalised) directions.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified. A Variant brings its masks and, if ``x`` and ``y`` are omitted, its test
        split.
    x, y : torch.Tensor
        Inputs and integer labels.
    steps : int
        Grid points per axis.
    span : float or (low, high)
        Axis range (the same for both axes): ``s`` means ``[-s, s]``.
    seed : int
        Seed of the two random directions (see :func:`random_directions`).
    masks : dict, optional
        Layer name → keep-mask: directions are zero at pruned weights, so the plane stays in the
        pruned network's subspace.
    ignore, norm : str or None
        See :func:`random_directions`.
    directions : pair of dicts, optional
        Use these instead of random ones (e.g. Hessian eigenvectors); ``masks`` still zeroes
        pruned entries but nothing is renormalised.
    batch_size, chunk, max_memory_mb, mode
        Evaluation settings, see :func:`~workbench.analysis.grid.evaluate_points`.
    progress : bool or str
        tqdm progress bar.

    Returns
    -------
    Landscape

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> ls = landscape_2d(net, x, y, steps=5, progress=False)
    >>> ls.loss.shape, float(ls.alphas[2])
    ((5, 5), 0.0)
    >>> bool(abs(ls.loss[2, 2] - ls.center_loss) < 1e-6)
    True
    """
    module, x, y, masks = _setup(model, x, y, masks)
    alphas = axis(steps, span)
    betas = alphas.copy()
    dirs = _directions(module, 2, directions, seed, ignore, norm, masks)
    aa, bb = np.meshgrid(alphas, betas)  # rows: beta, columns: alpha
    coords = np.concatenate([[[0.0, 0.0]], np.stack([aa.ravel(), bb.ravel()], 1)])
    loss, acc, info = evaluate_points(module, x, y, coords, dirs, batch_size=batch_size,
                                      chunk=chunk, max_memory_mb=max_memory_mb, mode=mode,
                                      progress=progress, desc="landscape 2-D")
    shape = (len(betas), len(alphas))
    meta = {"kind": "random" if directions is None else "given", "steps": int(steps),
            "span": [float(alphas[0]), float(alphas[-1])],
            "seed": int(seed) if directions is None else None, "ignore": ignore, "norm": norm,
            "masked": bool(masks), "center_accuracy": float(acc[0]), **info}
    return Landscape(alphas, betas, loss[1:].reshape(shape), acc[1:].reshape(shape),
                     float(loss[0]), meta, dirs)


def landscape_1d(model, x=None, y=None, *, steps: int = 41, span=1.0, seed: int = 0, masks=None,
                 ignore: str | None = "biasbn", norm: str | None = "filter", direction=None,
                 batch_size: int | None = None, chunk: int | None = None,
                 max_memory_mb: float = 1024.0, mode: str = "auto", progress=True) -> Curve:
    """The loss along one (random, filter-normalised) direction through ``model``.

    Parameters are those of :func:`landscape_2d`; ``direction`` is a single dict. The direction
    is the first one :func:`landscape_2d` would draw with the same seed.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> c = landscape_1d(net, x, y, steps=3, progress=False)
    >>> c.alphas.tolist()
    [-1.0, 0.0, 1.0]
    """
    module, x, y, masks = _setup(model, x, y, masks)
    alphas = axis(steps, span)
    dirs = _directions(module, 1, None if direction is None else [direction], seed, ignore, norm,
                       masks)
    loss, acc, info = evaluate_points(module, x, y, alphas[:, None], dirs, batch_size=batch_size,
                                      chunk=chunk, max_memory_mb=max_memory_mb, mode=mode,
                                      progress=progress, desc="landscape 1-D")
    meta = {"kind": "random" if direction is None else "given", "steps": int(steps),
            "seed": int(seed) if direction is None else None, "ignore": ignore, "norm": norm,
            "masked": bool(masks), **info}
    return Curve(alphas, loss, acc, meta, dirs)


def interpolate(model_a, model_b, x=None, y=None, *, steps: int = 21, extrapolate: float = 0.0,
                batch_size: int | None = None, chunk: int | None = None,
                max_memory_mb: float = 1024.0, mode: str = "auto", progress=True) -> Curve:
    """Loss along the straight line from ``model_a`` (alpha=0) to ``model_b`` (alpha=1).

    Every parameter and floating-point buffer (BatchNorm running statistics included) is
    interpolated, ``(1 - alpha)·θ_a + alpha·θ_b``; integer buffers are taken from ``model_a``.

    Parameters
    ----------
    model_a, model_b : nn.Module or Variant
        Same architecture (identical state names and shapes), e.g. a model and its pruned or
        quantized variant, or two checkpoints. Neither is modified.
    x, y : torch.Tensor, optional
        Data (default: ``model_a``'s test split if it is a Variant).
    steps : int
        Points from alpha=0 to alpha=1 inclusive.
    extrapolate : float
        Extend the line by this much beyond both ends, on the same spacing (0 and 1 stay grid
        points).

    Examples
    --------
    >>> import torch
    >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> c = interpolate(a, b, x, y, steps=3, extrapolate=0.5, progress=False)
    >>> c.alphas.tolist()
    [-0.5, 0.0, 0.5, 1.0, 1.5]
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ParameterError(f"steps must be an integer >= 2, got {steps!r}")
    try:
        extrapolate = float(extrapolate)
    except (TypeError, ValueError):
        raise ParameterError(f"extrapolate must be a number >= 0, got {extrapolate!r}") from None
    if not np.isfinite(extrapolate) or extrapolate < 0:
        raise ParameterError(f"extrapolate must be a number >= 0, got {extrapolate!r}")
    a, _ = unwrap(model_a)
    b, _ = unwrap(model_b)
    if x is None and y is None and hasattr(model_a, "data"):
        x, y = model_a.data.x_test, model_a.data.y_test
    x, y = check_data(a, x, y)
    sa, sb = _float_state(a), _float_state(b)
    if sa.keys() != sb.keys() or any(sa[n].shape != sb[n].shape for n in sa):
        diff = sorted(set(sa) ^ set(sb)) or [n for n in sa if sa[n].shape != sb[n].shape]
        raise ParameterError(f"the two models differ in parameter names or shapes ({diff[:5]}); "
                             "interpolation needs the same architecture")
    direction = {n: (sb[n] - sa[n]).to(sa[n].dtype) for n in sa}
    h = 1.0 / (steps - 1)
    extra = int(np.ceil(extrapolate / h - 1e-9))
    alphas = np.arange(-extra, steps + extra) * h
    loss, acc, info = evaluate_points(a, x, y, alphas[:, None], [direction], batch_size=batch_size,
                                      chunk=chunk, max_memory_mb=max_memory_mb, mode=mode,
                                      progress=progress, desc="interpolation")
    meta = {"kind": "interpolation", "steps": int(steps), "extrapolate": extrapolate,
            "distance": float(sum(float((d.double() ** 2).sum()) for n, d in direction.items()
                                  if n in dict(a.named_parameters())) ** 0.5), **info}
    return Curve(alphas, loss, acc, meta, (direction,))


def _float_state(model: nn.Module) -> dict:
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers() if b.is_floating_point()})
    return state


__all__ = ["Landscape", "Curve", "landscape_2d", "landscape_1d", "interpolate", "axis"]

"""The Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

As in PyHessian: each run starts Lanczos from a normalised Rademacher vector ``v`` with full
reorthogonalisation; the eigenvalues of the tridiagonal matrix ``T`` are the quadrature nodes
and the squared first components of its eigenvectors the weights, so ``Σ w_i f(λ_i) ≈ vᵀ f(H) v``
and, averaged over runs, ``≈ tr f(H) / n``. The density is the weighted nodes smoothed with a
Gaussian kernel of variance ``sigma_squared · max(1, λ_max − λ_min)`` on a grid padded by
``overhead`` and normalised to integrate to one (PyHessian's ``density_generate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from workbench.cancel import tqdm  # tqdm.auto, stoppable by a CancelToken

from workbench.analysis.hessian import HessianOperator, check_positive
from workbench.errors import ParameterError


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """A smoothed Hessian eigenvalue density and the quadrature it comes from.

    Attributes
    ----------
    grid : np.ndarray
        Eigenvalue axis.
    density : np.ndarray
        Density on ``grid`` (integrates to 1 with the trapezoid/rectangle rule).
    nodes, weights : np.ndarray, shape (runs, m)
        Lanczos nodes (Ritz values) and quadrature weights per run (each row sums to 1).
        Rows shorter than ``m`` (an invariant subspace was reached) are padded with NaN / 0.
    meta : dict
        ``dim``, ``iters`` (Lanczos steps per run), ``runs``, ``seed``, ``sigma_squared``, …
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """``Σ w λ`` averaged over runs: an estimate of ``tr(H) / n``."""
        return float(np.nanmean(np.nansum(self.nodes * self.weights, axis=1)))


def lanczos(op: HessianOperator, v: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, betas)`` of ``steps`` Lanczos steps from unit ``v`` (full reorthogonalisation).

    Stops early when ``beta`` vanishes (the Krylov space is invariant), so the returned length
    may be shorter than ``steps``.
    """
    basis = torch.zeros(steps, len(v), dtype=v.dtype)
    basis[0] = v
    alphas, betas = [], []
    w = op.matvec(v)
    alpha = float(w @ v)
    alphas.append(alpha)
    w = w - alpha * v
    for k in range(1, steps):
        for _pass in range(2):  # "twice is enough" for numerical orthogonality
            w = w - basis[:k].T @ (basis[:k] @ w)
        beta = float(w.norm())
        if beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            break
        betas.append(beta)
        v = w / beta
        basis[k] = v
        w = op.matvec(v)
        alpha = float(w @ v)
        alphas.append(alpha)
        w = w - alpha * v - beta * basis[k - 1]
    return np.array(alphas), np.array(betas)


def quadrature(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the Gauss quadrature of a Lanczos tridiagonal matrix.

    Examples
    --------
    >>> import numpy as np
    >>> nodes, weights = quadrature(np.array([1.0, 1.0]), np.array([1.0]))
    >>> nodes.round(6).tolist(), weights.round(6).tolist()
    ([0.0, 2.0], [0.5, 0.5])
    """
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    nodes, vecs = np.linalg.eigh(t)
    return nodes, vecs[0] ** 2


def smooth(nodes: np.ndarray, weights: np.ndarray, bins: int = 10000, sigma_squared: float = 1e-5,
           overhead: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, density)``: Gaussian-kernel smoothing of per-run nodes and weights, as PyHessian.

    Examples
    --------
    >>> import numpy as np
    >>> grid, dens = smooth(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), bins=2001)
    >>> round(float(dens.sum() * (grid[1] - grid[0])), 6)
    1.0
    """
    lam_max = float(np.nanmean(np.nanmax(nodes, axis=1))) + overhead
    lam_min = float(np.nanmean(np.nanmin(nodes, axis=1))) - overhead
    grid = np.linspace(lam_min, lam_max, bins)
    var = sigma_squared * max(1.0, lam_max - lam_min)
    density = np.zeros(bins)
    for lam, w in zip(nodes, weights):
        ok = np.isfinite(lam)
        k = np.exp(-(grid[:, None] - lam[ok][None, :]) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
        density += k @ w[ok]
    density /= len(nodes)
    density /= density.sum() * (grid[1] - grid[0])
    return grid, density


def density(model, x=None, y=None, *, iters: int = 100, runs: int = 1, seed: int = 0,
            layer=None, masks=None, bins: int = 10000, sigma_squared: float = 1e-5,
            overhead: float = 0.01, batch_size: int | None = None,
            progress=True) -> SpectralDensity:
    """The Hessian eigenvalue density by stochastic Lanczos quadrature.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified.
    x, y : torch.Tensor, optional
        Data (default: a Variant's test split).
    iters : int
        Lanczos steps per run (capped at the number of free coordinates).
    runs : int
        Independent Rademacher starting vectors; the densities are averaged.
    seed : int
        Seed of the starting vectors.
    layer, masks, batch_size
        See :class:`~workbench.analysis.hessian.HessianOperator`.
    bins, sigma_squared, overhead
        Smoothing grid and kernel, see :func:`smooth`.
    progress : bool or str

    Returns
    -------
    SpectralDensity

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    >>> sd = density(net, x, y, iters=10, bins=500, progress=False)
    >>> sd.nodes.shape, round(float(sd.density.sum() * (sd.grid[1] - sd.grid[0])), 6)
    ((1, 10), 1.0)
    """
    op = HessianOperator(model, x, y, layer=layer, masks=masks, batch_size=batch_size)
    iters = check_positive("iters", iters)
    runs = check_positive("runs", runs)
    bins = check_positive("bins", bins)
    if bins < 2:
        raise ParameterError(f"bins must be at least 2, got {bins}")
    if not sigma_squared > 0:
        raise ParameterError(f"sigma_squared must be > 0, got {sigma_squared!r}")
    steps = min(iters, op.dim)
    gen = torch.Generator().manual_seed(int(seed))
    nodes = np.full((runs, steps), np.nan)
    weights = np.zeros((runs, steps))
    lengths = []
    bar = tqdm(total=runs, desc=progress if isinstance(progress, str) else "Hessian density",
               disable=not progress, leave=False)
    for r in range(runs):
        v = op.random_vector(gen, "rademacher")
        v = v / v.norm()
        a, b = lanczos(op, v, steps)
        lam, w = quadrature(a, b)
        nodes[r, :len(lam)], weights[r, :len(w)] = lam, w
        lengths.append(len(a))
        bar.update()
    bar.close()
    grid, dens = smooth(nodes, weights, bins, sigma_squared, overhead)
    meta = {"dim": op.dim, "iters": lengths, "runs": runs, "seed": int(seed), "layer": layer,
            "masked": op.masked, "sigma_squared": sigma_squared,
            "overhead": overhead, "samples": len(op.x)}
    return SpectralDensity(grid, dens, nodes, weights, meta)


__all__ = ["SpectralDensity", "density", "lanczos", "quadrature", "smooth"]

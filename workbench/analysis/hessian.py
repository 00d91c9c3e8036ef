"""The Hessian of the loss: products, top eigenvalues and trace (PyHessian, Yao et al. 2020).

Everything is built on Hessian-vector products by double backpropagation, over all parameters,
one layer's (``layer="features.0"``), or only the surviving weights of a pruned model
(``masks``: vectors are multiplied by the keep-masks before and after the product, so the
operator ``P H P`` acts on the subspace the pruned network lives in). The loss is the mean
cross-entropy over all of ``(x, y)`` (accumulated over batches if ``batch_size`` is smaller).
The model is evaluated in eval mode on a private copy and is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from workbench.cancel import tqdm  # tqdm.auto, stoppable by a CancelToken

from workbench.analysis.directions import parameter_masks, unwrap
from workbench.analysis.grid import check_data
from workbench.errors import ParameterError


def select_parameters(model: nn.Module, layer=None) -> list[str]:
    """Names of the parameters a Hessian is taken over.

    ``layer`` is ``None`` (all), a module name (its parameters, submodules included), a parameter
    name, or a list of these.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    >>> select_parameters(net, "1"), select_parameters(net, ["0.bias", "1.weight"])
    (['1.weight', '1.bias'], ['0.bias', '1.weight'])
    """
    names = [n for n, p in model.named_parameters()]
    if layer is None:
        return names
    wanted = [layer] if isinstance(layer, str) else list(layer)
    picked: list[str] = []
    for w in wanted:
        hits = [n for n in names if n == w or n.startswith(f"{w}.")]
        if not hits:
            modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
            raise ParameterError(f"layer {w!r} names no module or parameter with parameters; "
                                 f"modules with parameters: {modules}")
        picked += [h for h in hits if h not in picked]
    return [n for n in names if n in picked]


class HessianOperator:
    """The Hessian of the mean cross-entropy of ``model`` on ``(x, y)`` as a linear operator.

    Vectors are flat tensors over the selected parameters (``self.names``, concatenated in that
    order); :meth:`as_dict` and :meth:`from_dict` convert to and from direction dicts. With
    ``masks`` the operator is ``P H P`` (``P`` zeroes pruned weights) and :attr:`dim` counts
    only the surviving coordinates.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified (a Variant brings its masks unless ``masks`` is given).
    x, y : torch.Tensor
        Data; the loss is averaged over all of it.
    layer : str or list of str, optional
        Restrict to these modules' (or parameters') parameters.
    masks : dict, optional
        Layer name → boolean keep-mask of its weight.
    batch_size : int, optional
        Samples per double-backward pass (default: all at once, which also keeps the gradient
        graph between products).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> op = HessianOperator(net, torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    >>> op.dim, op.matvec(op.random_vector(torch.Generator().manual_seed(0))).shape
    (6, torch.Size([6]))
    """

    def __init__(self, model, x=None, y=None, *, layer=None, masks=None,
                 batch_size: int | None = None):
        module, masks = unwrap(model, masks)
        if x is None and y is None and hasattr(model, "data"):
            x, y = model.data.x_test, model.data.y_test
        self.x, self.y = check_data(module, x, y)
        self.model = copy.deepcopy(module).eval()
        self.names = select_parameters(self.model, layer)
        params = dict(self.model.named_parameters())
        for n, p in params.items():
            p.requires_grad_(n in self.names)
        self.params = [params[n] for n in self.names]
        self.sizes = [p.numel() for p in self.params]
        self.dtype = self.params[0].dtype
        pm = parameter_masks(self.model, masks)
        if any(n in pm for n in self.names):
            self.mask = torch.cat([pm[n].flatten().to(self.dtype) if n in pm
                                   else torch.ones(p.numel(), dtype=self.dtype)
                                   for n, p in zip(self.names, self.params)])
        else:
            self.mask = None
        self.dim = sum(self.sizes) if self.mask is None else int(self.mask.sum())
        if self.dim == 0:
            raise ParameterError("the selected parameters have no unpruned entry")
        n = len(self.x)
        self.batch_size = n if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._grads = None
        self.products = 0

    @property
    def masked(self) -> bool:
        return self.mask is not None

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``P v``: zero the pruned coordinates."""
        return v if self.mask is None else v * self.mask

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view_as(p) for t, p in zip(torch.split(v, self.sizes), self.params)]

    def _batch_grads(self, xb, yb):
        loss = F.cross_entropy(self.model(xb), yb)
        return torch.autograd.grad(loss, self.params, create_graph=True)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``P H P v`` by double backpropagation."""
        parts = self.unflatten(self.project(v.detach()))
        n = len(self.x)
        self.products += 1
        with torch.enable_grad():
            if self.batch_size >= n:
                if self._grads is None:
                    self._grads = self._batch_grads(self.x, self.y)
                hv = torch.autograd.grad(self._grads, self.params, grad_outputs=parts,
                                         retain_graph=True)
                out = torch.cat([h.flatten() for h in hv])
            else:
                out = torch.zeros(sum(self.sizes), dtype=self.dtype)
                for b0 in range(0, n, self.batch_size):
                    xb, yb = self.x[b0:b0 + self.batch_size], self.y[b0:b0 + self.batch_size]
                    hv = torch.autograd.grad(self._batch_grads(xb, yb), self.params,
                                             grad_outputs=parts)
                    out += (len(xb) / n) * torch.cat([h.flatten() for h in hv])
        return self.project(out.detach())

    def random_vector(self, gen: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """A seeded random vector in the subspace: Gaussian or Rademacher (±1).

        Drawn parameter by parameter (in ``self.names`` order) from ``gen``.
        """
        out = []
        for p in self.params:
            if kind == "rademacher":
                t = torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1
            else:
                t = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            out.append(t.flatten())
        return self.project(torch.cat(out))

    def as_dict(self, v: torch.Tensor) -> dict:
        """A flat vector as a direction dict (parameter name → tensor)."""
        return {n: t.detach().clone() for n, t in zip(self.names, self.unflatten(v))}

    def from_dict(self, d: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A direction dict as a flat vector (missing names are zero)."""
        unknown = set(d) - set(self.names)
        if unknown:
            raise ParameterError(f"vector names {sorted(unknown)}, which are not among the "
                                 f"selected parameters {self.names}")
        out = []
        for n, p in zip(self.names, self.params):
            t = torch.as_tensor(d[n]).to(p.dtype) if n in d else torch.zeros_like(p)
            if t.shape != p.shape:
                raise ParameterError(f"vector entry {n!r} is shaped {tuple(t.shape)}, the "
                                     f"parameter is {tuple(p.shape)}")
            out.append(t.detach().flatten())
        return torch.cat(out)


def normalize(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` (``v`` itself if it is zero).

    PyHessian divides by ``||v|| + 1e-6``, which shrinks the vector and biases every Rayleigh
    quotient low by about ``2e-6 / ||v||`` relative; exact normalisation avoids that.
    """
    norm = v.norm()
    return v if float(norm) == 0.0 else v / norm


def orthonormalize(w: torch.Tensor, basis) -> torch.Tensor:
    """``w`` made orthogonal to every (unit) vector in ``basis``, then normalised."""
    for b in basis:
        w = w - (w @ b) * b
    return normalize(w)


# --- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Eigen:
    """Dominant Hessian eigenvalues (largest magnitude first) and their unit eigenvectors.

    Attributes
    ----------
    values : np.ndarray, shape (k,)
    vectors : tuple of dict
        One direction dict (parameter name → tensor) per eigenvalue, unit norm.
    meta : dict
        ``iterations``, ``converged`` per eigenvalue, ``dim``, ``layer``, ``masked``, ``seed``.
    """

    values: np.ndarray
    vectors: tuple = field(repr=False)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Trace:
    """Hutchinson estimate of the Hessian trace: ``mean ± stderr`` from Rademacher samples."""

    mean: float
    stderr: float
    samples: np.ndarray = field(repr=False)
    meta: dict = field(default_factory=dict)


def _operator(model, x, y, layer, masks, batch_size) -> HessianOperator:
    return HessianOperator(model, x, y, layer=layer, masks=masks, batch_size=batch_size)


def hvp(model, x, y, vector, *, layer=None, masks=None, batch_size: int | None = None) -> dict:
    """Hessian-vector product ``H v`` (or ``P H P v`` with masks) as a direction dict.

    Parameters
    ----------
    model : nn.Module or Variant
    x, y : torch.Tensor
    vector : dict
        Parameter name → tensor over the selected parameters (missing names are zero).
    layer, masks, batch_size
        See :class:`HessianOperator`.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> hv = hvp(net, x, y, {"bias": torch.tensor([1.0, -1.0])})
    >>> sorted(hv), tuple(hv["weight"].shape)
    (['bias', 'weight'], (2, 3))
    """
    op = _operator(model, x, y, layer, masks, batch_size)
    return op.as_dict(op.matvec(op.from_dict(vector)))


def check_positive(name: str, value, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ParameterError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                             f"integer, got {value!r}")
    return int(value)


def top_eigenvalues(model, x=None, y=None, k: int = 1, *, iters: int = 100, tol: float = 1e-4,
                    seed: int = 0, layer=None, masks=None, batch_size: int | None = None,
                    progress=True) -> Eigen:
    """The ``k`` dominant Hessian eigenvalues by power iteration with deflation (PyHessian).

    Each eigenvector starts from a seeded Gaussian vector and is orthogonalised against the
    ones already found at every step; iteration stops when the Rayleigh quotient changes by less
    than ``tol`` relative (``|λ_t − λ_{t−1}| / (|λ_{t−1}| + 1e-6)``) or after ``iters`` products.
    "Dominant" means largest magnitude: a large negative eigenvalue is found before a small
    positive one.

    Parameters
    ----------
    model : nn.Module or Variant
    x, y : torch.Tensor, optional
        Data (default: a Variant's test split).
    k : int
        Number of eigenvalues (at most the number of free coordinates).
    iters, tol : int, float
        Power-iteration budget and relative tolerance per eigenvalue.
    seed : int
        Seed of the starting vectors.
    layer, masks, batch_size
        See :class:`HessianOperator`.
    progress : bool or str

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    >>> e = top_eigenvalues(net, x, y, k=2, progress=False)
    >>> e.values.shape, bool(abs(e.values[0]) >= abs(e.values[1]))
    ((2,), True)
    """
    op = _operator(model, x, y, layer, masks, batch_size)
    k = check_positive("k", k)
    iters = check_positive("iters", iters)
    if k > op.dim:
        raise ParameterError(f"k={k} exceeds the {op.dim} free coordinates")
    if not tol > 0:
        raise ParameterError(f"tol must be > 0, got {tol!r}")
    gen = torch.Generator().manual_seed(int(seed))
    values, vectors, used, converged = [], [], [], []
    bar = tqdm(total=k, desc=progress if isinstance(progress, str) else "top eigenvalues",
               disable=not progress, leave=False)
    for _ in range(k):
        v = normalize(op.random_vector(gen))
        value, done, it = None, False, 0
        for it in range(1, iters + 1):
            v = orthonormalize(v, vectors)
            hv = op.matvec(v)
            new = float(hv @ v)
            v = normalize(hv)
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value, done = new, True
                break
            value = new
        values.append(value)
        vectors.append(orthonormalize(v, vectors))
        used.append(it)
        converged.append(done)
        bar.update()
    bar.close()
    meta = {"iterations": used, "converged": converged, "dim": op.dim, "layer": layer,
            "masked": op.masked, "seed": int(seed), "tol": tol,
            "parameters": op.names, "samples": len(op.x)}
    return Eigen(np.array(values), tuple(op.as_dict(v) for v in vectors), meta)


def trace(model, x=None, y=None, *, samples: int = 100, seed: int = 0, layer=None, masks=None,
          batch_size: int | None = None, progress=True) -> Trace:
    """Hutchinson's estimate of ``tr(H)`` (or ``tr(P H P)``): the mean of ``vᵀHv``, ``v`` Rademacher.

    Parameters
    ----------
    samples : int
        Number of random vectors; ``stderr`` is their standard deviation over ``sqrt(samples)``.
    seed : int
        Seed of the Rademacher vectors.

    Other parameters are those of :func:`top_eigenvalues`.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    >>> t = trace(net, x, y, samples=50, progress=False)
    >>> t.mean > 0, t.samples.shape
    (True, (50,))
    """
    op = _operator(model, x, y, layer, masks, batch_size)
    samples = check_positive("samples", samples)
    gen = torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in tqdm(range(samples), desc=progress if isinstance(progress, str) else "trace",
                  disable=not progress, leave=False):
        v = op.random_vector(gen, "rademacher")
        vals.append(float(op.matvec(v) @ v))
    vals = np.array(vals)
    stderr = float(vals.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")
    meta = {"dim": op.dim, "layer": layer, "masked": op.masked,
            "seed": int(seed), "samples": len(op.x)}
    return Trace(float(vals.mean()), stderr, vals, meta)


def eigen_landscape(model, x=None, y=None, *, steps: int = 21, span=0.5, seed: int = 0,
                    layer=None, masks=None, iters: int = 100, tol: float = 1e-4,
                    batch_size: int | None = None, progress=True, **landscape_options):
    """The loss surface along the two dominant Hessian eigenvectors (unit norm, not rescaled).

    Parameters
    ----------
    steps, span
        Grid of :func:`~workbench.analysis.landscape.landscape_2d`; ``span`` is in parameter
        units along unit vectors (PyHessian's ±0.5 by default).
    seed, layer, masks, iters, tol, batch_size
        See :func:`top_eigenvalues` (``layer`` restricts the eigenvectors, and so the plane).
    landscape_options
        Passed on to :func:`~workbench.analysis.landscape.landscape_2d` (``chunk``, ``mode``,
        ``max_memory_mb``).

    Returns
    -------
    Landscape
        ``meta["eigenvalues"]`` holds the two eigenvalues.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    >>> ls = eigen_landscape(net, x, y, steps=3, progress=False)
    >>> ls.loss.shape, len(ls.meta["eigenvalues"])
    ((3, 3), 2)
    """
    from workbench.analysis.landscape import landscape_2d

    eig = top_eigenvalues(model, x, y, 2, iters=iters, tol=tol, seed=seed, layer=layer,
                          masks=masks, batch_size=batch_size, progress=progress)
    ls = landscape_2d(model, x, y, steps=steps, span=span, masks=masks, directions=eig.vectors,
                      batch_size=batch_size, progress=progress, **landscape_options)
    meta = {**ls.meta, "kind": "hessian", "seed": int(seed), "layer": layer,
            "eigenvalues": eig.values.tolist(), "eigen_converged": eig.meta["converged"]}
    return type(ls)(ls.alphas, ls.betas, ls.loss, ls.accuracy, ls.center_loss, meta,
                    ls.directions)


__all__ = ["HessianOperator", "Eigen", "Trace", "hvp", "top_eigenvalues", "trace",
           "eigen_landscape", "select_parameters"]

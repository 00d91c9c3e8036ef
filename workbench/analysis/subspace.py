"""Active subspaces of a layer: the dominant directions of the gradients at its neurons.

Following Cui, Zhang et al., "Active Subspace of Neural Networks: Structural Analysis and
Universal Attacks" (SIMODS 2020; code: chunfengc/ASNet), the *active subspace* of a layer is
spanned by the leading eigenvectors of the (uncentred) gradient covariance

    C = E[g gᵀ] ≈ (1/n) Σ_i g_i g_iᵀ,    g_i = ∂ℓ_i / ∂a(x_i),

where ``a(x)`` is the layer's output (its *neurons*) and ``ℓ_i`` the per-sample loss (or a chosen
output). Few large eigenvalues mean the network depends on few directions of that layer: its
*active dimension* (the number of leading eigenvalues holding a ``threshold`` fraction of
``trace(C)``) is the number of "active neurons" the layer really needs.

Neurons. For a Linear layer the neurons are its output features. For a Conv2d layer they are, by
default (``pool="none"``), all ``channels × height × width`` outputs, flattened channel-major
(``eigenvectors[:, k].reshape(neuron_shape)`` is a feature-map stack). With ``pool="channel"`` a
channel is one neuron and its gradient is the sum over positions ``Σ_hw ∂ℓ/∂a[c, h, w]``: the
derivative of the loss with respect to adding the same constant to every position of channel
``c`` (for a conv layer, exactly the gradient of its bias). The pseudo-layer ``"input"`` is the
model input (used by the universal attack).

How the gradients are taken. A zero *probe* tensor ``p`` is added to the layer's output by a
forward hook (``a + p``, numerically the same forward pass) and ``∂(Σ_i ℓ_i)/∂p`` is taken with
:func:`torch.autograd.grad`. In eval mode samples do not interact, so row ``i`` of that gradient is
the per-sample gradient ``g_i``; in-place operations after the layer cannot alter it, no
``.grad`` field of the model is touched, and the hooks are removed by their handles whatever
happens. The model runs in eval mode and every module's train/eval flag is restored.

Eigen-decomposition (``method``):

* ``"exact"``: ``C`` is accumulated in float64 batch by batch and decomposed with ``eigh``;
  all ``D`` eigenpairs are returned.
* ``"randomized"``: the gradient matrix ``G`` (n × D) is kept and its top right singular vectors
  found by a randomized range finder with power iterations (Halko, Martinsson & Tropp 2011;
  ``randomized_svd`` in the reference code); eigenvalues are ``s² / n``.
* ``"fd"``: a Frequent Directions sketch (Liberty 2013; ``get_ASModel_FD`` in the reference)
  streams the gradient rows through a ``2ℓ × D`` buffer with ``ℓ = min(D, 2·rank)``, so memory
  does not grow with the number of samples. Its eigenvalues under-estimate the true ones by at
  most ``‖G − G_k‖²_F / ((ℓ − k)·n)``.
* ``"auto"``: exact up to ``EXACT_LIMIT`` neurons, randomized while ``G`` fits in
  ``max_memory_mb``, Frequent Directions beyond.

``trace(C)`` is always accumulated exactly, so the active dimension of a truncated spectrum is
measured against the true total variance (it is capped at the number of computed eigenvalues).
The reference's ``active_eigs`` compares cumulative squared singular values with ``delta²``;
here the threshold applies to the eigenvalues themselves (variance fraction), as in the paper.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workbench.cancel import step
from workbench.errors import DataError, ParameterError, UnsupportedLayerError, WorkbenchError

INPUT = "input"
TARGETS = ("loss", "logit")
POOLS = ("none", "channel")
METHODS = ("auto", "exact", "randomized", "fd")
#: Largest number of neurons decomposed exactly by ``method="auto"``.
EXACT_LIMIT = 2048


@dataclass(frozen=True, eq=False)
class ActiveSubspace:
    """The gradient covariance spectrum of one layer and its active subspace.

    Attributes
    ----------
    layer : str
        Module name (or ``"input"``).
    eigenvalues : np.ndarray, shape (k,)
        Leading eigenvalues of ``C = E[g gᵀ]``, descending (all ``D`` of them for ``"exact"``).
    eigenvectors : np.ndarray, shape (D, k)
        Matching unit eigenvectors as columns; each column's largest-magnitude entry is positive.
        ``eigenvectors[:, j].reshape(neuron_shape)`` lays direction ``j`` out like the layer.
    active_dim : int
        Number of leading eigenvalues that hold ``threshold`` of ``total_variance``.
    threshold : float
    method : str
        ``"exact"``, ``"randomized"`` or ``"fd"`` (what ``"auto"`` chose).
    neuron_shape : tuple of int
        Shape of one sample's neurons (``(C, H, W)``, ``(C,)`` when channel-pooled, ``(F,)``).
    total_variance : float
        ``trace(C) = E‖g‖²``, computed exactly.
    n_samples : int
    meta : dict
        ``target``, ``pool``, ``seed``, ``rank``, ``seconds`` (JSON-friendly).
    """

    layer: str
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray = field(repr=False)
    active_dim: int
    threshold: float
    method: str
    neuron_shape: tuple
    total_variance: float
    n_samples: int
    meta: dict = field(default_factory=dict)

    @property
    def explained(self) -> np.ndarray:
        """Cumulative fraction of ``total_variance`` held by the leading eigenvalues."""
        if self.total_variance <= 0:
            return np.zeros_like(self.eigenvalues)
        return np.cumsum(np.clip(self.eigenvalues, 0, None)) / self.total_variance

    def channel_importance(self, r: int | None = None) -> np.ndarray:
        """Importance ``Σ_{k<r} λ_k Σ_{positions} v_k[c, position]²`` of every channel ``c``
        (dimension 0 of ``neuron_shape``) over the ``r`` leading eigenpairs (default: the
        active ones). With all eigenpairs it is the channel's total gradient energy.
        """
        r = self.active_dim if r is None else int(r)
        r = max(0, min(r, len(self.eigenvalues)))
        lam = np.clip(self.eigenvalues[:r], 0, None)
        v = self.eigenvectors[:, :r]
        channels = self.neuron_shape[0] if self.neuron_shape else 1
        return ((v ** 2) * lam).reshape(channels, -1).sum(axis=1)


def active_dimension(eigenvalues, threshold: float = 0.95, total: float | None = None) -> int:
    """Number of leading eigenvalues whose sum reaches ``threshold · total``.

    Parameters
    ----------
    eigenvalues : array-like
        Eigenvalues in descending order (small negative round-off counts as zero).
    threshold : float
        Fraction of the variance in (0, 1].
    total : float, optional
        The total variance (default: the sum of ``eigenvalues``); pass the exact trace when
        the spectrum is truncated. The result is capped at ``len(eigenvalues)``.

    Examples
    --------
    >>> active_dimension([4.0, 3.0, 2.0, 1.0], 0.7)
    2
    >>> active_dimension([4.0, 3.0, 2.0, 1.0], 0.71)
    3
    >>> active_dimension([0.0, 0.0])
    0
    """
    threshold = _check_threshold(threshold)
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0, None)
    total = float(lam.sum()) if total is None else float(total)
    if not total > 0 or lam.size == 0:
        return 0
    cum = np.cumsum(lam)
    k = int(np.searchsorted(cum, threshold * total * (1 - 1e-12), side="left")) + 1
    return min(k, lam.size)


# --- gradients at a layer -------------------------------------------------------------------

def _check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(threshold, bool) or not 0.0 < t <= 1.0:
        raise ParameterError(f"threshold must be a variance fraction in (0, 1], got {threshold!r}")
    return t


def _check_target(target):
    if callable(target) or target in TARGETS:
        return target
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and target >= 0:
        return int(target)
    raise ParameterError(f"target must be one of {TARGETS}, a class index or a callable "
                         f"(outputs, y) -> per-sample values, got {target!r}")


def _check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ParameterError(f"pool must be one of {POOLS}, got {pool!r}")
    return pool


def _module(model: nn.Module):
    if not isinstance(model, nn.Module) and hasattr(model, "model") and hasattr(model, "data"):
        return model.model, model.data  # a workbench Variant
    if not isinstance(model, nn.Module):
        raise ParameterError(f"expected a torch.nn.Module or a workbench Variant, got "
                             f"{type(model).__name__}")
    return model, None


def _data(model, x, y):
    """``(module, x, y)``; a Variant without x, y brings its training split."""
    module, data = _module(model)
    if x is None and y is None and data is not None:
        x, y = data.x_train, data.y_train
    if x is None or y is None:
        raise DataError("pass inputs x and labels y (or a Variant, whose training split is used)")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"x has {len(x)} samples and y has {len(y)}; they must match and be > 0")
    if y.ndim != 1:
        raise DataError(f"labels y must be a 1-D vector of class indices, got shape {tuple(y.shape)}")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return module, x.to(dtype), y.long()


def layer_names(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear layers of ``model``, in module order (the default layers
    of :func:`all_layers`)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    names = dict(model.named_modules())
    unknown = [n for n in layers if n != INPUT and (n not in names or n == "")]
    if unknown:
        raise ParameterError(f"unknown layer(s) {unknown}; layers are {['input', *layer_names(model)]} "
                             f"(or any module name: {[n for n in names if n][:20]})")
    if not layers:
        raise ParameterError("no layer to analyse")
    return list(dict.fromkeys(layers))


@contextmanager
def _eval_mode(model: nn.Module):
    """Put every module in eval mode and restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _objective(out: torch.Tensor, y: torch.Tensor, target) -> torch.Tensor:
    """Sum over samples of the per-sample target value."""
    if not torch.is_tensor(out) or out.ndim != 2:
        raise DataError(f"the model must return class scores shaped (n, classes), got "
                        f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
    if callable(target):
        values = target(out, y)
        if not torch.is_tensor(values) or values.shape != (len(y),):
            raise ParameterError(f"a callable target must return one value per sample, shape "
                                 f"({len(y)},), got {getattr(values, 'shape', type(values))}")
        return values.sum()
    if target == "loss":
        return F.cross_entropy(out, y, reduction="sum")
    if target == "logit":
        if int(y.max()) >= out.shape[1]:
            raise DataError(f"label {int(y.max())} but the model has {out.shape[1]} outputs")
        return out.gather(1, y[:, None]).sum()
    if target >= out.shape[1]:
        raise ParameterError(f"target class {target} but the model has {out.shape[1]} outputs")
    return out[:, target].sum()


def _probe_shape(shape: torch.Size, pool: str) -> tuple:
    if pool == "channel" and len(shape) > 2:
        return (shape[0], shape[1], *([1] * (len(shape) - 2)))
    return tuple(shape)


def gradient_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str],
                     on_batch: Callable[[dict], None], *, target="loss", pool: str = "none",
                     batch_size: int = 256) -> dict[str, tuple]:
    """Call ``on_batch({layer: g})`` with per-sample gradients ``g`` shaped (batch, D), batch by
    batch; return ``{layer: neuron_shape}``.

    ``model`` is used as it is (eval mode, flags restored, hooks removed); its parameters and
    their ``.grad`` are not touched. See the module docstring for ``target`` and ``pool``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> rows = []
    >>> shapes = gradient_batches(net, torch.randn(5, 3), torch.zeros(5, dtype=torch.long),
    ...                           ["0"], lambda g: rows.append(g["0"]), target="logit")
    >>> shapes, torch.cat(rows)[0].tolist()
    ({'0': (2,)}, [1.0, 0.0])
    """
    target = _check_target(target)
    pool = _check_pool(pool)
    layers = _check_layers(model, layers)
    modules = dict(model.named_modules())
    probes: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple] = {}

    def hook(name):
        def add_probe(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise UnsupportedLayerError(f"layer {name!r} returns {type(output).__name__}, not "
                                            "a tensor; pick a module with a single tensor output")
            if name in probes:
                raise UnsupportedLayerError(f"layer {name!r} is called more than once per forward "
                                            "pass; its output is not one set of neurons")
            probe = torch.zeros(_probe_shape(output.shape, pool), dtype=output.dtype,
                                device=output.device, requires_grad=True)
            probes[name] = probe
            return output + probe
        return add_probe

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers if n != INPUT]
    try:
        with _eval_mode(model), torch.enable_grad():
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                step(len(xb))  # a progress step: lets a CancelToken stop the work here
                probes.clear()
                if INPUT in layers:
                    probes[INPUT] = torch.zeros(_probe_shape(xb.shape, pool), dtype=xb.dtype,
                                                requires_grad=True)
                    xb = xb + probes[INPUT]
                try:
                    out = model(xb)
                except WorkbenchError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as err:
                    raise DataError(f"the model cannot process inputs shaped "
                                    f"{tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None
                missing = [n for n in layers if n not in probes]
                if missing:
                    raise UnsupportedLayerError(f"layer(s) {missing} are not called in the forward "
                                                "pass of the model")
                try:
                    objective = _objective(out, yb, target)
                except (IndexError, ValueError) as err:
                    if isinstance(err, WorkbenchError):
                        raise
                    raise DataError(f"cannot compute the target {target!r} from outputs shaped "
                                    f"{tuple(out.shape)} and these labels: "
                                    f"{str(err).splitlines()[0]}") from None
                grads = torch.autograd.grad(objective, [probes[n] for n in layers],
                                            allow_unused=True)
                batch = {}
                for n, g in zip(layers, grads):
                    p = probes[n]
                    g = torch.zeros_like(p) if g is None else g
                    shapes[n] = tuple(p.shape[1:2]) if pool == "channel" and p.ndim > 2 \
                        else tuple(p.shape[1:])
                    batch[n] = g.detach().reshape(len(g), -1)
                on_batch(batch)
    finally:
        for h in handles:
            h.remove()
        probes.clear()
    return shapes


def layer_gradients(model, x=None, y=None, layer: str = INPUT, *, target="loss",
                    pool: str = "none", batch_size: int = 256) -> torch.Tensor:
    """Per-sample gradients at ``layer`` as one matrix ``G`` shaped (n, D).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> G = layer_gradients(net, torch.randn(4, 3), torch.ones(4, dtype=torch.long),
    ...                     target="logit")
    >>> torch.allclose(G, net.weight[1].detach().expand(4, 3))
    True
    """
    module, x, y = _data(model, x, y)
    rows: list[torch.Tensor] = []
    gradient_batches(module, x, y, [layer], lambda g: rows.append(g[layer]), target=target,
                     pool=pool, batch_size=_positive(batch_size, "batch_size"))
    return torch.cat(rows)


# --- eigen-decomposition ------------------------------------------------------------------

def _normalize_signs(vecs: torch.Tensor) -> torch.Tensor:
    if vecs.numel() == 0:
        return vecs
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
    signs[signs == 0] = 1
    return vecs * signs


class _Exact:
    def __init__(self, dim: int):
        self.c = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, g: torch.Tensor) -> None:
        g = g.double()
        self.c += g.T @ g

    def finish(self, n: int, rank: int | None, seed: int):
        lam, vecs = torch.linalg.eigh(self.c / n)
        lam, vecs = lam.flip(0), vecs.flip(1)
        k = len(lam) if rank is None else min(rank, len(lam))
        return lam[:k], vecs[:, :k]


class _Randomized:
    def __init__(self, dim: int, oversample: int = 10, power_iterations: int = 3):
        self.rows: list[torch.Tensor] = []
        self.oversample, self.power_iterations = oversample, power_iterations

    def update(self, g: torch.Tensor) -> None:
        self.rows.append(g.double())

    def finish(self, n: int, rank: int | None, seed: int):
        G = torch.cat(self.rows)
        self.rows = []
        rank = min(rank or 64, *G.shape)
        k = min(rank + self.oversample, *G.shape)
        gen = torch.Generator().manual_seed(int(seed))
        omega = torch.randn(G.shape[1], k, generator=gen, dtype=G.dtype)
        q = torch.linalg.qr(G @ omega).Q
        for _ in range(self.power_iterations):
            q = torch.linalg.qr(G @ torch.linalg.qr(G.T @ q).Q).Q
        s, vt = _thin_svd(q.T @ G)
        return (s[:rank] ** 2) / n, vt[:rank].T


def _thin_svd(b: torch.Tensor):
    """Singular values and right singular vectors of a wide float64 matrix ``b`` (m × D, m ≤ D)
    from the eigen-decomposition of the small Gram matrix ``b bᵀ`` (much faster than an SVD
    of ``b`` for m ≪ D; directions with negligible singular values come back as zero rows)."""
    if b.shape[0] > b.shape[1]:
        _, s, vt = torch.linalg.svd(b, full_matrices=False)
        return s, vt
    lam, u = torch.linalg.eigh(b @ b.T)
    lam, u = torch.clamp(lam.flip(0), min=0), u.flip(1)
    s = torch.sqrt(lam)
    keep = s > s[0] * 1e-7 if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    vt = torch.zeros_like(b)
    vt[keep] = (u[:, keep].T @ b) / s[keep, None]
    s = torch.where(keep, s, torch.zeros_like(s))
    return s, vt


class _FrequentDirections:
    """Frequent Directions (Liberty 2013): a ``2ℓ × D`` buffer, shrunk by the ℓ-th squared
    singular value whenever it fills up; ``BᵀB ⪯ GᵀG`` throughout."""

    def __init__(self, dim: int, ell: int):
        self.ell = max(1, min(ell, dim))
        self.buf = torch.zeros(2 * self.ell, dim, dtype=torch.float64)
        self.next = 0

    def _shrink(self) -> None:
        s, vt = _thin_svd(self.buf[:self.next])
        delta = s[self.ell - 1] ** 2 if len(s) >= self.ell else s.new_zeros(())
        shrunk = torch.sqrt(torch.clamp(s[:self.ell] ** 2 - delta, min=0))
        self.buf.zero_()
        m = len(shrunk)
        self.buf[:m] = shrunk[:, None] * vt[:m]
        self.next = int((shrunk > 0).sum())

    def update(self, g: torch.Tensor) -> None:
        g = g.double()
        start = 0
        while start < len(g):
            if self.next == len(self.buf):
                self._shrink()
            take = min(len(self.buf) - self.next, len(g) - start)
            self.buf[self.next:self.next + take] = g[start:start + take]
            self.next += take
            start += take

    def finish(self, n: int, rank: int | None, seed: int):
        s, vt = _thin_svd(self.buf[:max(self.next, 1)])
        k = len(s) if rank is None else min(rank, len(s))
        return (s[:k] ** 2) / n, vt[:k].T


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choose(method: str, dim: int, n: int, max_memory_mb: float) -> str:
    if method not in METHODS:
        raise ParameterError(f"method must be one of {METHODS}, got {method!r}")
    fits = n * dim * 8 / 2 ** 20 <= max_memory_mb
    if method == "auto":
        return "exact" if dim <= EXACT_LIMIT else ("randomized" if fits else "fd")
    if method == "exact" and dim * dim * 8 / 2 ** 20 > max_memory_mb:
        raise ParameterError(f"method='exact' needs a {dim}×{dim} covariance "
                             f"({dim * dim * 8 / 2 ** 20:.0f} MB > max_memory_mb); use 'fd', "
                             "'randomized' or pool='channel'")
    if method == "randomized" and not fits:
        raise ParameterError(f"method='randomized' keeps all {n}×{dim} gradients "
                             f"({n * dim * 8 / 2 ** 20:.0f} MB > max_memory_mb); use 'fd' or "
                             "fewer samples")
    return method


def _accumulator(method: str, dim: int, rank: int | None):
    if method == "exact":
        return _Exact(dim)
    if method == "randomized":
        return _Randomized(dim)
    return _FrequentDirections(dim, 2 * (rank or 64))


def _result(layer, lam, vecs, shape, total, n, threshold, method, meta) -> ActiveSubspace:
    lam = torch.clamp(lam, min=0).numpy()
    vecs = _normalize_signs(vecs).numpy()
    return ActiveSubspace(layer, lam, vecs, active_dimension(lam, threshold, total), threshold,
                          method, tuple(int(s) for s in shape), float(total), int(n), meta)


def subspace_from_gradients(G, *, layer: str = "gradients", neuron_shape=None,
                            threshold: float = 0.95, method: str = "auto",
                            rank: int | None = None, seed: int = 0,
                            max_memory_mb: float = 512.0) -> ActiveSubspace:
    """The active subspace of given gradient rows ``G`` (n × D): ``C = GᵀG / n``.

    Parameters
    ----------
    G : array-like, shape (n, D)
        One gradient per row.
    layer, neuron_shape
        Labels of the result (``neuron_shape`` defaults to ``(D,)``).
    threshold, method, rank, seed, max_memory_mb
        See :func:`active_subspace`.

    Examples
    --------
    >>> import numpy as np
    >>> G = np.array([[3.0, 0.0], [0.0, 1.0], [-3.0, 0.0], [0.0, -1.0]])
    >>> s = subspace_from_gradients(G, threshold=0.9)
    >>> s.eigenvalues.tolist(), s.active_dim, s.eigenvectors[:, 0].tolist()
    ([4.5, 0.5], 1, [1.0, 0.0])
    """
    G = torch.as_tensor(np.asarray(G) if not torch.is_tensor(G) else G).double()
    if G.ndim != 2 or len(G) == 0:
        raise DataError(f"gradients must be a non-empty (n, D) matrix, got shape {tuple(G.shape)}")
    threshold = _check_threshold(threshold)
    rank = None if rank is None else _positive(rank, "rank")
    start = time.perf_counter()
    chosen = _choose(method, G.shape[1], len(G), max_memory_mb)
    acc = _accumulator(chosen, G.shape[1], rank)
    for i in range(0, len(G), 1024):
        acc.update(G[i:i + 1024])
    lam, vecs = acc.finish(len(G), rank, seed)
    total = float((G ** 2).sum() / len(G))
    meta = {"seed": int(seed), "rank": rank, "seconds": time.perf_counter() - start}
    return _result(layer, lam, vecs, neuron_shape or (G.shape[1],), total, len(G), threshold,
                   chosen, meta)


def _subsample(x, y, n_samples, seed):
    if n_samples is None or n_samples >= len(x):
        return x, y
    from workbench.data.dataset import stratified_indices

    idx = stratified_indices(y, _positive(n_samples, "n_samples"), seed)
    return x[idx], y[idx]


def all_layers(model, x=None, y=None, layers: Sequence[str] | None = None, *, target="loss",
               pool: str = "none", threshold: float = 0.95, method: str = "auto",
               rank: int | None = None, n_samples: int | None = None, batch_size: int = 256,
               seed: int = 0, max_memory_mb: float = 512.0) -> dict[str, ActiveSubspace]:
    """Active subspaces of several layers (default: every Conv2d and Linear layer) from one
    pass over the data, for plotting their eigenvalue decays side by side.

    Parameters and results are those of :func:`active_subspace`, one per layer, in ``layers``
    order; ``method="auto"`` decides per layer.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> spaces = all_layers(s.base, n_samples=200, pool="channel")
    >>> list(spaces)
    ['features.0', 'features.3', 'classifier.0', 'classifier.2', 'fc']
    >>> [sp.neuron_shape for sp in spaces.values()]
    [(6,), (16,), (120,), (84,), (10,)]
    """
    module, x, y = _data(model, x, y)
    threshold = _check_threshold(threshold)
    rank = None if rank is None else _positive(rank, "rank")
    layers = _check_layers(module, layer_names(module) if layers is None else layers)
    x, y = _subsample(x, y, n_samples, seed)
    n = len(x)
    start = time.perf_counter()
    accs: dict[str, object] = {}
    chosen: dict[str, str] = {}
    totals = {name: 0.0 for name in layers}

    def on_batch(batch):
        for name, g in batch.items():
            if name not in accs:
                chosen[name] = _choose(method, g.shape[1], n, max_memory_mb)
                accs[name] = _accumulator(chosen[name], g.shape[1], rank)
            accs[name].update(g)
            totals[name] += float((g.double() ** 2).sum())

    shapes = gradient_batches(module, x, y, layers, on_batch, target=target, pool=pool,
                              batch_size=_positive(batch_size, "batch_size"))
    out = {}
    for name in layers:
        lam, vecs = accs[name].finish(n, rank, seed)
        meta = {"target": target if not callable(target) else getattr(target, "__name__", "callable"),
                "pool": pool, "seed": int(seed), "rank": rank,
                "seconds": time.perf_counter() - start}
        out[name] = _result(name, lam, vecs, shapes[name], totals[name] / n, n, threshold,
                            chosen[name], meta)
    return out


def active_subspace(model, x=None, y=None, layer: str = INPUT, *, target="loss",
                    pool: str = "none", threshold: float = 0.95, method: str = "auto",
                    rank: int | None = None, n_samples: int | None = None,
                    batch_size: int = 256, seed: int = 0,
                    max_memory_mb: float = 512.0) -> ActiveSubspace:
    """The active subspace of one layer: eigenpairs of ``E[g gᵀ]`` of the gradients at its
    neurons.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified. A Variant without ``x, y`` brings its training split.
    x, y : torch.Tensor
        Inputs and integer labels.
    layer : str
        Module name (any module with one tensor output, e.g. ``"features.3"``; an activation or
        pooling module gives the post-activation neurons the paper cuts at) or ``"input"``.
    target : {"loss", "logit"}, int or callable
        Differentiate the per-sample cross-entropy, the logit of the true class, the logit of a
        given class, or ``target(outputs, y) -> (n,)`` values.
    pool : {"none", "channel"}
        Neurons of a conv layer: every output (``C·H·W``) or one per channel (gradient summed
        over positions). See the module docstring.
    threshold : float
        Variance fraction that defines ``active_dim``.
    method : {"auto", "exact", "randomized", "fd"}
        Eigen-decomposition; see the module docstring.
    rank : int, optional
        Eigenpairs to return (default: all for ``"exact"``, 64 otherwise).
    n_samples : int, optional
        Use a seeded class-stratified subset of this many samples.
    batch_size : int
    seed : int
        Seeds the subset and the randomized range finder.
    max_memory_mb : float
        Memory budget for what ``"auto"`` chooses (and a check for the others).

    Returns
    -------
    ActiveSubspace

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> sp = active_subspace(s.base, layer="features.5", n_samples=300)
    >>> sp.neuron_shape, sp.method, len(sp.eigenvalues)
    ((16, 2, 2), 'exact', 64)
    >>> 1 <= sp.active_dim < 64
    True
    """
    if not isinstance(layer, str):
        raise ParameterError(f"layer must be a module name or 'input', got {layer!r}")
    return all_layers(model, x, y, [layer], target=target, pool=pool, threshold=threshold,
                      method=method, rank=rank, n_samples=n_samples, batch_size=batch_size,
                      seed=seed, max_memory_mb=max_memory_mb)[layer]


__all__ = ["ActiveSubspace", "active_dimension", "active_subspace", "all_layers",
           "layer_gradients", "gradient_batches", "subspace_from_gradients", "layer_names",
           "EXACT_LIMIT", "INPUT"]

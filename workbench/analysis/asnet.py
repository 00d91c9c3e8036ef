"""ASNet: a network cut at a layer, projected on its active subspace, with a small new head.

Cui, Zhang et al. (SIMODS 2020; code: chunfengc/ASNet) replace everything after a layer by

    pre-model  →  flatten  →  z = Vᵣᵀ h  (top-r active directions, a bias-free Linear)  →  head

where the head is a degree-p polynomial chaos expansion (PCE) of the standardised ``z`` or a
small network. As in the reference, the PCE coefficients are first fitted by least squares to the
original network's logits (the reference's ``PCEModel.Training``), then the head is trained with
cross-entropy on the labels (the reference fine-tunes the whole ASNet with distillation; here
only the head is trained, so the pre-model stays identical to the original network's layers).

The PCE basis is the tensor product of probabilists' Hermite polynomials ``He_k`` (orthogonal for
a standard normal input) of total degree ≤ ``degree``: ``C(r + degree, degree)`` functions. The
reference uses physicists' Hermite polynomials, which span the same polynomials, so the least
squares fit is the same function.

Cost. ``params`` counts the trainable parameters of the reduced model (pre-model, projection,
head; the standardisation constants are buffers). ``macs`` are the multiply-accumulates of its
Conv2d/Linear layers (:func:`workbench.flops.layer_macs`) plus, for the PCE head, ``degree``
multiplications per basis function (the reference's ``p·(n_basis + r)`` is of the same order).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np
import torch
from torch import nn

from workbench.analysis.subspace import _check_threshold, _positive, active_subspace
from workbench.errors import DataError, ParameterError, UnsupportedLayerError
from workbench.evaluate import evaluate, predict_logits
from workbench.flops import layer_macs

HEADS = ("pce", "mlp")
#: Most basis functions a PCE head may have (C(r + degree, degree)).
MAX_BASIS = 20000


@dataclass(frozen=True, eq=False)
class ASNetResult:
    """An ASNet reduction of a model and how it compares with the original.

    Attributes
    ----------
    layer : str
        Where the network is cut (the pre-model ends with this module's output).
    r : int
        Active directions kept.
    params, macs : int
        Trainable parameters and multiply-accumulates per sample of the reduced model.
    accuracy : float
        Its test accuracy.
    base_params, base_macs : int
        The same for the original model.
    base_accuracy : float
    model : nn.Module
        The reduced model (:class:`ASNet`: ``pre``, ``projection``, ``head``), usable like any
        classifier.
    meta : dict
        ``head``, ``degree``/``hidden``, ``active_dim``, ``threshold``, ``eigenvalues``,
        ``fit_accuracy`` (least-squares PCE before training), ``train_accuracy``, ``epochs``,
        ``seed``.
    """

    layer: str
    r: int
    params: int
    macs: int
    accuracy: float
    base_params: int
    base_macs: int
    base_accuracy: float
    model: nn.Module = field(repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def param_reduction(self) -> float:
        """``base_params / params`` (the paper's "storage speedup")."""
        return self.base_params / max(self.params, 1)

    @property
    def mac_reduction(self) -> float:
        return self.base_macs / max(self.macs, 1)


class ASNet(nn.Module):
    """``head(projection(flatten(pre(x))))``."""

    def __init__(self, pre: nn.Module, projection: nn.Linear, head: nn.Module):
        super().__init__()
        self.pre = pre
        self.projection = projection
        self.head = head

    def forward(self, x):
        return self.head(self.projection(torch.flatten(self.pre(x), 1)))


def multi_indices(r: int, degree: int) -> torch.Tensor:
    """All multi-indices ``α ∈ ℕʳ`` with ``|α| ≤ degree``, by total degree (shape (M, r)).

    Examples
    --------
    >>> multi_indices(2, 2).tolist()
    [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]
    """
    rows = []
    for total in range(degree + 1):
        for combo in combinations_with_replacement(range(r), total):
            alpha = [0] * r
            for j in combo:
                alpha[j] += 1
            rows.append(alpha)
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), r)


def hermite(z: torch.Tensor, degree: int) -> torch.Tensor:
    """Probabilists' Hermite polynomials ``He_0..He_degree`` of every entry, stacked last.

    Examples
    --------
    >>> import torch
    >>> hermite(torch.tensor([2.0]), 3).tolist()   # 1, x, x²-1, x³-3x
    [[1.0, 2.0, 3.0, 2.0]]
    """
    polys = [torch.ones_like(z), z]
    for k in range(1, degree):
        polys.append(z * polys[k] - k * polys[k - 1])
    return torch.stack(polys[:degree + 1], dim=-1)


class HermiteFeatures(nn.Module):
    """The PCE basis: standardise ``z`` then ``Φ_α(z) = Π_j He_{α_j}(z_j)`` for ``|α| ≤ degree``.

    Each ``Φ_α`` is a product of at most ``degree`` non-constant factors, so the basis costs
    ``degree`` gathers of shape (n, M) whatever ``r`` is.

    Examples
    --------
    >>> import torch
    >>> f = HermiteFeatures(torch.zeros(2), torch.ones(2), degree=2)
    >>> f(torch.tensor([[1.0, 2.0]])).tolist()
    [[1.0, 1.0, 2.0, 0.0, 2.0, 3.0]]
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, degree: int = 2):
        super().__init__()
        self.degree = int(degree)
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        alpha = multi_indices(len(mean), self.degree)
        # factor t of Φ_α is He_{pow}(z_var), stored as the flat index var·(degree+1) + pow;
        # unused factors point at He_0 = 1
        factors = torch.zeros(len(alpha), max(self.degree, 1), dtype=torch.long)
        for m, a in enumerate(alpha.tolist()):
            nonzero = [(j, k) for j, k in enumerate(a) if k]
            for t, (j, k) in enumerate(nonzero):
                factors[m, t] = j * (self.degree + 1) + k
        self.register_buffer("alpha", alpha)
        self.register_buffer("factors", factors)

    @property
    def n_basis(self) -> int:
        return len(self.alpha)

    def forward(self, z):
        u = (z - self.mean) / self.std
        he = hermite(u, self.degree).flatten(1)          # (n, r·(degree + 1))
        phi = he[:, self.factors[:, 0]]
        for t in range(1, self.factors.shape[1]):
            phi = phi * he[:, self.factors[:, t]]
        return phi


class Standardize(nn.Module):
    """``(z - mean) / std`` with fixed (buffer) constants: the input scaling of the MLP head."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, z):
        return (z - self.mean) / self.std


def truncate(model: nn.Module, layer: str) -> nn.Module:
    """A copy of ``model`` that stops at ``layer`` and returns its output (the pre-model).

    Traced with ``torch.fx``; modules and operations not needed for ``layer``'s output are
    dropped.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> pre = truncate(create_model("lenet5", (1, 8, 8), 10), "features.5")
    >>> import torch; tuple(pre(torch.zeros(2, 1, 8, 8)).shape)
    (2, 16, 2, 2)
    """
    from torch import fx

    if layer not in dict(model.named_modules()) or not layer:
        raise ParameterError(f"unknown layer {layer!r}; modules are "
                             f"{[n for n, _ in model.named_modules() if n]}")
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as err:  # noqa: BLE001  any tracing failure means "cannot cut"
        raise UnsupportedLayerError(f"ASNet cuts the model with torch.fx, which cannot trace "
                                    f"{type(model).__name__}: {str(err).splitlines()[0]}") from None
    graph = gm.graph
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise UnsupportedLayerError(
            f"layer {layer!r} is called {len(calls)} times in the traced forward pass; ASNet "
            "needs a module called exactly once" + (" (a container? pick one of its layers)"
                                                    if not calls else ""))
    cut = calls[0]
    for node in reversed(nodes[nodes.index(cut) + 1:]):
        graph.erase_node(node)
    graph.output(cut)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, input_shape) -> int:
    return sum(d for d, _ in layer_macs(model, input_shape).values())


@torch.no_grad()
def _features(module: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    module.eval()
    return torch.cat([torch.flatten(module(x[i:i + batch_size]), 1)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _lstsq(basis: nn.Module, z: torch.Tensor, target: torch.Tensor, ridge: float = 1e-6,
           chunk: int = 2048) -> torch.Tensor:
    """Least-squares coefficients (M × classes) of ``basis(z) @ coef ≈ target`` (normal
    equations accumulated in chunks, with a tiny ridge for rank-deficient bases)."""
    gram, rhs = 0, 0
    for i in range(0, len(z), chunk):
        phi = basis(z[i:i + chunk]).double()
        gram = gram + phi.T @ phi
        rhs = rhs + phi.T @ target[i:i + chunk].double()
    gram += ridge * torch.trace(gram) / len(gram) * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, rhs).float()


def asnet(model, data=None, layer: str = "", *, r: int | None = None, head: str = "pce",
          degree: int = 2, hidden: int = 32, threshold: float = 0.95, max_r: int = 20,
          n_samples: int | None = 1024, epochs: int = 30, lr: float = 1e-2,
          batch_size: int = 64, seed: int = 0) -> ASNetResult:
    """Reduce ``model`` to an ASNet cut at ``layer`` and compare it with the original.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified.
    data : workbench Dataset, optional
        The training split fits the active subspace and the head, the test split measures
        accuracy (default: the Variant's data).
    layer : str
        Module whose output ends the pre-model (the paper cuts after an activation or pooling
        layer, e.g. ``"features.5"`` of LeNet-5).
    r : int, optional
        Active directions kept (default: the active dimension at ``threshold``, at most
        ``max_r``).
    head : {"pce", "mlp"}
        Polynomial chaos expansion of total degree ``degree`` with a linear output, or an MLP
        with one hidden layer of ``hidden`` ReLU units.
    threshold, max_r : float, int
        Choose ``r`` when it is not given.
    n_samples : int, optional
        Training samples (seeded, class-stratified subset) for the active subspace; the head is
        fitted on the whole training split.
    epochs, lr, batch_size : int, float, int
        Cross-entropy training of the head (Adam); ``epochs=0`` keeps the least-squares PCE.
    seed : int

    Returns
    -------
    ASNetResult

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> res = asnet(s.base, layer="features.5", r=8)
    >>> res.params < res.base_params, res.accuracy > 0.8
    (True, True)
    """
    from workbench.analysis.subspace import _module
    from workbench.train import fit

    module, own_data = _module(model)
    data = own_data if data is None else data
    if data is None or not hasattr(data, "x_train"):
        raise DataError("asnet needs a workbench Dataset (data=...) with train and test splits")
    if head not in HEADS:
        raise ParameterError(f"head must be one of {HEADS}, got {head!r}")
    degree = _positive(degree, "degree")
    hidden = _positive(hidden, "hidden")
    threshold = _check_threshold(threshold)
    max_r = _positive(max_r, "max_r")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ParameterError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(layer, str) or not layer:
        raise ParameterError("pass layer=<module name> where the network is cut, e.g. the "
                             "output of an activation or pooling layer")
    if r is not None:
        r = _positive(r, "r")
    pre = truncate(module, layer)
    space = active_subspace(module, data.x_train, data.y_train, layer, threshold=threshold,
                            n_samples=n_samples, seed=seed,
                            rank=None if r is None else max(r, max_r))
    dim = space.eigenvectors.shape[0]
    if r is None:
        r = max(1, min(space.active_dim, max_r))
    if r > space.eigenvectors.shape[1]:
        raise ParameterError(f"r={r} exceeds the {space.eigenvectors.shape[1]} directions "
                             f"available at layer {layer!r} ({dim} neurons)")
    if head == "pce" and math.comb(r + degree, degree) > MAX_BASIS:
        raise ParameterError(f"a degree-{degree} PCE on r={r} directions has "
                             f"{math.comb(r + degree, degree)} basis functions (> {MAX_BASIS}); "
                             "lower r or degree, or use head='mlp'")
    v = torch.as_tensor(space.eigenvectors[:, :r], dtype=torch.float32)
    projection = nn.Linear(dim, r, bias=False)
    with torch.no_grad():
        projection.weight.copy_(v.T)

    x_train, y_train = data.x_train, data.y_train
    z = _features(pre, x_train) @ v
    mean, std = z.mean(0), z.std(0).clamp_min(1e-8)
    num_classes = int(predict_logits(module, x_train[:1]).shape[1])
    meta = {"head": head, "active_dim": space.active_dim, "threshold": threshold,
            "eigenvalues": space.eigenvalues[:max(r, space.active_dim)].tolist(),
            "epochs": int(epochs), "seed": int(seed), "neurons": dim}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head == "pce":
            basis = HermiteFeatures(mean, std, degree)
            linear = nn.Linear(basis.n_basis, num_classes, bias=False)
            with torch.no_grad():
                coef = _lstsq(basis, z, predict_logits(module, x_train))
                linear.weight.copy_(coef.T)
            new_head = nn.Sequential(basis, linear)
            phi = torch.cat([basis(z[i:i + 2048]) for i in range(0, len(z), 2048)])
            meta.update(degree=degree, n_basis=basis.n_basis,
                        fit_accuracy=evaluate(linear, phi, y_train).accuracy)
            # the basis has no parameters: train the linear layer on the fixed features
            fit(linear, phi, y_train, epochs=int(epochs), lr=lr, batch_size=batch_size,
                seed=seed, progress=False)
        else:
            new_head = nn.Sequential(Standardize(mean, std), nn.Linear(r, hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes))
            meta.update(hidden=hidden)
            fit(new_head, z, y_train, epochs=int(epochs), lr=lr, batch_size=batch_size,
                seed=seed, progress=False)
    meta["train_accuracy"] = evaluate(new_head, z, y_train).accuracy
    reduced = ASNet(pre, projection, new_head).eval()
    input_shape = tuple(data.x_test.shape[1:])
    macs = _macs(reduced, input_shape)
    if head == "pce":
        macs += degree * new_head[0].n_basis
    return ASNetResult(
        layer=layer, r=r, params=_count_params(reduced), macs=int(macs),
        accuracy=evaluate(reduced, data.x_test, data.y_test).accuracy,
        base_params=_count_params(module), base_macs=_macs(module, input_shape),
        base_accuracy=evaluate(module, data.x_test, data.y_test).accuracy,
        model=reduced, meta=meta)


__all__ = ["ASNet", "ASNetResult", "HermiteFeatures", "asnet", "truncate", "multi_indices",
           "hermite"]

"""Directions in parameter space: seeded, filter-normalised Gaussian directions (Li et al. 2018).

A *direction* is a dict ``parameter name -> tensor`` shaped like that parameter; names missing
from the dict mean "zero along this parameter". The numerics follow the reference implementation
of Li et al. (tomgoldstein/loss-landscape, ``net_plotter.py``): directions are drawn with
``torch.randn`` (zero-mean, unlike loss-landscapes' ``torch.rand``), every filter (slice along
dim 0) of a multi-dimensional parameter is rescaled to the norm of the matching weight filter,
and 1-D parameters (biases, BatchNorm affine) are zeroed with ``ignore="biasbn"``. BatchNorm
running statistics are buffers and never part of a direction.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch
from torch import nn

from workbench.errors import ParameterError

NORMS = ("filter", "layer", None)
IGNORES = ("biasbn", None)


def unwrap(model, masks=None):
    """``(module, masks)`` from an ``nn.Module`` or a :class:`~workbench.session.Variant`.

    A Variant's own masks are used unless ``masks`` is given explicitly.
    """
    if not isinstance(model, nn.Module) and hasattr(model, "model") and hasattr(model, "masks"):
        return model.model, (dict(model.masks) if masks is None else masks)
    if not isinstance(model, nn.Module):
        raise ParameterError(f"expected a torch.nn.Module or a workbench Variant, got "
                             f"{type(model).__name__}")
    return model, masks


def parameter_masks(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> dict:
    """Layer masks (``{"features.0": keep}``) as parameter masks (``{"features.0.weight": keep}``).

    Raises :class:`ParameterError` for a mask naming no layer with a weight, or of the wrong shape.
    """
    if not masks:
        return {}
    params = dict(model.named_parameters())
    out = {}
    for layer, mask in masks.items():
        name = f"{layer}.weight"
        if name not in params:
            raise ParameterError(f"mask names layer {layer!r}, which has no weight parameter; "
                                 f"layers with weights: {sorted(n[:-7] for n in params if n.endswith('.weight'))}")
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ParameterError(f"mask of {layer!r} is shaped {tuple(mask.shape)}, its weight is "
                                 f"{tuple(params[name].shape)}")
        out[name] = mask.to(torch.bool)
    return out


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str | None = "filter") -> torch.Tensor:
    """``d`` rescaled to the norm of ``w``: per filter (dim-0 slice), per tensor, or not at all.

    The reference's ``d * ||w|| / (||d|| + 1e-10)``, so an all-zero filter stays zero.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> normalize_direction(torch.ones(2, 2), w)
    tensor([[3.5355, 3.5355],
            [0.7071, 0.7071]])
    """
    if norm is None:
        return d.clone()
    if norm == "layer":
        return d * (w.norm() / (d.norm() + 1e-10))
    if norm == "filter":
        dims = tuple(range(1, d.ndim))
        wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True) if dims else w.abs()
        dn = torch.linalg.vector_norm(d, dim=dims, keepdim=True) if dims else d.abs()
        return d * (wn / (dn + 1e-10))
    raise ParameterError(f"norm must be one of {NORMS}, got {norm!r}")


def random_directions(model, seed: int = 0, *, count: int = 1, ignore: str | None = "biasbn",
                      norm: str | None = "filter", masks=None) -> tuple[dict, ...]:
    """``count`` seeded Gaussian directions, normalised filter by filter to the model's weights.

    Parameters
    ----------
    model : nn.Module or Variant
        Not modified. A Variant contributes its masks unless ``masks`` is given.
    seed : int
        Seeds a private ``torch.Generator``; the directions are drawn one after the other from it
        (parameter by parameter in ``named_parameters`` order), so ``count=2`` gives the same
        first direction as ``count=1``.
    count : int
        Number of directions (2 for a plane).
    ignore : {"biasbn", None}
        ``"biasbn"`` zeroes the direction of every 1-D parameter (biases, BatchNorm weight and
        bias). ``None`` keeps them as the reference does: the direction *is* the parameter
        (``d = w``), so it has the parameter's norm.
    norm : {"filter", "layer", None}
        Filter-wise (Li et al.), whole-tensor, or no normalisation of multi-dimensional
        parameters.
    masks : dict, optional
        Layer name → boolean keep-mask of its weight. Entries of pruned weights are zeroed
        *before* normalising, so each filter of the direction has the norm of the masked
        weight's filter: the directions stay in the subspace the pruned network lives in.

    Returns
    -------
    tuple of dict
        ``count`` dicts ``parameter name -> tensor``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    >>> (d,) = random_directions(net, seed=0)
    >>> torch.allclose(d["0.weight"].norm(dim=1), net[0].weight.norm(dim=1))
    True
    >>> float(d["0.bias"].abs().sum())
    0.0
    """
    model, masks = unwrap(model, masks)
    if ignore not in IGNORES:
        raise ParameterError(f"ignore must be one of {IGNORES}, got {ignore!r}")
    if norm not in NORMS:
        raise ParameterError(f"norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(count, int) or count < 1:
        raise ParameterError(f"count must be a positive integer, got {count!r}")
    pmasks = parameter_masks(model, masks)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(count):
        direction = {}
        for name, p in model.named_parameters():
            w = p.detach()
            d = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            if name in pmasks:
                keep = pmasks[name].to(w.dtype)
                w, d = w * keep, d * keep
            if w.ndim <= 1:
                d = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
            else:
                d = normalize_direction(d, w, norm)
            direction[name] = d
        out.append(direction)
    return tuple(out)


def check_directions(model: nn.Module, directions, count: int | None = None,
                     buffers: bool = False) -> tuple[dict, ...]:
    """Validate user directions (dicts or lists in ``parameters()`` order) against ``model``."""
    if isinstance(directions, Mapping):
        directions = (directions,)
    directions = tuple(directions)
    if count is not None and len(directions) != count:
        raise ParameterError(f"expected {count} direction(s), got {len(directions)}")
    state = dict(model.named_parameters())
    if buffers:
        state.update(model.named_buffers())
    names = [n for n, _ in model.named_parameters()]
    out = []
    for i, d in enumerate(directions):
        if not isinstance(d, Mapping):
            d = list(d)
            if len(d) != len(names):
                raise ParameterError(f"direction {i} is a list of {len(d)} tensors, the model has "
                                     f"{len(names)} parameters")
            d = dict(zip(names, d))
        for n, t in d.items():
            if n not in state:
                raise ParameterError(f"direction {i} names {n!r}, which is not a parameter of "
                                     "the model")
            if tuple(t.shape) != tuple(state[n].shape):
                raise ParameterError(f"direction {i}: {n!r} is shaped {tuple(t.shape)}, the "
                                     f"parameter is {tuple(state[n].shape)}")
        out.append({n: torch.as_tensor(t).detach().to(state[n].dtype) for n, t in d.items()})
    return tuple(out)


def mask_directions(model: nn.Module, directions, masks) -> tuple[dict, ...]:
    """Directions with the entries of pruned weights set to zero (no renormalisation)."""
    pmasks = parameter_masks(model, masks)
    return tuple({n: t * pmasks[n].to(t.dtype) if n in pmasks else t for n, t in d.items()}
                 for d in directions)


class Projection(NamedTuple):
    """Least-squares coordinates of ``other - model`` in the span of the directions."""

    alpha: float
    beta: float
    residual_norm: float
    offset_norm: float


def project_onto(model, other, directions: Sequence[Mapping[str, torch.Tensor]]) -> Projection:
    """Where ``other`` lies on a landscape of ``model``: least-squares ``(alpha, beta)``.

    Solves ``min ||(θ_other − θ_model) − alpha·d1 − beta·d2||`` over all parameters. A small
    ``residual_norm`` (compared with ``offset_norm = ||θ_other − θ_model||``) means the point is
    close to the plane and the landscape's value at ``(alpha, beta)`` describes it.

    Parameters
    ----------
    model, other : nn.Module or Variant
        Same parameter names and shapes (e.g. a dense model and a pruned variant of it).
    directions : sequence of one or two direction dicts
        E.g. ``Landscape.directions``. With one direction, ``beta`` is 0.

    Examples
    --------
    >>> import torch
    >>> a = torch.nn.Linear(2, 1)
    >>> b = torch.nn.Linear(2, 1)
    >>> d1 = {n: pb.detach() - pa.detach() for (n, pa), pb in zip(a.named_parameters(), b.parameters())}
    >>> p = project_onto(a, b, [d1, {n: torch.zeros_like(t) for n, t in d1.items()}])
    >>> round(p.alpha, 6), round(p.residual_norm, 6)
    (1.0, 0.0)
    """
    model, _ = unwrap(model)
    other, _ = unwrap(other)
    pa, pb = dict(model.named_parameters()), dict(other.named_parameters())
    if pa.keys() != pb.keys() or any(pa[n].shape != pb[n].shape for n in pa):
        raise ParameterError("the two models have different parameter names or shapes (a "
                             "physically slimmed model cannot be placed on the dense landscape)")
    dirs = check_directions(model, directions)
    if not 1 <= len(dirs) <= 2:
        raise ParameterError(f"project_onto takes one or two directions, got {len(dirs)}")
    k = len(dirs)
    gram = torch.zeros(k, k, dtype=torch.float64)
    rhs = torch.zeros(k, dtype=torch.float64)
    offset_sq = 0.0
    offsets = {}
    for n in pa:
        off = (pb[n].detach() - pa[n].detach()).double().flatten()
        offsets[n] = off
        offset_sq += float(off @ off)
        ds = [d[n].double().flatten() if n in d else None for d in dirs]
        for i in range(k):
            if ds[i] is None:
                continue
            rhs[i] += ds[i] @ off
            for j in range(k):
                if ds[j] is not None:
                    gram[i, j] += ds[i] @ ds[j]
    coef = torch.linalg.lstsq(gram, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    res_sq = 0.0
    for n, off in offsets.items():
        r = off.clone()
        for i, d in enumerate(dirs):
            if n in d:
                r -= coef[i] * d[n].double().flatten()
        res_sq += float(r @ r)
    return Projection(float(coef[0]), float(coef[1]) if k == 2 else 0.0, res_sq ** 0.5,
                      offset_sq ** 0.5)


__all__ = ["random_directions", "normalize_direction", "project_onto", "Projection",
           "check_directions", "mask_directions", "parameter_masks", "unwrap"]

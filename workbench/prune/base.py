"""The shared contract of every pruning method, and the mask helpers they build on.

A pruning method is a function registered with :func:`register_pruner`::

    fn(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
       per_layer_sparsity=None, **params) -> Pruned

It must not modify ``model``; it returns a :class:`Pruned` with a new module whose pruned weights
are exactly zero (or, for structured methods, a physically slimmed module) plus the boolean masks.
``sparsity`` is the fraction of prunable weights (Conv2d/Linear ``weight``; biases and BatchNorm
are never pruned) to remove: per layer (``scope="layer"``) or over all layers together
(``scope="global"``). Layers named in ``exclude`` (module names, or a prefix of them) keep all
their weights.

Per-layer sparsity (the same design as quantization's ``per_layer_bits``):
``per_layer_sparsity`` maps layer names to their own sparsity in [0, 1); layers it does not name
use ``sparsity``. It needs ``scope="layer"`` (a global ranking has no per-layer targets), and
every name must be a pruned layer (not unknown, not excluded); :func:`layer_targets` checks this
with clear :class:`ParameterError` messages. Methods registered with ``per_layer=True`` honour
it (each layer then reaches its own target); the others (N:M, whose sparsity is fixed by the
pattern, and the structured methods, which remove one fraction of channels from every layer and
residual group) take the keyword only to refuse a non-empty mapping with
:func:`refuse_per_layer`. Recipes store it as a plain mapping, so it round-trips through YAML and
JSON.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.registry import Registry

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
SCOPES = ("layer", "global")


@dataclass(frozen=True, eq=False)
class Pruned:
    """What a pruning method returns.

    Attributes
    ----------
    model : nn.Module
        A new module (never the input) with the pruning applied.
    masks : dict[str, torch.Tensor]
        Layer name → boolean mask shaped like the layer's weight (True = kept). Empty for
        structured methods that physically remove channels.
    info : dict
        Method-specific details (kept channels, schedule, …), JSON-friendly.
    """

    model: nn.Module
    masks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerInfo:
    """Registry entry: the function plus what the UI and the contract tests need to know."""

    name: str
    fn: Callable[..., Pruned]
    reference: str
    needs_data: bool = False
    structured: bool = False
    trains: bool = False
    #: Honours ``per_layer_sparsity`` (False: refuses a non-empty one with a ParameterError).
    per_layer: bool = True

    def __call__(self, *args, **kwargs) -> Pruned:
        return self.fn(*args, **kwargs)


PRUNERS: Registry[PrunerInfo] = Registry("pruning method")


def register_pruner(name: str, *, reference: str, needs_data: bool = False,
                    structured: bool = False, trains: bool = False, per_layer: bool = True):
    """Register a pruning function under ``name`` (see the module docstring for the contract)."""

    def add(fn):
        PRUNERS.register(name)(PrunerInfo(name, fn, reference, needs_data, structured, trains,
                                          per_layer))
        return fn

    return add


def check_sparsity(sparsity) -> float:
    """``sparsity`` as a float in [0, 1), or a clear :class:`ParameterError`."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ParameterError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0 or s != s:
        raise ParameterError(f"sparsity must lie in [0, 1) (1 would remove every weight), got {s}")
    return s


def layer_targets(per_layer_sparsity, sparsity: float, layers: Iterable[str],
                  scope: str = "layer") -> dict[str, float] | None:
    """Each pruned layer's own sparsity, or ``None`` when ``per_layer_sparsity`` is empty.

    ``layers`` are the layers being pruned (after ``exclude``); layers the mapping does not name
    get ``sparsity``. Raises :class:`ParameterError` for a non-mapping, a name that is not a
    pruned layer, a value outside [0, 1), or a scope other than ``"layer"``.

    Examples
    --------
    >>> layer_targets({"fc": 0.9}, 0.5, ["conv", "fc"])
    {'conv': 0.5, 'fc': 0.9}
    >>> layer_targets(None, 0.5, ["conv", "fc"]) is None
    True
    """
    if per_layer_sparsity is None or (isinstance(per_layer_sparsity, Mapping)
                                      and not per_layer_sparsity):
        return None
    if not isinstance(per_layer_sparsity, Mapping):
        raise ParameterError(f"per_layer_sparsity must map layer names to sparsities, e.g. "
                             f"{{'fc': 0.9}}, got {type(per_layer_sparsity).__name__}")
    if scope != "layer":
        raise ParameterError(f"per_layer_sparsity sets each layer's own sparsity, so it needs "
                             f"scope='layer', got scope={scope!r}")
    layers = list(layers)
    unknown = [str(n) for n in per_layer_sparsity if n not in layers]
    if unknown:
        raise ParameterError(f"per_layer_sparsity names {unknown}, which are not pruned layers "
                             f"(unknown or excluded); the pruned layers are {layers}")
    out = {}
    for name in layers:
        value = per_layer_sparsity.get(name, sparsity)
        try:
            out[name] = check_sparsity(value)
        except ParameterError:
            raise ParameterError(f"per_layer_sparsity of layer {name!r} must be a number in "
                                 f"[0, 1), got {value!r}") from None
    return out


def refuse_per_layer(per_layer_sparsity, method: str, why: str) -> None:
    """A :class:`ParameterError` if ``per_layer_sparsity`` is given to a method that cannot
    honour it (``why`` says why); ``None`` or an empty mapping pass.

    Examples
    --------
    >>> refuse_per_layer(None, "nm", "N:M fixes the sparsity")
    """
    if per_layer_sparsity is None or (isinstance(per_layer_sparsity, Mapping)
                                      and not per_layer_sparsity):
        return
    raise ParameterError(f"{method} does not take per_layer_sparsity: {why}")


def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a clear :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), or a :class:`ParameterError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (v >= 0 if allow_zero else v > 0) or v == float("inf"):
        raise ParameterError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                             f"number, got {value!r}")
    return v


def require_data(data, method: str, model: nn.Module | None = None):
    """``data``, or a :class:`ParameterError` saying that ``method`` needs training data; with
    ``model``, also a :class:`~workbench.errors.DataError` if the model cannot read it."""
    from workbench.errors import DataError

    if data is None:
        raise ParameterError(f"{method} needs training data: pass data=<workbench Dataset> "
                             "(a Session passes its own)")
    if model is not None:
        x = data.x_train[:2]
        try:
            with torch.no_grad():
                clone(model)(x)
        except Exception as err:  # noqa: BLE001  any failure here means "does not fit"
            raise DataError(f"{method}: the model cannot process the training inputs shaped "
                            f"{tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None
    return data


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ParameterError(f"scope must be one of {SCOPES}, got {scope!r}")
    return scope


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Conv2d and Linear layers of ``model`` by module name, minus ``exclude``.

    Raises :class:`ParameterError` if an ``exclude`` entry names no module.
    """
    exclude = tuple(exclude or ())
    names = {n for n, _ in model.named_modules()}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise ParameterError(f"exclude names unknown layers {unknown}; layers are: "
                             f"{[n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]}")
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, PRUNABLE_TYPES) and not _excluded(n, exclude)}
    if not layers:
        raise UnsupportedLayerError(
            "the model has no prunable Conv2d or Linear layer left after exclusions"
        )
    return layers


def clone(model: nn.Module) -> nn.Module:
    """An independent deep copy of ``model`` (hooks included), in eval mode."""
    return copy.deepcopy(model).eval()


def masks_from_scores(scores: Mapping[str, torch.Tensor], sparsity: float, scope: str = "layer",
                      min_keep: float = 0.0,
                      per_layer_sparsity: Mapping[str, float] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that remove the lowest-scoring weights.

    Per layer: each layer loses ``round(s * n)`` weights, ``s`` its entry in
    ``per_layer_sparsity`` or else ``sparsity`` (see :func:`layer_targets`). Global: the
    ``round(sparsity * total)`` lowest scores over all layers go, but every layer keeps at least
    ``ceil(min_keep * n)`` of its weights (GlobalMP's minimum threshold); the shortfall is taken
    from the next-lowest scores elsewhere so the total is still exact when possible. Ties are
    broken by position, so the masks are deterministic.

    Examples
    --------
    >>> import torch
    >>> m = masks_from_scores({"a": torch.arange(4.0), "b": torch.arange(4.0)}, 0.5,
    ...                       per_layer_sparsity={"b": 0.75})
    >>> m["a"].tolist(), m["b"].tolist()
    ([False, False, True, True], [False, False, False, True])
    """
    sparsity = check_sparsity(sparsity)
    check_scope(scope)
    if not 0.0 <= min_keep <= 1.0:
        raise ParameterError(f"min_keep must lie in [0, 1], got {min_keep}")
    targets = layer_targets(per_layer_sparsity, sparsity, scores, scope) or {}
    masks = {}
    if scope == "layer":
        for name, s in scores.items():
            flat = s.detach().flatten().float()
            k = int(round(targets.get(name, sparsity) * flat.numel()))
            mask = torch.ones(flat.numel(), dtype=torch.bool)
            if k:
                mask[torch.argsort(flat, stable=True)[:k]] = False
            masks[name] = mask.view_as(s)
        return masks
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    sizes = [scores[n].numel() for n in names]
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    total_k = int(round(sparsity * flat.numel()))
    order = torch.argsort(flat, stable=True)
    budget = torch.tensor([n - int(-(-min_keep * n // 1)) for n in sizes])  # max removable per layer
    removed = torch.zeros(len(names), dtype=torch.long)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if min_keep == 0.0:
        keep[order[:total_k]] = False
    else:
        count = 0
        for i in order.tolist():
            if count >= total_k:
                break
            o = owner[i]
            if removed[o] < budget[o]:
                keep[i] = False
                removed[o] += 1
                count += 1
    out, start = {}, 0
    for n, size in zip(names, sizes):
        out[n] = keep[start:start + size].view_as(scores[n])
        start += size
    return out


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with weights zeroed where the masks are False."""
    from workbench.train import apply_masks_

    out = clone(model)
    apply_masks_(out, masks)
    return out


def weight_scores(model: nn.Module, exclude=(), fn=torch.abs) -> dict[str, torch.Tensor]:
    """``fn(weight)`` for every prunable layer (the magnitude criterion by default)."""
    return {n: fn(m.weight.detach()) for n, m in prunable_layers(model, exclude).items()}

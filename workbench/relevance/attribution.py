"""The result of every attribution method, the registry of methods, and the checks they share.

An attribution method is a function registered with :func:`register_attribution`::

    fn(model, x, target=None, **params) -> Attribution

It explains the output ``target`` (default: the predicted class) of ``model`` for every sample of
the batch ``x`` with a map shaped like ``x``. It never modifies ``model``: it works on a private
copy in eval mode (:func:`explained_copy`), so hooks, rules and canonizers only ever touch that
copy, and nothing is left behind even when it raises.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from workbench.errors import DataError, ParameterError
from workbench.registry import Registry


@dataclass(frozen=True, eq=False)
class Attribution:
    """Input attribution maps of a batch.

    Attributes
    ----------
    maps : torch.Tensor
        One map per sample, shaped like the input batch (``(n, C, H, W)`` for images).
    target : torch.Tensor
        The explained output index of every sample, shape ``(n,)`` (long).
    method : str
        The registered method name (``"lrp"``, ``"saliency"`` …).
    meta : dict
        Method details: parameters, the explained output ``score`` (``(n,)`` tensor), for LRP the
        rule of every layer, the backend used, folded BatchNorms …
    """

    maps: torch.Tensor
    target: torch.Tensor
    method: str
    meta: dict = field(default_factory=dict)

    @property
    def totals(self) -> torch.Tensor:
        """Sum of every map, shape ``(n,)`` (for LRP: the relevance that reached the input)."""
        return self.maps.flatten(1).sum(1)

    def __repr__(self) -> str:
        return (f"Attribution(method={self.method!r}, maps={tuple(self.maps.shape)}, "
                f"target={self.target.tolist()[:8]}{'…' if len(self.target) > 8 else ''})")


@dataclass(frozen=True)
class AttributionInfo:
    """Registry entry of an attribution method."""

    name: str
    fn: Callable[..., Attribution]
    reference: str

    def __call__(self, *args, **kwargs) -> Attribution:
        return self.fn(*args, **kwargs)


ATTRIBUTIONS: Registry[AttributionInfo] = Registry("attribution method")


def register_attribution(name: str, *, reference: str):
    """Register ``fn(model, x, target=None, **params) -> Attribution`` under ``name``."""

    def add(fn):
        ATTRIBUTIONS.register(name)(AttributionInfo(name, fn, reference))
        return fn

    return add


def check_input(x) -> torch.Tensor:
    """``x`` as a detached floating-point batch (at least 2-D), or a :class:`DataError`."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch.Tensor batch, got {type(x).__name__}")
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"x must be a non-empty batch shaped (n, ...), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.float()
    if not torch.isfinite(x).all():
        raise DataError("x contains NaN or Inf values")
    if x.is_inference():  # made under torch.inference_mode: a normal copy can enter autograd
        with torch.inference_mode(False):
            x = x.clone()
    return x.detach()


def autograd_on(fn):
    """Run ``fn`` with autograd available, even when called under ``torch.no_grad`` or
    ``torch.inference_mode`` (explanations need gradients)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


def explained_copy(model: nn.Module) -> nn.Module:
    """A private deep copy of ``model`` in eval mode with frozen parameters (never the input)."""
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    net = copy.deepcopy(model).eval()
    net.requires_grad_(False)
    return net


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample output indices: the predicted class for ``None``, else an int or a sequence.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    >>> resolve_target(None, logits).tolist(), resolve_target(1, logits).tolist()
    ([1, 0], [1, 1])
    """
    if logits.ndim != 2:
        raise DataError(f"the model must output class scores shaped (n, classes), got shape "
                        f"{tuple(logits.shape)}")
    n, classes = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ParameterError(f"target must be an int or a sequence of ints, got {target!r}")
    t = t.long().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if len(t) != n:
        raise ParameterError(f"target has {len(t)} entries for {n} samples")
    if (t < 0).any() or (t >= classes).any():
        raise ParameterError(f"target must lie in [0, {classes}), got {t.unique().tolist()}")
    return t.clone()


def one_hot_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A tensor like ``logits`` holding the target logit of each row and zero elsewhere: the
    initial relevance of LRP."""
    out = torch.zeros_like(logits)
    idx = target[:, None]
    return out.scatter_(1, idx, logits.detach().gather(1, idx))


def logits_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` without autograd, or a :class:`DataError` if ``x`` does not fit ``net``."""
    with torch.no_grad():
        try:
            return net(x)
        except Exception as err:  # noqa: BLE001  any failure here means "does not fit"
            raise DataError(f"the model cannot process inputs shaped {tuple(x.shape[1:])}: "
                            f"{str(err).splitlines()[0]}") from err


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1, or a :class:`ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    return int(value)

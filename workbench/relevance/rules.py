"""LRP rules: how one layer hands the relevance of its outputs down to its inputs.

Every rule follows the *gradient trick* of Montavon et al. (2019, "Layer-Wise Relevance
Propagation: An Overview", sec. 10.2): with the layer's function evaluated on modified
parameters or inputs, ``z = f(x)``, the relevance ``R`` of the outputs becomes

    s = R / stabilize(z)          (element-wise; stabilize adds ±epsilon away from zero)
    R_in = x * grad_x(z · s)      (one vector-Jacobian product)

so for a linear layer ``R_in[i] = sum_j x[i] w[i, j] / z[j] · R[j]``. The rules differ in
``z``:

=============  =========================================================================
epsilon        ``z = W x + b``; a larger ``epsilon`` absorbs weak or contradictory relevance.
gamma          ``W + gamma·W⁺`` and ``b + gamma·b⁺`` (favours positive contributions; for
               non-negative inputs; ``gamma → 0`` is epsilon).
alphabeta      positive and negative contributions ``x_i w_ij`` separately:
               ``alpha·R⁺ − beta·R⁻`` (``alpha − beta = 1`` conserves relevance).
zplus          ``alpha=1, beta=0`` (only positive contributions; maps ≥ 0 if ``R ≥ 0``).
zbox           ``W x − W⁺ l − W⁻ h`` for inputs bounded by ``[l, h]`` (the input layer, z^B).
flat           ``W = 1, x = 1``: spread uniformly over the receptive field.
wsquare        ``W², x = 1``.
identity       hand the relevance through unchanged (element-wise layers: ReLU …).
=============  =========================================================================

Biases take part in ``z`` but receive no relevance, so relevance is conserved exactly only
for bias-free layers (and in the limit ``epsilon → 0``); the stabilizer ``epsilon`` absorbs the
rest. Each rule is a frozen dataclass; ``relevance(module, inputs, R)`` returns one tensor per
input. Parameter-free modules (pooling, the residual :class:`~workbench.relevance.canonize.Sum`)
only accept ``epsilon`` (computed on the module's own function) and ``identity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.registry import Registry

RULES: Registry[type] = Registry("LRP rule")


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon·sign(z)`` with ``sign(0) = +1`` (never zero for ``epsilon > 0``).

    Examples
    --------
    >>> import torch
    >>> stabilize(torch.tensor([-2.0, 0.0, 3.0]), 0.5)
    tensor([-2.5000,  0.5000,  3.5000])
    """
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def has_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor)


def _affine(module, x, weight, bias=None):
    """``module``'s function on ``x`` with the given weight and bias (``None``: zero bias)."""
    params = {"weight": weight}
    if getattr(module, "bias", None) is not None:
        params["bias"] = torch.zeros_like(module.bias) if bias is None else bias
    return functional_call(module, params, (x,))


def _params(module):
    b = module.bias.detach() if getattr(module, "bias", None) is not None else None
    return module.weight.detach(), b


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _non_negative(value, name) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not v >= 0 or v == float("inf") or isinstance(value, bool):
        raise ParameterError(f"{name} must be a non-negative number, got {value!r}")
    return v


@dataclass(frozen=True)
class Rule:
    """Base class: subclasses set ``name`` and implement :meth:`relevance`."""

    name: ClassVar[str] = "rule"
    needs_weight: ClassVar[bool] = True

    def check(self, layer: str, module: nn.Module) -> None:
        """Raise :class:`UnsupportedLayerError` if this rule cannot explain ``module``."""
        if self.needs_weight and not has_weight(module):
            raise UnsupportedLayerError(
                f"rule {self.name!r} needs a layer with weights; layer {layer!r} "
                f"({type(module).__name__}) has none (use 'epsilon' or 'identity')")

    def relevance(self, module: nn.Module, inputs: tuple, R: torch.Tensor) -> tuple:
        raise NotImplementedError


def register_rule(cls):
    RULES.register(cls.name)(cls)
    return cls


@register_rule
@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: ``R_i = sum_j x_i w_ij / (z_j ± ε) R_j`` (also any parameter-free module:
    pooling, sums, unfolded BatchNorm, with ``z`` its output).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[1.0, 3.0]]))
    >>> Epsilon(0.0).relevance(lin, (torch.tensor([[1.0, 1.0]]),), torch.tensor([[8.0]]))[0]
    tensor([[2., 6.]])
    """

    epsilon: float = 1e-6
    name: ClassVar[str] = "epsilon"
    needs_weight: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _non_negative(self.epsilon, "epsilon"))

    def relevance(self, module, inputs, R):
        xs = tuple(_leaf(x) for x in inputs)
        z = _affine(module, xs[0], *_params(module)) if has_weight(module) else module(*xs)
        grads = torch.autograd.grad(z, xs, R / stabilize(z, self.epsilon), allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else x.detach() * g
                     for x, g in zip(xs, grads))


@register_rule
@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: weights ``w + γ·w⁺`` and bias ``b + γ·b⁺`` (meant for non-negative inputs).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[1.0, -1.0]]))
    >>> Gamma(1.0, epsilon=0.0).relevance(lin, (torch.tensor([[1.0, 1.0]]),),
    ...                                   torch.tensor([[1.0]]))[0]
    tensor([[ 2., -1.]])
    """

    gamma: float = 0.25
    epsilon: float = 1e-6
    name: ClassVar[str] = "gamma"

    def __post_init__(self):
        object.__setattr__(self, "gamma", _non_negative(self.gamma, "gamma"))
        object.__setattr__(self, "epsilon", _non_negative(self.epsilon, "epsilon"))

    def relevance(self, module, inputs, R):
        w, b = _params(module)
        w = w + self.gamma * w.clamp(min=0)
        b = None if b is None else b + self.gamma * b.clamp(min=0)
        x = _leaf(inputs[0])
        z = _affine(module, x, w, b)
        (g,) = torch.autograd.grad(z, x, R / stabilize(z, self.epsilon))
        return (x.detach() * g,)


@register_rule
@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: ``R_i = sum_j (α z⁺_ij / z⁺_j − β z⁻_ij / z⁻_j) R_j`` with ``z_ij = x_i w_ij``
    split by sign (``z⁺_j`` includes ``b⁺``, ``z⁻_j`` includes ``b⁻``).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[2.0, -1.0]]))
    >>> AlphaBeta(2.0, 1.0, epsilon=0.0).relevance(lin, (torch.tensor([[1.0, 1.0]]),),
    ...                                            torch.tensor([[1.0]]))[0]
    tensor([[ 2., -1.]])
    """

    alpha: float = 2.0
    beta: float = 1.0
    epsilon: float = 1e-6
    name: ClassVar[str] = "alphabeta"

    def __post_init__(self):
        for k in ("alpha", "beta", "epsilon"):
            object.__setattr__(self, k, _non_negative(getattr(self, k), k))

    def _part(self, module, xp, xn, w_a, w_b, b, R, sign):
        """``xp * grad(f(xp; w_a, b)) + xn * grad(f(xn; w_b))`` against ``R / z``."""
        xp, xn = _leaf(xp), _leaf(xn)
        z = _affine(module, xp, w_a, b) + _affine(module, xn, w_b, None)
        gp, gn = torch.autograd.grad(z, (xp, xn), R / (z + sign * self.epsilon))
        return (xp * gp + xn * gn).detach()

    def relevance(self, module, inputs, R):
        w, b = _params(module)
        x = inputs[0].detach()
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        out = self.alpha * self._part(module, xp, xn, wp, wn,
                                      None if b is None else b.clamp(min=0), R, 1.0)
        if self.beta:
            out = out - self.beta * self._part(module, xp, xn, wn, wp,
                                               None if b is None else b.clamp(max=0), R, -1.0)
        return (out,)


@register_rule
@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """LRP-z⁺ (= α1β0): only positive contributions ``x_i w_ij > 0`` share the relevance.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[2.0, -1.0]]))
    >>> ZPlus(epsilon=0.0).relevance(lin, (torch.tensor([[1.0, 1.0]]),), torch.tensor([[1.0]]))[0]
    tensor([[1., 0.]])
    """

    alpha: float = 1.0
    beta: float = 0.0
    name: ClassVar[str] = "zplus"

    def __post_init__(self):
        super().__post_init__()
        if (self.alpha, self.beta) != (1.0, 0.0):
            raise ParameterError("zplus is alphabeta with alpha=1, beta=0; use 'alphabeta' for "
                                 "other values")


@register_rule
@dataclass(frozen=True)
class ZBox(Rule):
    """LRP-z^B for an input layer whose inputs lie in ``[low, high]`` (Montavon et al. 2017):
    ``z_ij = x_i w_ij − l_i w⁺_ij − h_i w⁻_ij``. ``low``/``high`` are numbers or tensors that
    broadcast against one sample; ``None`` takes the minimum / maximum of the explained batch.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[1.0, -1.0]]))
    >>> ZBox(0.0, 1.0, epsilon=0.0).relevance(lin, (torch.tensor([[0.5, 0.5]]),),
    ...                                       torch.tensor([[1.0]]))[0]
    tensor([[0.5000, 0.5000]])
    """

    low: float | torch.Tensor | None = None
    high: float | torch.Tensor | None = None
    epsilon: float = 1e-6
    name: ClassVar[str] = "zbox"

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _non_negative(self.epsilon, "epsilon"))

    def bounds(self, x: torch.Tensor):
        low = x.min() if self.low is None else torch.as_tensor(self.low, dtype=x.dtype)
        high = x.max() if self.high is None else torch.as_tensor(self.high, dtype=x.dtype)
        low, high = low.expand_as(x).detach(), high.expand_as(x).detach()
        if (low > high).any():
            raise ParameterError("zbox needs low <= high")
        return low, high

    def relevance(self, module, inputs, R):
        w, b = _params(module)
        x = _leaf(inputs[0])
        low, high = (_leaf(t) for t in self.bounds(inputs[0].detach()))
        z = (_affine(module, x, w, b) - _affine(module, low, w.clamp(min=0))
             - _affine(module, high, w.clamp(max=0)))
        gx, gl, gh = torch.autograd.grad(z, (x, low, high), R / stabilize(z, self.epsilon))
        return ((x * gx + low * gl + high * gh).detach(),)


@register_rule
@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat: every input of a receptive field gets an equal share (``w = 1, x = 1``).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> Flat(0.0).relevance(lin, (torch.tensor([[5.0, -1.0]]),), torch.tensor([[1.0]]))[0]
    tensor([[0.5000, 0.5000]])
    """

    epsilon: float = 1e-6
    name: ClassVar[str] = "flat"

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _non_negative(self.epsilon, "epsilon"))

    def weight(self, w):
        return torch.ones_like(w)

    def relevance(self, module, inputs, R):
        w, _ = _params(module)
        ones = _leaf(torch.ones_like(inputs[0]))
        z = _affine(module, ones, self.weight(w))
        (g,) = torch.autograd.grad(z, ones, R / stabilize(z, self.epsilon))
        return (g,)


@register_rule
@dataclass(frozen=True)
class WSquare(Flat):
    """LRP-w²: shares in proportion to ``w_ij²`` regardless of the input.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> _ = lin.weight.data.copy_(torch.tensor([[1.0, -3.0]]))
    >>> WSquare(0.0).relevance(lin, (torch.tensor([[5.0, 1.0]]),), torch.tensor([[1.0]]))[0]
    tensor([[0.1000, 0.9000]])
    """

    name: ClassVar[str] = "wsquare"

    def weight(self, w):
        return w * w


@register_rule
@dataclass(frozen=True)
class Identity(Rule):
    """Pass the relevance through unchanged (element-wise layers: ReLU and other activations).

    Examples
    --------
    >>> import torch
    >>> Identity().relevance(torch.nn.ReLU(), (torch.tensor([-1.0, 2.0]),), torch.tensor([3., 4.]))
    (tensor([3., 4.]),)
    """

    name: ClassVar[str] = "identity"
    needs_weight: ClassVar[bool] = False

    def relevance(self, module, inputs, R):
        if len(inputs) != 1 or inputs[0].shape != R.shape:
            raise UnsupportedLayerError(
                f"rule 'identity' needs one input shaped like the output; "
                f"{type(module).__name__} maps {[tuple(i.shape) for i in inputs]} to "
                f"{tuple(R.shape)}")
        return (R,)


def make_rule(spec) -> Rule:
    """A :class:`Rule` from a rule, a registered name, or ``(name, {params})``.

    Examples
    --------
    >>> make_rule("gamma"), make_rule(("epsilon", {"epsilon": 0.25}))
    (Gamma(gamma=0.25, epsilon=1e-06), Epsilon(epsilon=0.25))
    """
    if isinstance(spec, Rule):
        return spec
    params = {}
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict):
        spec, params = spec
    if not isinstance(spec, str):
        raise ParameterError(f"a rule is a Rule, a name in {RULES.names()} or (name, params); "
                             f"got {spec!r}")
    cls = RULES[spec]
    try:
        return cls(**params)
    except TypeError as err:
        raise ParameterError(f"rule {spec!r}: {err}") from None

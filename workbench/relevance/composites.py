"""Composites: which LRP rule explains which layer, as named presets.

A :class:`Composite` maps ``(name, module)`` of a canonized model to a rule (or ``None``: the
layer passes relevance on by its gradient). Presets are registered by name in
:data:`COMPOSITES`; each is a factory taking the rules' parameters::

    epsilon               every Conv/Linear layer: epsilon
    epsilon_plus          Conv: zplus, Linear: epsilon                (Kohlbrenner et al. 2020)
    epsilon_gamma_box     first layer: zbox(low, high), Conv: gamma, Linear: epsilon
    epsilon_alpha2_beta1  Conv: alphabeta(2, 1), Linear: epsilon

In every composite activations (ReLU …) take ``identity``; average pooling, the residual
:class:`~workbench.relevance.canonize.Sum` and BatchNorms that could not be folded take epsilon
(``norm_epsilon``), which splits relevance in proportion to the contributions; max-pooling,
flatten and dropout pass it on by their gradient (winner-take-all for max-pooling). The first
layer is the first Conv/Linear in call order. Layer-by-layer overrides go in a
``{layer name or fnmatch pattern: rule}`` dict (see :func:`resolve_rules`).
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass

from torch import nn

from workbench.errors import ParameterError
from workbench.registry import Registry
from workbench.relevance.canonize import NORMS, Sum
from workbench.relevance.rules import (AlphaBeta, Epsilon, Gamma, Identity, Rule, ZBox, ZPlus,
                                       has_weight, make_rule)

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Mish)
NORM_LIKE = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, Sum)
GRADIENT = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_EPSILON = 1e-6


@dataclass(frozen=True)
class Composite:
    """Rules by layer kind.

    Parameters
    ----------
    name : str
    conv, dense : Rule
        Rules of Conv and Linear layers.
    first : Rule, optional
        Rule of the first Conv/Linear layer (overrides ``conv``/``dense`` there).
    norm_epsilon : float
        Epsilon of pooling, sums and unfolded BatchNorms.

    Examples
    --------
    >>> import torch
    >>> c = COMPOSITES["epsilon_plus"](epsilon=0.1)
    >>> c("fc", torch.nn.Linear(2, 2)), c("conv", torch.nn.Conv2d(1, 1, 3))
    (Epsilon(epsilon=0.1), ZPlus(alpha=1.0, beta=0.0, epsilon=1e-06))
    >>> c("relu", torch.nn.ReLU()), c("pool", torch.nn.MaxPool2d(2)) is None
    (Identity(), True)
    """

    name: str
    conv: Rule
    dense: Rule
    first: Rule | None = None
    norm_epsilon: float = NORM_EPSILON

    def __call__(self, name: str, module: nn.Module, first: bool = False) -> Rule | None:
        if isinstance(module, CONV + (nn.Linear,)):
            if first and self.first is not None:
                return self.first
            return self.conv if isinstance(module, CONV) else self.dense
        if isinstance(module, ACTIVATIONS):
            return Identity()
        if isinstance(module, NORM_LIKE + NORMS):
            return Epsilon(self.norm_epsilon)
        return None


COMPOSITES: Registry = Registry("LRP composite")


def _register(name):
    def add(factory):
        COMPOSITES.register(name)(factory)
        return factory
    return add


@_register("epsilon")
def epsilon(epsilon: float = 1e-6) -> Composite:
    """Epsilon everywhere."""
    return Composite("epsilon", Epsilon(epsilon), Epsilon(epsilon))


@_register("epsilon_plus")
def epsilon_plus(epsilon: float = 1e-6) -> Composite:
    """z⁺ for convolutions, epsilon for dense layers."""
    return Composite("epsilon_plus", ZPlus(), Epsilon(epsilon))


@_register("epsilon_gamma_box")
def epsilon_gamma_box(epsilon: float = 1e-6, gamma: float = 0.25, low=None,
                      high=None) -> Composite:
    """z^B (input bounds ``low``/``high``; default: the batch's range) for the first layer,
    gamma for convolutions, epsilon for dense layers."""
    return Composite("epsilon_gamma_box", Gamma(gamma), Epsilon(epsilon), ZBox(low, high))


@_register("epsilon_alpha2_beta1")
def epsilon_alpha2_beta1(epsilon: float = 1e-6) -> Composite:
    """alpha=2, beta=1 for convolutions, epsilon for dense layers."""
    return Composite("epsilon_alpha2_beta1", AlphaBeta(2.0, 1.0), Epsilon(epsilon))


def get_composite(spec="epsilon_plus", **params) -> Composite:
    """A :class:`Composite` from a registered name (with its factory's ``params``) or itself.

    Examples
    --------
    >>> get_composite("epsilon_gamma_box", gamma=0.5).conv
    Gamma(gamma=0.5, epsilon=1e-06)
    """
    if isinstance(spec, Composite):
        if params:
            raise ParameterError(f"parameters {sorted(params)} only apply to a composite name")
        return spec
    if not isinstance(spec, str):
        raise ParameterError(f"composite must be a name in {COMPOSITES.names()} or a "
                             f"Composite, got {spec!r}")
    factory = COMPOSITES[spec]
    allowed = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ParameterError(f"composite {spec!r} takes {sorted(allowed)}, not {unknown}")
    return factory(**params)


def resolve_rules(module: nn.Module, composite: Composite, order=(), rules=None) -> dict:
    """Layer name → rule for every module of (canonized) ``module`` that has one.

    ``order`` lists module names in call order (to find the first layer); ``rules`` overrides
    the composite with ``{name or fnmatch pattern: rule}`` (a rule, a rule name, ``(name,
    params)``, or ``None`` to propagate that layer by its gradient); a pattern only picks the
    leaf layers its rule applies to (``{"*": "zplus"}``: every Conv/Linear). An entry that
    matches no module is a :class:`ParameterError`.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> r = resolve_rules(net, COMPOSITES["epsilon"](), rules={"0": "flat"})
    >>> r["0"], r["1"], r["2"]
    (Flat(epsilon=1e-06), Identity(), Epsilon(epsilon=1e-06))
    """
    named = dict(module.named_modules())
    layers = [n for n in order if isinstance(named.get(n), CONV + (nn.Linear,))]
    if not layers:
        layers = [n for n, m in named.items() if isinstance(m, CONV + (nn.Linear,))]
    first = layers[0] if layers else None
    out = {}
    for name, m in named.items():
        if name == "" and list(m.children()):
            continue
        rule = composite(name, m, first=name == first)
        if rule is not None:
            out[name] = rule
    for key, spec in (rules or {}).items():
        pattern = any(c in key for c in "*?[")
        hits = [n for n in named if n and (fnmatch.fnmatchcase(n, key) if pattern else n == key)]
        rule = None if spec is None else make_rule(spec)
        if pattern:  # a pattern only picks the leaf layers its rule can explain
            hits = [n for n in hits if not list(named[n].children())
                    and (rule is None or not rule.needs_weight or has_weight(named[n]))]
        if not hits:
            raise ParameterError(
                f"rules name {key!r}, which matches no layer of the (canonized) model; layers: "
                f"{[n for n, m in named.items() if n and not list(m.children())]}")
        for n in hits:
            if rule is None:
                out.pop(n, None)
            else:
                out[n] = rule
    for name, rule in out.items():
        rule.check(name, named[name])
    return out

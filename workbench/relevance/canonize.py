"""Canonizers: an equivalent copy of a model whose layers LRP rules can explain.

:func:`canonize` traces a private copy with ``torch.fx`` and

* folds every BatchNorm into the Conv/Linear layer that feeds it (``W' = W·s``,
  ``b' = (b − μ)·s + β`` with ``s = γ / sqrt(var + eps)``), so the explanation sees one affine
  layer instead of two (the BatchNorm module disappears; its layer keeps its name);
* replaces every tensor ``a + b`` (residual sums) by a :class:`Sum` module named after the
  block it sits in (``"layers.0.add"``), so a rule can split the relevance of the sum between
  its two branches in proportion to their contributions (``R_a = a / (a + b) · R``);
* lists the functional operations it has no rule for (``unhandled``): they pass relevance on by
  their gradient, which is right for reshapes, ReLU, max-pooling and concatenation but not for,
  e.g., products.

The copy computes the same outputs as the model (up to float rounding). Models torch.fx cannot
trace fall back to folding BatchNorms that directly follow a Conv/Linear inside an
``nn.Sequential``; their residual sums are then propagated by the gradient (each branch gets the
full relevance), which ``traced=False`` in the result flags.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import UnsupportedLayerError

AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ADDS = {operator.add, operator.iadd, torch.add}
GRADIENT_FUNCTIONS = {torch.flatten, torch.reshape, F.relu, torch.relu, F.relu6, F.max_pool1d,
                      F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d, torch.cat, torch.squeeze,
                      torch.unsqueeze, operator.getitem, getattr, F.dropout, F.pad}
GRADIENT_METHODS = {"view", "reshape", "flatten", "relu", "relu_", "size", "dim", "contiguous",
                    "squeeze", "unsqueeze", "clone", "float", "permute", "transpose"}


class Sum(nn.Module):
    """``a + b`` as a module, so LRP can give it a rule (a canonized residual sum).

    Examples
    --------
    >>> import torch
    >>> Sum()(torch.ones(2), torch.ones(2))
    tensor([2., 2.])
    """

    def forward(self, a, b):
        return a + b


@dataclass(frozen=True, eq=False)
class Canonized:
    """An explanation-ready copy of a model.

    Attributes
    ----------
    module : nn.Module
        The copy (an ``fx.GraphModule`` when traced), in eval mode.
    folded : dict
        BatchNorm name → name of the layer it was folded into.
    sums : tuple of str
        Names of the :class:`Sum` modules that replaced ``+``.
    order : tuple of str
        Module names in call order (repeated if a module is called more than once).
    unhandled : tuple of str
        Operations without a rule, propagated by their gradient.
    traced : bool
        False if torch.fx could not trace the model (see the module docstring).
    """

    module: nn.Module
    folded: dict
    sums: tuple
    order: tuple
    unhandled: tuple
    traced: bool

    @property
    def reused(self) -> tuple:
        """Modules called more than once per forward pass."""
        return tuple(sorted(n for n, c in Counter(self.order).items() if c > 1))


def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode BatchNorm ``bn`` into the Conv/Linear ``layer`` that feeds it, in place.

    Examples
    --------
    >>> import torch
    >>> lin, bn = torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2).eval()
    >>> bn.running_mean.fill_(1.0); bn.running_var.fill_(4.0)  # doctest: +ELLIPSIS
    tensor(...)
    >>> x = torch.randn(5, 3)
    >>> want = bn(lin(x))
    >>> fold_into(lin, bn)
    >>> torch.allclose(lin(x), want, atol=1e-6)
    True
    """
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError("a BatchNorm without running statistics cannot be folded")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift * bn.weight + bn.bias
            scale = scale * bn.weight
        w = layer.weight
        shape = (-1,) + (1,) * (w.ndim - 1)
        bias = layer.bias if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        new_w = w * scale.reshape(shape)
        new_b = bias * scale + shift
    layer.weight = nn.Parameter(new_w.detach().clone(), requires_grad=False)
    layer.bias = nn.Parameter(new_b.detach().clone(), requires_grad=False)


def _unique(taken: set, stem: str) -> str:
    name, i = stem, 1
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return name


def _traced(net: nn.Module) -> Canonized:
    from torch import fx

    gm = fx.symbolic_trace(net)
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], NORMS):
            continue
        src = node.args[0] if node.args else None
        bn = modules[node.target]
        if not (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], AFFINE) and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1
                and bn.running_mean is not None):
            continue
        fold_into(modules[src.target], bn)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded[str(node.target)] = str(src.target)
    taken = {n for n, _ in gm.named_modules()}
    sums, unhandled = [], []
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        is_add = node.target in ADDS or node.target in ("add", "add_")
        if is_add and len(node.args) == 2 and not node.kwargs \
                and all(isinstance(a, fx.Node) for a in node.args):
            stack = node.meta.get("nn_module_stack") or {}
            parent = list(stack)[-1] if stack else ""
            name = _unique(taken, f"{parent}.add" if parent else "add")
            gm.add_submodule(name, Sum())
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, tuple(node.args))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            sums.append(name)
        elif node.target not in GRADIENT_FUNCTIONS and node.target not in GRADIENT_METHODS:
            unhandled.append(getattr(node.target, "__name__", str(node.target)))
    for bn in folded:
        gm.delete_submodule(bn)
    gm.graph.lint()
    gm.recompile()
    order = tuple(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    return Canonized(gm.eval(), folded, tuple(sums), order, tuple(dict.fromkeys(unhandled)), True)


def _sequential(net: nn.Module) -> Canonized:
    folded = {}
    for prefix, seq in net.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys[:-1], keys[1:]):
            layer, bn = seq._modules[a], seq._modules[b]
            if isinstance(layer, AFFINE) and isinstance(bn, NORMS) \
                    and bn.running_mean is not None:
                fold_into(layer, bn)
                seq._modules[b] = nn.Identity()
                p = f"{prefix}." if prefix else ""
                folded[p + b] = p + a
    order = tuple(n for n, m in net.named_modules() if not list(m.children()))
    return Canonized(net, folded, (), order, (), False)


def canonize(model: nn.Module) -> Canonized:
    """An explanation-ready copy of ``model`` (see the module docstring); never modifies it.

    Examples
    --------
    >>> import torch
    >>> from workbench.models import create_model
    >>> net = create_model("resnet_small", (1, 8, 8), 10).eval()
    >>> c = canonize(net)
    >>> c.folded["layers.0.bn1"], c.sums
    ('layers.0.conv1', ('layers.0.add', 'layers.1.add', 'layers.2.add'))
    >>> x = torch.randn(2, 1, 8, 8)
    >>> torch.allclose(c.module(x), net(x), atol=1e-5)
    True
    """
    net = copy.deepcopy(model).eval()
    net.requires_grad_(False)
    try:
        return _traced(net)
    except UnsupportedLayerError:
        raise
    except Exception:  # noqa: BLE001  untraceable forward: fall back to nn.Sequential folding
        return _sequential(copy.deepcopy(model).eval().requires_grad_(False))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every foldable BatchNorm folded into its Conv/Linear layer
    (residual sums become :class:`Sum` modules); outputs are unchanged.

    Examples
    --------
    >>> import torch
    >>> from workbench.models import create_model
    >>> net = create_model("vgg_small", (1, 8, 8), 10).eval()
    >>> folded = fold_batchnorm(net)
    >>> any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    False
    """
    return canonize(model).module

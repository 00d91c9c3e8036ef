"""Layer-wise relevance propagation (Bach et al. 2015) with a rule per layer.

:class:`LRP` explains a model through a canonized private copy
(:func:`~workbench.relevance.canonize.canonize`: BatchNorm folded, residual sums as modules).
Inside :meth:`LRP.context` every layer with a rule gets a forward hook that replaces its output
by a *relay*: the same values, whose backward pass computes the rule's relevance
(:mod:`workbench.relevance.rules`) instead of the gradient. Relevance travels backwards as the
"gradient", so branch points sum it, max-pooling routes it to the winner, reshapes move it
along; one ``autograd.grad`` from the target logit yields the input map. The hooks live on the
copy and are removed when the context exits, error or not (the zennit Composite lifecycle).

:func:`relevance` is the front door: it uses captum's ``LRP`` where captum handles the model
and the rules (plain chains of Conv/Linear/ReLU/pooling with epsilon rules; the two agree to
1e-4) and this implementation otherwise (BatchNorm, residual sums, reused modules, any rule
other than epsilon), or as ``backend`` says.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.relevance.attribution import (Attribution, autograd_on, check_input,
                                             explained_copy, logits_of, one_hot_scores,
                                             register_attribution, resolve_target)
from workbench.relevance.canonize import Canonized, canonize
from workbench.relevance.composites import GRADIENT, get_composite, resolve_rules

BACKENDS = ("auto", "captum", "workbench")
_STATE = threading.local()


@contextmanager
def _rules_running():
    """While a rule computes its modified forward pass, the relay hooks stand aside."""
    depth = getattr(_STATE, "depth", 0)
    _STATE.depth = depth + 1
    try:
        yield
    finally:
        _STATE.depth = depth


class _Relay(torch.autograd.Function):
    """Forward: the layer's output unchanged. Backward: ``step(inputs, R)`` (the rule)."""

    @staticmethod
    def forward(ctx, step, out, *inputs):
        ctx.step = step
        ctx.inputs = tuple(i.detach().clone() for i in inputs)  # immune to later in-place ops
        return out.clone()

    @staticmethod
    def backward(ctx, R):
        with torch.enable_grad(), _rules_running():
            rel = ctx.step(ctx.inputs, R)
        return (None, None, *(r.detach() for r in rel))


def _hook(name, rule, store):
    def step(module, inputs, R):
        rel = rule.relevance(module, inputs, R)
        if store is not None:
            store.append((name, R.detach(), tuple(r.detach() for r in rel)))
        return rel

    def hook(module, args, output):
        if getattr(_STATE, "depth", 0):
            return None
        if not isinstance(output, torch.Tensor) or not args \
                or not all(isinstance(a, torch.Tensor) for a in args):
            raise UnsupportedLayerError(
                f"LRP needs layer {name!r} ({type(module).__name__}) to take tensor arguments "
                "and return one tensor")
        if rule.name == "identity" and (len(args) != 1 or args[0].shape != output.shape):
            raise UnsupportedLayerError(
                f"rule 'identity' on layer {name!r} needs an output shaped like its input")
        return _Relay.apply(lambda inputs, R: step(module, inputs, R), output.detach(), *args)

    return hook


@dataclass(frozen=True, eq=False)
class Explained:
    """What :meth:`LRP.context` yields.

    Attributes
    ----------
    module : nn.Module
        The canonized copy with the relay hooks (run it, then backpropagate from its output).
    canonized : Canonized
    rules : dict
        Layer name → rule.
    records : list or None
        With ``record=True``: ``(layer, R_out, R_in tuple)`` for every layer call the backward
        pass went through, in backward order.
    """

    module: nn.Module
    canonized: Canonized
    rules: dict
    records: list | None

    def relevance_at(self, layer: str) -> list:
        """Relevance of the output of ``layer`` (one tensor per call; needs ``record=True``)."""
        if self.records is None:
            raise ParameterError("open the context with record=True to keep layer relevances")
        return [r for n, r, _ in self.records if n == layer]

    def unhandled(self) -> list:
        """Operations and leaf modules without a rule that LRP propagates by their gradient
        although the gradient is not known to be right for them."""
        out = list(self.canonized.unhandled)
        for name, m in self.module.named_modules():
            if name not in self.rules and not list(m.children()) and not isinstance(m, GRADIENT) \
                    and name:
                out.append(f"{name} ({type(m).__name__})")
        return out


class LRP:
    """An LRP explainer: a composite plus per-layer rule overrides.

    Parameters
    ----------
    composite : str or Composite
        A name in :data:`~workbench.relevance.composites.COMPOSITES` or a composite.
    rules : dict, optional
        ``{layer name or pattern: rule}`` overrides (see
        :func:`~workbench.relevance.composites.resolve_rules`).
    **params
        Parameters of the named composite (``epsilon``, ``gamma``, ``low``, ``high``).

    Examples
    --------
    >>> import torch
    >>> def hook_count(m):
    ...     return sum(len(s._forward_hooks) for s in m.modules())
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3, bias=False))
    >>> lrp = LRP("epsilon", epsilon=1e-9)
    >>> a = lrp.attribute(net, torch.rand(2, 4), target=0)
    >>> torch.allclose(a.totals, a.meta["score"], atol=1e-5)  # relevance is conserved
    True
    >>> with lrp.context(net) as ex:
    ...     hook_count(ex.module) > 0
    True
    >>> hook_count(ex.module), hook_count(net)
    (0, 0)
    """

    def __init__(self, composite="epsilon_plus", rules=None, **params):
        self.composite = get_composite(composite, **params)
        if rules is not None and not isinstance(rules, dict):
            raise ParameterError(f"rules must be a dict {{layer: rule}}, got {rules!r}")
        self.rules = dict(rules or {})

    def resolve(self, canonized: Canonized) -> dict:
        """Layer name → rule for a canonized model."""
        return resolve_rules(canonized.module, self.composite, canonized.order, self.rules)

    @contextmanager
    def context(self, model: nn.Module, record: bool = False):
        """Canonize a copy of ``model``, hook its layers, yield :class:`Explained`; the hooks
        are removed on exit (also after an error)."""
        canon = canonize(model)
        rules = self.resolve(canon)
        store = [] if record else None
        handles = []
        try:
            for name, module in canon.module.named_modules():
                if name in rules:
                    handles.append(module.register_forward_hook(_hook(name, rules[name], store)))
            yield Explained(canon.module, canon, rules, store)
        finally:
            for h in handles:
                h.remove()

    @autograd_on
    def attribute(self, model: nn.Module, x: torch.Tensor, target=None) -> Attribution:
        """Relevance maps of ``target`` (default: the predicted class) for the batch ``x``."""
        x = check_input(x)
        reference = logits_of(explained_copy(model), x)
        target = resolve_target(target, reference)
        with torch.enable_grad(), self.context(model) as ex:
            inp = x.clone().requires_grad_(True)
            out = ex.module(inp)
            if not isinstance(out, torch.Tensor) or out.shape != reference.shape:
                raise UnsupportedLayerError("the canonized model returns a different output")
            if not out.requires_grad:
                raise UnsupportedLayerError("the model's output does not depend on its input")
            (maps,) = torch.autograd.grad(out, inp, one_hot_scores(out, target),
                                          allow_unused=True)
            unhandled = ex.unhandled()
        change = float((out.detach() - reference).abs().max())
        if change > 1e-3 * (1.0 + float(reference.abs().max())):
            raise UnsupportedLayerError(
                f"canonizing {type(model).__name__} for LRP changed its outputs by {change:.3g}; "
                "the BatchNorm folding or the residual sums are not what the tracer assumed")
        if unhandled:
            warnings.warn(f"LRP has no rule for {unhandled}; relevance passes them by the "
                          "gradient", stacklevel=3)
        maps = torch.zeros_like(x) if maps is None else maps.detach()
        canon = ex.canonized
        meta = {"backend": "workbench", "composite": self.composite.name,
                "rules": {n: repr(r) for n, r in ex.rules.items()},
                "score": reference.gather(1, target[:, None])[:, 0],
                "folded": dict(canon.folded), "sums": list(canon.sums),
                "reused": list(canon.reused), "unhandled": unhandled, "traced": canon.traced,
                "output_change": change}
        return Attribution(maps, target, "lrp", meta)


@autograd_on
def relevance(model: nn.Module, x: torch.Tensor, target=None, composite="epsilon_plus",
              rules=None, backend: str = "auto", **params) -> Attribution:
    """LRP relevance maps of ``target`` (default: the predicted class) for the batch ``x``.

    Parameters
    ----------
    model : nn.Module
        Never modified (explained through a canonized copy).
    x : torch.Tensor
        Input batch; the maps have its shape.
    target : int or sequence of int, optional
    composite : str or Composite
        ``"epsilon_plus"`` (default), ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``,
        ``"epsilon"``; see :mod:`workbench.relevance.composites`.
    rules : dict, optional
        Per-layer overrides ``{layer name or pattern: rule}``.
    backend : {"auto", "captum", "workbench"}
        ``"auto"`` uses captum's LRP when it supports the model and the rules, else this
        implementation (``meta["backend"]`` says which; ``meta["captum_skipped"]`` why not).
    **params
        Parameters of the composite (``epsilon``, ``gamma``, ``low``, ``high``).

    Returns
    -------
    Attribution
        ``maps`` sum (per sample) to the target logit minus what biases and stabilizers
        absorbed; ``meta["score"]`` holds the logit.

    Examples
    --------
    >>> import torch
    >>> from workbench.models import create_model
    >>> net = create_model("resnet_small", (1, 8, 8), 10)
    >>> a = relevance(net, torch.rand(2, 1, 8, 8), composite="epsilon_gamma_box")
    >>> a.maps.shape, a.meta["backend"], a.meta["sums"][0]
    (torch.Size([2, 1, 8, 8]), 'workbench', 'layers.0.add')
    """
    from workbench.relevance.captum_lrp import captum_relevance, captum_unsupported

    if backend not in BACKENDS:
        raise ParameterError(f"backend must be one of {BACKENDS}, got {backend!r}")
    lrp = LRP(composite, rules, **params)
    reason = None
    if backend != "workbench":
        reason = captum_unsupported(model, lrp)
        if reason is None:
            return captum_relevance(model, x, target, lrp)
        if backend == "captum":
            raise UnsupportedLayerError(f"captum's LRP cannot explain this: {reason}; use "
                                        "backend='workbench'")
    out = lrp.attribute(model, x, target)
    if reason is not None:
        out = dataclasses.replace(out, meta={**out.meta, "captum_skipped": reason})
    return out


@register_attribution("lrp", reference="Bach et al. 2015, 'On Pixel-Wise Explanations for "
                      "Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation'; "
                      "composites after Kohlbrenner et al. 2020 and zennit.")
def lrp(model, x, target=None, **params) -> Attribution:
    """:func:`relevance` as a registered attribution method.

    Examples
    --------
    >>> import torch
    >>> from workbench.models import create_model
    >>> lrp(create_model("lenet5", (1, 8, 8), 10), torch.rand(1, 1, 8, 8), 3).target.tolist()
    [3]
    """
    return relevance(model, x, target, **params)

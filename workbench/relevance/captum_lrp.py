"""captum's ``LRP`` as a backend of :func:`~workbench.relevance.lrp.relevance`, where it works.

captum attaches ``layer.rule`` attributes and hooks to the modules it explains and cannot
handle BatchNorm folding, residual sums (functional ``+``), modules called twice, or rules other
than its own. Here it only ever sees a private copy, and :func:`captum_unsupported` says when it
must not be used, so both backends give the same maps (captum's epsilon rule is this package's
epsilon rule; max-pooling and flatten take a negligible epsilon, which is the gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.relevance.attribution import (Attribution, autograd_on, check_input,
                                             explained_copy, logits_of, resolve_target)
from workbench.relevance.canonize import canonize
from workbench.relevance.rules import Epsilon, Identity

EPSILON_LAYERS = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
GRADIENT_LAYERS = (nn.MaxPool2d, nn.Flatten)
NON_LINEAR = (nn.ReLU, nn.Tanh)  # captum's SUPPORTED_NON_LINEAR_LAYERS (and Dropout)
GRADIENT_EPSILON = 1e-9


def captum_unsupported(model: nn.Module, lrp) -> str | None:
    """Why captum's LRP cannot reproduce ``lrp`` on ``model`` (``None`` if it can).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.relevance.lrp import LRP
    >>> captum_unsupported(create_model("mlp", (1, 8, 8), 10), LRP("epsilon")) is None
    True
    >>> captum_unsupported(create_model("vgg_small", (1, 8, 8), 10), LRP("epsilon"))
    'it does not fold BatchNorm layers'
    """
    canon = canonize(model)
    if not canon.traced:
        return "torch.fx cannot trace the model"
    if canon.folded:
        return "it does not fold BatchNorm layers"
    if canon.sums:
        return "it does not split residual sums"
    if canon.unhandled:
        return f"it has no rule for the operations {list(canon.unhandled)}"
    if canon.reused:
        return f"modules {list(canon.reused)} are called more than once"
    rules = lrp.resolve(canon)
    for name, m in canon.module.named_modules():
        if list(m.children()):
            continue
        rule = rules.get(name)
        if isinstance(m, EPSILON_LAYERS):
            if type(rule) is not Epsilon:
                return f"layer {name!r} uses rule {getattr(rule, 'name', rule)!r}, not epsilon"
        elif isinstance(m, NON_LINEAR):
            if type(rule) is not Identity:
                return f"layer {name!r} must use rule 'identity'"
        elif isinstance(m, GRADIENT_LAYERS):
            if rule is not None:
                return f"layer {name!r} must pass relevance by its gradient"
        elif isinstance(m, nn.Dropout):  # the identity in eval mode
            if rule is not None and type(rule) is not Identity:
                return f"layer {name!r} must pass relevance unchanged"
        else:
            return f"it does not support layer {name!r} ({type(m).__name__})"
    return None


@autograd_on
def captum_relevance(model: nn.Module, x: torch.Tensor, target, lrp) -> Attribution:
    """captum's ``LRP`` on a private copy of ``model`` with the rules of ``lrp`` (check
    :func:`captum_unsupported` first)."""
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    x = check_input(x)
    net = explained_copy(model)
    logits = logits_of(net, x)
    target = resolve_target(target, logits)
    rules = lrp.resolve(canonize(model))
    for name, m in net.named_modules():
        if isinstance(m, EPSILON_LAYERS):
            m.rule = EpsilonRule(rules[name].epsilon)  # on the copy only
        elif isinstance(m, GRADIENT_LAYERS):
            m.rule = EpsilonRule(GRADIENT_EPSILON)
    with torch.enable_grad():
        maps = CaptumLRP(net).attribute(x.clone().requires_grad_(True), target=target)
    meta = {"backend": "captum", "composite": lrp.composite.name,
            "rules": {n: repr(r) for n, r in rules.items()},
            "score": logits.gather(1, target[:, None])[:, 0], "folded": {}, "sums": [],
            "reused": [], "unhandled": [], "traced": True, "output_change": 0.0}
    return Attribution(maps.detach(), target, "lrp", meta)

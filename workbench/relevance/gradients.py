"""Gradient and perturbation attributions through captum: saliency, integrated gradients,
occlusion. Each runs captum on a private eval-mode copy of the model and returns an
:class:`~workbench.relevance.attribution.Attribution` shaped like the input batch.
"""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.relevance.attribution import (Attribution, autograd_on, check_input,
                                             explained_copy, logits_of, positive_int,
                                             register_attribution, resolve_target)


def _prepare(model, x, target):
    x = check_input(x)
    net = explained_copy(model)
    logits = logits_of(net, x)
    target = resolve_target(target, logits)
    return net, x, target, logits.gather(1, target[:, None])[:, 0]


def _baseline(baseline, x):
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(x.dtype), x.shape).clone()
        except RuntimeError:
            raise ParameterError(f"baseline shaped {tuple(baseline.shape)} does not broadcast "
                                 f"to the input {tuple(x.shape)}") from None
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ParameterError(f"baseline must be a number or a tensor, got {baseline!r}")
    return torch.full_like(x, float(baseline))


@register_attribution("saliency", reference="Simonyan et al. 2014, 'Deep Inside Convolutional "
                      "Networks: Visualising Image Classification Models and Saliency Maps'.")
@autograd_on
def saliency(model, x, target=None, absolute: bool = True) -> Attribution:
    """The gradient of the target logit with respect to the input (its absolute value by
    default).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2, bias=False)
    >>> _ = net.weight.data.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.0, 1.0, 1.0]]))
    >>> saliency(net, torch.ones(1, 3), target=0).maps
    tensor([[1., 2., 0.]])
    """
    from captum.attr import Saliency

    net, x, target, score = _prepare(model, x, target)
    with torch.enable_grad():
        maps = Saliency(net).attribute(x.clone().requires_grad_(True), target=target,
                                        abs=bool(absolute))
    return Attribution(maps.detach(), target, "saliency",
                       {"absolute": bool(absolute), "score": score})


@register_attribution("integrated_gradients", reference="Sundararajan et al. 2017, 'Axiomatic "
                      "Attribution for Deep Networks'.")
@autograd_on
def integrated_gradients(model, x, target=None, baseline=0.0, steps: int = 32,
                         method: str = "gausslegendre",
                         internal_batch_size: int | None = None) -> Attribution:
    """Integrated gradients from ``baseline`` (a number or a tensor) in ``steps`` steps.

    ``meta["delta"]`` is the completeness error per sample: target logit at ``x`` minus at the
    baseline, minus the sum of the map.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> a = integrated_gradients(net, torch.ones(2, 3), target=1, steps=8)
    >>> bool(a.meta["delta"].abs().max() < 1e-5)  # exact for a linear model
    True
    """
    from captum.attr import IntegratedGradients

    steps = positive_int(steps, "steps")
    if internal_batch_size is not None:
        internal_batch_size = positive_int(internal_batch_size, "internal_batch_size")
    if method not in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
                      "riemann_middle"):
        raise ParameterError(f"unknown integration method {method!r}")
    net, x, target, score = _prepare(model, x, target)
    base = _baseline(baseline, x)
    with torch.enable_grad():
        maps, delta = IntegratedGradients(net).attribute(
            x.clone(), baselines=base, target=target, n_steps=steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
    meta = {"baseline": baseline if not isinstance(baseline, torch.Tensor) else "tensor",
            "steps": steps, "method": method, "delta": delta.detach(), "score": score}
    return Attribution(maps.detach(), target, "integrated_gradients", meta)


@register_attribution("occlusion", reference="Zeiler & Fergus 2014, 'Visualizing and "
                      "Understanding Convolutional Networks'.")
@autograd_on
def occlusion(model, x, target=None, window: int = 3, stride: int = 1, baseline: float = 0.0,
              perturbations_per_eval: int = 16) -> Attribution:
    """How much the target logit drops when a ``window``-sized patch (all channels) is set to
    ``baseline``, averaged over the patches covering each input.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> _ = net[1].weight.data.fill_(1.0)
    >>> occlusion(net, torch.ones(1, 1, 2, 2), target=0, window=1).maps.flatten().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    from captum.attr import Occlusion

    window = positive_int(window, "window")
    stride = positive_int(stride, "stride")
    per_eval = positive_int(perturbations_per_eval, "perturbations_per_eval")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ParameterError(f"baseline must be a number, got {baseline!r}")
    net, x, target, score = _prepare(model, x, target)
    spatial = x.shape[2:] if x.ndim > 2 else x.shape[1:]
    if window > min(spatial):
        raise ParameterError(f"window {window} is larger than the input {tuple(spatial)}")
    if x.ndim > 2:
        shape = (x.shape[1],) + (window,) * (x.ndim - 2)
        strides = (x.shape[1],) + (stride,) * (x.ndim - 2)
    else:
        shape, strides = (window,), (stride,)
    with torch.no_grad():
        maps = Occlusion(net).attribute(x.clone(), sliding_window_shapes=shape, strides=strides,
                                        baselines=float(baseline), target=target,
                                        perturbations_per_eval=per_eval)
    meta = {"window": window, "stride": stride, "baseline": float(baseline), "score": score}
    return Attribution(maps.detach(), target, "occlusion", meta)

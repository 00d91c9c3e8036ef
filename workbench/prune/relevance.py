"""Relevance as a structured pruning criterion (Yeom et al. 2021, "Pruning by explaining").

Each Conv2d filter / Linear neuron is scored by the LRP relevance of its output, summed (in
absolute value) over a seeded reference batch of training samples and over positions, each
sample explaining its true class; the least relevant channels of every layer are removed
physically with the machinery of :mod:`workbench.prune.structured` (residual groups sum the
relevance of their producers). Relevance is computed on a canonized copy (BatchNorm folded into
its convolution), so a convolution's score is the relevance of its normalized output.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.errors import ParameterError
from workbench.prune.base import (Pruned, check_sparsity, positive_int, prunable_layers,
                                  refuse_per_layer, register_pruner, require_data)
from workbench.prune.structured import NO_PER_LAYER, _structured
from workbench.relevance.attribution import (autograd_on, check_input, one_hot_scores,
                                             resolve_target)
from workbench.relevance.lrp import LRP

TARGETS = ("label", "predicted")


@autograd_on
def channel_relevance(model: nn.Module, x: torch.Tensor, target=None, composite="epsilon",
                      rules=None, batch_size: int = 64, absolute: bool = True,
                      **params) -> dict[str, torch.Tensor]:
    """Relevance of every output channel of every Conv/Linear layer, summed over ``x``.

    Parameters
    ----------
    model : nn.Module
        Never modified.
    x : torch.Tensor
        Reference batch.
    target : int, sequence of int or None
        Explained class per sample (default: the predicted class).
    composite, rules, **params
        As for :func:`workbench.relevance.relevance`.
    batch_size : int
        Samples per backward pass.
    absolute : bool
        Sum ``|R|`` (default) or signed ``R``.

    Returns
    -------
    dict
        Layer name → tensor of shape ``(out_channels,)``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.ReLU(),
    ...                           torch.nn.Linear(3, 2, bias=False))
    >>> r = channel_relevance(net, torch.rand(5, 4), target=0, epsilon=1e-9, absolute=False)
    >>> r["0"].shape, bool(torch.isclose(r["0"].sum(), r["2"][0], rtol=1e-4))
    (torch.Size([3]), True)
    """
    batch_size = positive_int(batch_size, "batch_size")
    x = check_input(x)
    lrp = LRP(composite, rules, **params)
    totals: dict[str, torch.Tensor] = {}
    if target is not None:
        target = torch.as_tensor(target).long().flatten()
        if target.numel() == 1:
            target = target.expand(len(x))
    with lrp.context(model, record=True) as ex:
        layers = {n for n, m in ex.module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        for i in range(0, len(x), batch_size):
            inp = x[i:i + batch_size].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                out = ex.module(inp)
                t = resolve_target(None if target is None else target[i:i + batch_size], out)
                torch.autograd.grad(out, inp, one_hot_scores(out, t), allow_unused=True)
            for name, R, _ in ex.records:
                if name in layers:
                    r = R.abs() if absolute else R
                    dims = [d for d in range(r.ndim) if d != 1]
                    totals[name] = totals.get(name, 0) + r.sum(dims).double()
            ex.records.clear()
    return {n: t.float() for n, t in totals.items()}


@register_pruner("relevance", reference="Yeom et al. 2021, 'Pruning by explaining: A novel "
                 "criterion for deep neural network pruning' (Pattern Recognition 115): LRP "
                 "relevance of filters/neurons over a reference batch.",
                 structured=True, needs_data=True, per_layer=False)
def relevance_pruning(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
                      samples: int = 128, composite: str = "epsilon", epsilon: float = 1e-6,
                      target: str = "label", batch_size: int = 64,
                      per_layer_sparsity=None) -> Pruned:
    """Remove the ``sparsity`` fraction of output channels with the least LRP relevance from
    every layer, physically (see :func:`workbench.prune.structured.l1_structured`).

    ``samples`` training samples (a seeded random subset) explain their true class
    (``target="label"``) or the predicted one (``"predicted"``) with ``composite``.

    Examples
    --------
    >>> from workbench.data import load_dataset
    >>> from workbench.models import create_model
    >>> data = load_dataset("digits")
    >>> p = relevance_pruning(create_model("lenet5", (1, 8, 8), 10), 0.5, data=data, samples=32)
    >>> p.info["channels"]["features.0"], p.model.features[3].weight.shape[1]
    ([6, 3], 3)
    """
    sparsity = check_sparsity(sparsity)
    refuse_per_layer(per_layer_sparsity, "relevance", NO_PER_LAYER)
    prunable_layers(model, exclude)  # validates the exclude names
    if target not in TARGETS:
        raise ParameterError(f"target must be one of {TARGETS}, got {target!r}")
    samples = positive_int(samples, "samples")
    data = require_data(data, "relevance", model)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(data.x_train), generator=gen)[:samples]
    x = data.x_train[idx]
    labels = data.y_train[idx] if target == "label" else None
    scores = channel_relevance(model, x, labels, composite, batch_size=batch_size,
                               epsilon=epsilon)
    layers = dict(model.named_modules())

    def score(name, module):
        if name in scores:
            return scores[name]
        return torch.zeros(layers[name].weight.shape[0])

    pruned = _structured(model, sparsity, data, scope, exclude, None, "relevance", score)
    info = {**pruned.info, "composite": composite, "epsilon": epsilon, "samples": len(idx),
            "target": target,
            "relevance": {n: [round(float(v), 6) for v in s] for n, s in scores.items()
                          if n in pruned.info["kept"]}}
    info.pop("p", None)
    return Pruned(pruned.model, {}, info)

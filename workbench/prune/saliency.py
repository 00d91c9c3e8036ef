"""Gradient-based saliency pruning: first-order Taylor, SNIP and OBD (Hutchinson Hessian diagonal).

All three score each weight from the training loss and then remove the lowest scores like
magnitude pruning does. Gradients are taken on a private copy of the model in eval mode, so the
input model (its weights, ``.grad`` fields and BatchNorm statistics) is never touched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import DataError
from workbench.prune.base import (Pruned, apply_masks, check_scope, check_sparsity, clone,
                                  layer_targets, masks_from_scores, positive_int,
                                  prunable_layers, register_pruner, require_data)


def sample_batches(data, batches: int, batch_size: int, seed: int):
    """``batches`` seeded random mini-batches ``(x, y)`` of the training split (no repeats
    within one pass over the data)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.x_train), generator=gen)
    out = []
    for b in range(batches):
        idx = order[(b * batch_size) % len(order):][:batch_size]
        out.append((data.x_train[idx], data.y_train[idx]))
    return out


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    try:
        return F.cross_entropy(model(x), y)
    except (RuntimeError, IndexError) as err:
        raise DataError(f"the model cannot process the training inputs shaped "
                        f"{tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None


def loss_gradients(model: nn.Module, data, names, *, batches: int = 1, batch_size: int = 128,
                   seed: int = 0) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per batch, layer name → ``(weight, dL/dweight)`` of the cross-entropy loss.

    Computed on a copy of ``model`` in eval mode; ``model`` itself is untouched.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> m = create_model("mlp", (1, 8, 8), 10)
    >>> g = loss_gradients(m, load_dataset("digits"), ["fc"], batches=2)
    >>> len(g), g[0]["fc"][1].shape
    (2, torch.Size([10, 64]))
    """
    work = clone(model)
    modules = dict(work.named_modules())
    weights = {n: modules[n].weight for n in names}
    for p in work.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in sample_batches(data, batches, batch_size, seed):
            grads = torch.autograd.grad(_loss(work, x, y), list(weights.values()))
            out.append({n: (w.detach(), g) for (n, w), g in zip(weights.items(), grads)})
    return out


def taylor_scores(model, data, exclude=(), *, batches: int = 4, batch_size: int = 128,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``mean over batches of |w · dL/dw|`` per weight.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> s = taylor_scores(create_model("mlp", (1, 8, 8), 10), load_dataset("digits"), batches=1)
    >>> bool((s["fc"] >= 0).all())
    True
    """
    names = list(prunable_layers(model, exclude))
    per_batch = loss_gradients(model, data, names, batches=batches, batch_size=batch_size,
                               seed=seed)
    return {n: sum((w * g).abs() for w, g in (b[n] for b in per_batch)) / len(per_batch)
            for n in names}


@register_pruner("taylor", reference="Molchanov et al. 2019, 'Importance Estimation for Neural "
                 "Network Pruning' (first-order Taylor |w·dL/dw|, per weight).", needs_data=True)
def taylor(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0, batches: int = 4,
           batch_size: int = 128, per_layer_sparsity=None) -> Pruned:
    """Remove the weights with the smallest first-order Taylor estimate of the loss change
    ``|w · dL/dw|``, averaged over ``batches`` mini-batches of the training data.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = taylor(create_model("mlp", (1, 8, 8), 10), 0.5, data=load_dataset("digits"))
    >>> round(1 - float(p.masks["fc"].float().mean()), 2)
    0.5
    """
    sparsity = check_sparsity(sparsity)
    require_data(data, "taylor")
    scope = check_scope(scope)
    layer_targets(per_layer_sparsity, sparsity, prunable_layers(model, exclude), scope)
    scores = taylor_scores(model, data, exclude, batches=positive_int(batches, "batches"),
                           batch_size=positive_int(batch_size, "batch_size"), seed=seed)
    masks = masks_from_scores(scores, sparsity, scope, per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks, {"batches": int(batches)})


@register_pruner("snip", reference="Lee et al. 2019, 'SNIP: Single-shot Network Pruning based on "
                 "Connection Sensitivity' (|g·w| on one batch).", needs_data=True)
def snip(model, sparsity, *, data=None, scope="global", exclude=(), seed=0,
         batch_size: int = 128, per_layer_sparsity=None) -> Pruned:
    """Remove the weights with the smallest connection sensitivity ``|dL/dw · w|`` on one batch,
    over all layers together by default as in the paper (the normalisation by the sum of all
    sensitivities does not change the ranking, so it is left out).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = snip(create_model("mlp", (1, 8, 8), 10), 0.5, data=load_dataset("digits"))
    >>> total = sum(m.numel() for m in p.masks.values())
    >>> round(1 - sum(int(m.sum()) for m in p.masks.values()) / total, 2)
    0.5
    """
    sparsity = check_sparsity(sparsity)
    require_data(data, "snip")
    scope = check_scope(scope)
    layer_targets(per_layer_sparsity, sparsity, prunable_layers(model, exclude), scope)
    scores = taylor_scores(model, data, exclude, batches=1,
                           batch_size=positive_int(batch_size, "batch_size"), seed=seed)
    masks = masks_from_scores(scores, sparsity, scope, per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks, {"batch_size": int(batch_size)})


def hutchinson_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names, *,
                        samples: int = 16, seed: int = 0,
                        chunk: int = 16) -> dict[str, torch.Tensor]:
    """Hutchinson estimate ``mean_z z ⊙ (H z)`` of the diagonal of the loss Hessian w.r.t. the
    weights of the layers ``names``, with Rademacher ``z`` and Hessian-vector products by double
    backpropagation (on a copy of ``model``), ``chunk`` probes per batched backward pass.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> d = hutchinson_diagonal(m, torch.randn(8, 3), torch.zeros(8, dtype=torch.long), ["0"])
    >>> d["0"].shape
    torch.Size([2, 3])
    """
    work = clone(model)
    modules = dict(work.named_modules())
    weights = [modules[n].weight for n in names]
    for p in work.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grads = torch.autograd.grad(_loss(work, x, y), weights, create_graph=True)
    # a gradient that does not depend on any weight has a zero Hessian block
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    diag = [torch.zeros_like(w) for w in weights]
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        zs = [torch.randint(0, 2, (k, *w.shape), generator=gen).to(w.dtype) * 2 - 1
              for w in weights]
        done += k
        if not live:
            continue
        hz = torch.autograd.grad([grads[i] for i in live], weights,
                                 grad_outputs=[zs[i] for i in live], retain_graph=done < samples,
                                 allow_unused=True, is_grads_batched=True)
        for d, z, h in zip(diag, zs, hz):
            if h is not None:
                d += (z * h.detach()).sum(0)
    return {n: d / samples for n, d in zip(names, diag)}


@register_pruner("hessian", reference="LeCun et al. 1990, 'Optimal Brain Damage' (saliency "
                 "H_ii·w²/2; diagonal by Hutchinson, Yao et al. 2020 'PyHessian').",
                 needs_data=True)
def hessian(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0, samples: int = 16,
            batch_size: int = 256, chunk: int = 16, per_layer_sparsity=None) -> Pruned:
    """Optimal Brain Damage: remove the weights with the smallest saliency ``0.5 · H_ii · w²``,
    the diagonal Hessian of the loss on one training batch estimated from ``samples`` Hutchinson
    probes (``chunk`` of them per batched backward pass: more is faster, uses more memory).
    Negative estimates (noise, or non-convex directions) rank lowest and go first.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = hessian(create_model("mlp", (1, 8, 8), 10), 0.5, data=load_dataset("digits"), samples=2)
    >>> round(1 - float(p.masks["fc"].float().mean()), 2)
    0.5
    """
    sparsity = check_sparsity(sparsity)
    require_data(data, "hessian")
    scope = check_scope(scope)
    samples = positive_int(samples, "samples")
    layers = prunable_layers(model, exclude)
    layer_targets(per_layer_sparsity, sparsity, layers, scope)
    ((x, y),) = sample_batches(data, 1, positive_int(batch_size, "batch_size"), seed)
    diag = hutchinson_diagonal(model, x, y, list(layers), samples=samples, seed=seed,
                               chunk=positive_int(chunk, "chunk"))
    scores = {n: 0.5 * diag[n] * m.weight.detach() ** 2 for n, m in layers.items()}
    masks = masks_from_scores(scores, sparsity, scope, per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks, {"samples": samples})

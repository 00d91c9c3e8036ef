"""ADMM weight pruning: train towards a sparse copy of the weights, then hard-prune."""

from __future__ import annotations

import torch
from torch import nn

from workbench.cancel import step
from workbench.prune.base import (Pruned, check_scope, check_sparsity, clone, layer_targets,
                                  masks_from_scores, positive_float, positive_int,
                                  prunable_layers, register_pruner, require_data)
from workbench.train import apply_masks_, batches, fit


def project(weights: dict[str, torch.Tensor], sparsity: float, scope: str,
            per_layer_sparsity=None):
    """Euclidean projection onto the sparsity set (keep the largest |v|): ``(Z, masks)``.

    Examples
    --------
    >>> import torch
    >>> z, masks = project({"a": torch.tensor([0.5, -2.0, 0.1, 1.0])}, 0.5, "layer")
    >>> z["a"].tolist()
    [0.0, -2.0, 0.0, 1.0]
    """
    masks = masks_from_scores({n: v.abs() for n, v in weights.items()}, sparsity, scope,
                              per_layer_sparsity=per_layer_sparsity)
    return {n: v * masks[n] for n, v in weights.items()}, masks


@register_pruner("admm", reference="Zhang et al. 2018, 'A Systematic DNN Weight Pruning "
                 "Framework using Alternating Direction Method of Multipliers' (ECCV).",
                 needs_data=True, trains=True)
def admm(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0, rho: float = 1.0,
         epochs: int = 8, lr: float = 1e-2, retrain_epochs: int = 2, retrain_lr: float = 1e-3,
         batch_size: int = 64, per_layer_sparsity=None) -> Pruned:
    """ADMM pruning: for ``epochs`` epochs minimise ``loss + rho/2 ||W - Z + U||²`` by SGD with
    momentum 0.9 (learning rate ``lr``); after each epoch ``Z = Π(W + U)`` (keep the largest
    magnitudes) and ``U += W - Z``. Then keep Z's support and retrain ``retrain_epochs`` epochs
    with the mask (Adam, ``retrain_lr``).

    SGD rather than Adam for the W-update: Adam's per-weight step is bounded by ``lr`` whatever
    ``rho`` is, so with few steps per epoch W never reaches Z and the dual variable U diverges.

    ``per_layer_sparsity`` gives layers their own target (in the projection and the final mask).

    ``info["residual"]`` holds ``||W - Z||`` after each epoch (it shrinks as W becomes sparse).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = admm(create_model("mlp", (1, 8, 8), 10), 0.5, data=load_dataset("digits"), epochs=1,
    ...          retrain_epochs=0)
    >>> round(1 - float(p.masks["fc"].float().mean()), 2)
    0.5
    """
    sparsity = check_sparsity(sparsity)
    scope = check_scope(scope)
    rho = positive_float(rho, "rho", allow_zero=True)
    epochs = positive_int(epochs, "epochs")
    retrain_epochs = positive_int(retrain_epochs, "retrain_epochs", minimum=0)
    lr = positive_float(lr, "lr")
    retrain_lr = positive_float(retrain_lr, "retrain_lr")
    batch_size = positive_int(batch_size, "batch_size")
    require_data(data, "admm", model)
    work = clone(model)
    layers = prunable_layers(work, exclude)
    per_layer = layer_targets(per_layer_sparsity, sparsity, layers, scope)
    weights = {n: m.weight for n, m in layers.items()}
    z, masks = project({n: w.detach() for n, w in weights.items()}, sparsity, scope, per_layer)
    u = {n: torch.zeros_like(w) for n, w in z.items()}
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    residual = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            work.train()
            for xb, yb in batches(data.x_train, data.y_train, batch_size, gen):
                opt.zero_grad(set_to_none=True)
                penalty = sum(((w - z[n] + u[n]) ** 2).sum() for n, w in weights.items())
                (loss_fn(work(xb), yb) + rho / 2 * penalty).backward()
                opt.step()
                step()  # a Cancel button stops here
            w_now = {n: w.detach() for n, w in weights.items()}
            z, masks = project({n: w_now[n] + u[n] for n in w_now}, sparsity, scope, per_layer)
            u = {n: u[n] + w_now[n] - z[n] for n in w_now}
            residual.append(float(sum(((w_now[n] - z[n]) ** 2).sum() for n in w_now) ** 0.5))
    apply_masks_(work, masks)
    fit(work, data.x_train, data.y_train, epochs=retrain_epochs, lr=retrain_lr,
        batch_size=batch_size, seed=seed, masks=masks, progress=False)
    return Pruned(work.eval(), masks, {"rho": rho, "residual": residual})

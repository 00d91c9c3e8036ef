"""Layer-adaptive magnitude-based pruning (LAMP)."""

from __future__ import annotations

import torch

from workbench.prune.base import (Pruned, apply_masks, check_scope, check_sparsity,
                                  masks_from_scores, register_pruner, weight_scores)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every weight of one layer: with the layer's weights sorted by ascending
    magnitude, ``score(u) = w_u² / Σ_{v ≥ u} w_v²`` (ties in the order of position).

    The largest weight of each layer scores 1, so a global threshold never empties a layer.

    Examples
    --------
    >>> import torch
    >>> lamp_scores(torch.tensor([3.0, -1.0, 2.0]))
    tensor([1.0000, 0.0714, 0.3077])
    """
    sq = weight.detach().flatten().float() ** 2
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])  # Σ_{v ≥ u}
    scores = torch.empty_like(sq)
    scores[order] = torch.where(tail > 0, sorted_sq / tail.clamp_min(1e-30), torch.zeros_like(tail))
    return scores.view_as(weight)


@register_pruner("lamp", reference="Lee et al. 2021, 'Layer-adaptive Sparsity for the "
                 "Magnitude-based Pruning' (LAMP, ICLR).")
def lamp(model, sparsity, *, data=None, scope="global", exclude=(), seed=0,
         per_layer_sparsity=None) -> Pruned:
    """Remove the weights with the lowest LAMP scores over all layers together (per layer the
    ranking equals plain magnitude, so ``scope="layer"`` is magnitude pruning, and takes
    ``per_layer_sparsity``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = lamp(create_model("mlp", (4,), 2), 0.9)
    >>> all(m.any() for m in p.masks.values())  # no layer is emptied
    True
    """
    sparsity = check_sparsity(sparsity)
    scores = weight_scores(model, exclude, fn=lamp_scores)
    masks = masks_from_scores(scores, sparsity, check_scope(scope),
                              per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks)

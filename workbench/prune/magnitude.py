"""Random, magnitude and global magnitude (GlobalMP) pruning."""

from __future__ import annotations

import torch

from workbench.prune.base import (Pruned, apply_masks, check_scope, masks_from_scores,
                                  register_pruner, weight_scores)


@register_pruner("random", reference="Random unstructured pruning (baseline; torch.nn.utils.prune.random_unstructured).")
def random_pruning(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
                   per_layer_sparsity=None) -> Pruned:
    """Remove a random ``sparsity`` fraction of weights (seeded).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = random_pruning(create_model("mlp", (4,), 2), 0.5, seed=1)
    >>> sorted(p.masks)
    ['fc', 'features.1', 'features.3']
    """
    gen = torch.Generator().manual_seed(seed)
    scores = weight_scores(model, exclude, fn=lambda w: torch.rand(w.shape, generator=gen))
    masks = masks_from_scores(scores, sparsity, check_scope(scope),
                              per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks)


@register_pruner("magnitude", reference="Han et al. 2015, 'Learning both Weights and Connections for Efficient Neural Networks'.")
def magnitude(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
              per_layer_sparsity=None) -> Pruned:
    """Remove the smallest-|w| weights, per layer (default) or globally; per layer, each layer
    may have its own sparsity (``per_layer_sparsity``, see :mod:`workbench.prune.base`).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = magnitude(create_model("mlp", (4,), 2), 0.5)
    >>> round(1 - float(p.masks["features.1"].float().mean()), 2)
    0.5
    >>> p = magnitude(create_model("mlp", (4,), 2), 0.5, per_layer_sparsity={"fc": 0.75})
    >>> round(1 - float(p.masks["fc"].float().mean()), 2)
    0.75
    """
    masks = masks_from_scores(weight_scores(model, exclude), sparsity, check_scope(scope),
                              per_layer_sparsity=per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks)


@register_pruner("global_magnitude", reference="Gupta et al. 2022, 'Is Complexity Required for Neural Network Pruning? A Case Study on Global Magnitude Pruning' (GlobalMP, minimum threshold).")
def global_magnitude(model, sparsity, *, data=None, scope="global", exclude=(), seed=0,
                     min_keep: float = 0.0, per_layer_sparsity=None) -> Pruned:
    """Remove the smallest-|w| weights over all layers at once, keeping at least a ``min_keep``
    fraction of each layer (GlobalMP's minimum threshold against layer collapse). With
    ``scope="layer"`` it is per-layer magnitude pruning (and takes ``per_layer_sparsity``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = global_magnitude(create_model("mlp", (4,), 2), 0.9, min_keep=0.05)
    >>> all(m.float().mean() >= 0.05 for m in p.masks.values())
    True
    """
    scope = check_scope(scope)
    masks = masks_from_scores(weight_scores(model, exclude), sparsity, scope, min_keep,
                              per_layer_sparsity)
    return Pruned(apply_masks(model, masks), masks, {"min_keep": min_keep})

"""Gradual magnitude pruning with the cubic sparsity schedule of Zhu & Gupta (2017)."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.prune.base import (Pruned, check_scope, check_sparsity, clone, layer_targets,
                                  masks_from_scores, positive_float, positive_int,
                                  prunable_layers, register_pruner, require_data, weight_scores)
from workbench.train import apply_masks_, fit


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps: ``s_t = s_f + (s_i - s_f)(1 - t/n)^3``
    for ``t = 1 … n`` (fast pruning first, slower as fewer weights remain; ends at ``s_f``).

    Examples
    --------
    >>> [round(s, 3) for s in cubic_schedule(0.8, 4)]
    [0.463, 0.7, 0.788, 0.8]
    """
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def magnitude_step(model, masks, sparsity: float, scope: str, exclude=(),
                   per_layer_sparsity=None) -> dict:
    """Magnitude masks at ``sparsity`` (or each layer's ``per_layer_sparsity``) that keep every
    earlier-pruned weight pruned."""
    scores = weight_scores(model, exclude)
    if masks:  # earlier-pruned weights score below every live one, so they go first
        scores = {n: torch.where(masks[n], s, torch.full_like(s, -1.0)) for n, s in scores.items()}
    return masks_from_scores(scores, sparsity, scope, per_layer_sparsity=per_layer_sparsity)


@register_pruner("gradual", reference="Zhu & Gupta 2017, 'To prune, or not to prune: exploring "
                 "the efficacy of pruning for model compression' (cubic schedule).",
                 needs_data=True, trains=True)
def gradual(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0, steps: int = 4,
            epochs_per_step: int = 1, initial_sparsity: float = 0.0, lr: float = 1e-3,
            batch_size: int = 64, per_layer_sparsity=None) -> Pruned:
    """Prune by magnitude in ``steps`` steps following the cubic schedule, fine-tuning
    ``epochs_per_step`` epochs (pruned weights held at zero) after each step. The last step
    reaches ``sparsity`` exactly and is followed by fine-tuning too, as training continues after
    the final pruning step in the paper. With ``per_layer_sparsity`` every layer follows its
    own cubic schedule to its own target (``info["layer_schedule"]``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = gradual(create_model("mlp", (1, 8, 8), 10), 0.8, data=load_dataset("digits"), steps=2)
    >>> [round(s, 2) for s in p.info["schedule"]]
    [0.7, 0.8]
    """
    sparsity = check_sparsity(sparsity)
    scope = check_scope(scope)
    steps = positive_int(steps, "steps")
    epochs = positive_int(epochs_per_step, "epochs_per_step", minimum=0)
    initial = check_sparsity(initial_sparsity)
    targets = layer_targets(per_layer_sparsity, sparsity,
                            prunable_layers(model, exclude), scope)  # fails now, not after training
    lowest = min([sparsity, *(targets or {}).values()])
    if initial > lowest:
        raise ParameterError(f"initial_sparsity ({initial}) must not exceed sparsity ({lowest})")
    lr = positive_float(lr, "lr")
    batch_size = positive_int(batch_size, "batch_size")
    require_data(data, "gradual", model)
    schedule = cubic_schedule(sparsity, steps, initial)
    layer_schedule = {n: cubic_schedule(s, steps, initial) for n, s in (targets or {}).items()}
    work, masks = clone(model), None
    for t, target in enumerate(schedule):
        masks = magnitude_step(work, masks, target, scope, exclude,
                               {n: s[t] for n, s in layer_schedule.items()})
        apply_masks_(work, masks)
        if epochs:
            fit(work, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size,
                seed=seed + t, masks=masks, progress=False)
    info = {"schedule": schedule, "epochs_per_step": epochs}
    if layer_schedule:
        info["layer_schedule"] = layer_schedule
    return Pruned(work, masks, info)

"""Iterative magnitude pruning with weight rewinding (the lottery ticket procedure)."""

from __future__ import annotations

import copy

from workbench.prune.base import (Pruned, check_scope, check_sparsity, clone, layer_targets,
                                  positive_float, positive_int, prunable_layers, register_pruner,
                                  require_data)
from workbench.prune.gradual import magnitude_step
from workbench.train import apply_masks_, fit


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Overall sparsity after each round when every round removes the same fraction
    ``p = 1 - (1 - s)^(1/rounds)`` of the weights still alive (the last one is ``s`` exactly).

    Examples
    --------
    >>> [round(s, 3) for s in round_sparsities(0.875, 3)]
    [0.5, 0.75, 0.875]
    """
    out = [1 - (1 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]
    out[-1] = sparsity
    return out


@register_pruner("lottery", reference="Frankle & Carbin 2019, 'The Lottery Ticket Hypothesis' "
                 "(iterative magnitude pruning); Frankle et al. 2020, 'Linear Mode Connectivity "
                 "and the Lottery Ticket Hypothesis' (rewinding).", needs_data=True, trains=True)
def lottery(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0, rounds: int = 3,
            epochs: int = 2, rewind_epochs: int = 0, lr: float = 1e-3,
            batch_size: int = 64, per_layer_sparsity=None) -> Pruned:
    """Train ``epochs``, prune the smallest surviving weights, rewind the survivors to their
    values at the rewind point (the given weights, or after ``rewind_epochs`` of training) and
    repeat for ``rounds`` rounds; the result is the rewound ticket retrained ``epochs`` epochs
    with the final mask. With ``per_layer_sparsity`` every layer removes the same fraction of
    its survivors per round towards its own target.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> p = lottery(create_model("mlp", (1, 8, 8), 10), 0.75, data=load_dataset("digits"),
    ...             rounds=2, epochs=1)
    >>> [round(s, 2) for s in p.info["round_sparsity"]]
    [0.5, 0.75]
    """
    sparsity = check_sparsity(sparsity)
    scope = check_scope(scope)
    rounds = positive_int(rounds, "rounds")
    epochs = positive_int(epochs, "epochs", minimum=0)
    rewind_epochs = positive_int(rewind_epochs, "rewind_epochs", minimum=0)
    lr = positive_float(lr, "lr")
    batch_size = positive_int(batch_size, "batch_size")
    require_data(data, "lottery", model)
    layer_targets_ = layer_targets(per_layer_sparsity, sparsity, prunable_layers(model, exclude),
                                   scope)  # a wrong name fails now, not after training
    per_round = {n: round_sparsities(s, rounds) for n, s in (layer_targets_ or {}).items()}

    def train(work, n, masks, offset):
        fit(work, data.x_train, data.y_train, epochs=n, lr=lr, batch_size=batch_size,
            seed=seed + offset, masks=masks, progress=False)

    work = clone(model)
    train(work, rewind_epochs, None, 0)
    rewind = copy.deepcopy(work.state_dict())
    masks = None
    targets = round_sparsities(sparsity, rounds)
    for r, target in enumerate(targets):
        train(work, epochs, masks, r + 1)
        masks = magnitude_step(work, masks, target, scope, exclude,
                               {n: s[r] for n, s in per_round.items()})
        work.load_state_dict(rewind)
        apply_masks_(work, masks)
    train(work, epochs, masks, rounds + 1)
    return Pruned(work.eval(), masks, {"round_sparsity": targets, "rewind_epochs": rewind_epochs})

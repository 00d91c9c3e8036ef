"""Pruning methods (a registry) and the mask helpers they share."""

from workbench.prune.base import (PRUNERS, Pruned, apply_masks, masks_from_scores,
                                  prunable_layers, register_pruner)
from workbench.prune import magnitude as _magnitude  # noqa: F401  (registers methods)

__all__ = ["PRUNERS", "Pruned", "apply_masks", "masks_from_scores", "prunable_layers",
           "register_pruner"]

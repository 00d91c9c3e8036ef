"""Pruning methods (a registry) and the mask helpers they share."""

from workbench.prune.base import (PRUNERS, Pruned, apply_masks, masks_from_scores,
                                  prunable_layers, register_pruner)
# importing the method modules registers them
from workbench.prune import magnitude as _magnitude  # noqa: F401
from workbench.prune import saliency as _saliency  # noqa: F401
from workbench.prune import lamp as _lamp  # noqa: F401
from workbench.prune import nm as _nm  # noqa: F401
from workbench.prune import structured as _structured  # noqa: F401
from workbench.prune import gradual as _gradual  # noqa: F401
from workbench.prune import lottery as _lottery  # noqa: F401
from workbench.prune import admm as _admm  # noqa: F401
from workbench.prune import active as _active  # noqa: F401
from workbench.prune import relevance as _relevance  # noqa: F401

__all__ = ["PRUNERS", "Pruned", "apply_masks", "masks_from_scores", "prunable_layers",
           "register_pruner"]

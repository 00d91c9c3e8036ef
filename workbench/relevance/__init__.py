"""What a model looks at: LRP relevance and captum attributions, computed only (no plots).

Every method is registered in :data:`ATTRIBUTIONS` with one signature,
``fn(model, x, target=None, **params) -> Attribution``; none modifies the model (they explain a
private copy) or leaves hooks behind. :func:`relevance` is LRP with a rule per layer
(:mod:`~workbench.relevance.rules`, composites in :data:`COMPOSITES`);
:func:`relevance_preservation` compares the maps of two models.

Examples
--------
>>> import torch
>>> from workbench.models import create_model
>>> from workbench.relevance import ATTRIBUTIONS, relevance, relevance_preservation
>>> net, x = create_model("lenet5", (1, 8, 8), 10), torch.rand(4, 1, 8, 8)
>>> a = relevance(net, x, target=0, composite="epsilon_plus")
>>> a.maps.shape, a.method
(torch.Size([4, 1, 8, 8]), 'lrp')
>>> ATTRIBUTIONS.names()
['integrated_gradients', 'lrp', 'occlusion', 'saliency']
>>> relevance_preservation(a, a, k=5).mean_topk_overlap
1.0
"""

from workbench.relevance.attribution import ATTRIBUTIONS, Attribution, register_attribution
from workbench.relevance.canonize import Canonized, Sum, canonize, fold_batchnorm
from workbench.relevance.composites import COMPOSITES, Composite, get_composite
from workbench.relevance.gradients import integrated_gradients, occlusion, saliency
from workbench.relevance.lrp import LRP, lrp, relevance
from workbench.relevance.preservation import Preservation, relevance_preservation
from workbench.relevance.rules import (RULES, AlphaBeta, Epsilon, Flat, Gamma, Identity, Rule,
                                       WSquare, ZBox, ZPlus, make_rule)

__all__ = ["ATTRIBUTIONS", "Attribution", "register_attribution", "relevance", "LRP", "lrp",
           "saliency", "integrated_gradients", "occlusion", "COMPOSITES", "Composite",
           "get_composite", "RULES", "Rule", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox",
           "Flat", "WSquare", "Identity", "make_rule", "canonize", "Canonized", "fold_batchnorm",
           "Sum", "Preservation", "relevance_preservation"]

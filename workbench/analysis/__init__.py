"""Pure analyses of a model: loss landscapes and Hessian spectra.

Every function is seeded, takes a model (or a :class:`~workbench.session.Variant`) and data, never
modifies the model, and returns a frozen result object with its coordinates; plotting is a
separate step.

Examples
--------
>>> import torch
>>> from workbench.analysis import landscape_2d, top_eigenvalues
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
>>> landscape_2d(net, x, y, steps=3, progress=False).loss.shape
(3, 3)
>>> top_eigenvalues(net, x, y, k=1, progress=False).values.shape
(1,)
"""

from workbench.analysis.density import SpectralDensity, density
from workbench.analysis.directions import Projection, project_onto, random_directions
from workbench.analysis.hessian import (Eigen, HessianOperator, Trace, eigen_landscape, hvp,
                                        top_eigenvalues, trace)
from workbench.analysis.landscape import Curve, Landscape, interpolate, landscape_1d, landscape_2d

__all__ = ["random_directions", "project_onto", "Projection", "Landscape", "Curve",
           "landscape_2d", "landscape_1d", "interpolate", "HessianOperator", "hvp", "Eigen",
           "top_eigenvalues", "Trace", "trace", "SpectralDensity", "density", "eigen_landscape"]

# active subspaces (Cui, Zhang et al. 2020): spectra, ASNet reduction, universal attack
from workbench.analysis.subspace import (ActiveSubspace, active_dimension,  # noqa: E402
                                         active_subspace, all_layers)
from workbench.analysis.asnet import ASNetResult, asnet  # noqa: E402
from workbench.analysis.attack import AttackCurve, attack_curve  # noqa: E402

__all__ += ["ActiveSubspace", "active_dimension", "active_subspace", "all_layers", "ASNetResult",
            "asnet", "AttackCurve", "attack_curve"]

# robustness to common corruptions (Hendrycks & Dietterich 2019; MNIST-C) and feature geometry
# (Robustness Lottery, Li et al. 2024), CKA, model maps, neural collapse
from workbench.analysis.robustness import (CorruptionResult, Flips, Gallery,  # noqa: E402
                                           SampleFlags, SensitivityMatrix, corruption_errors,
                                           flips, gallery, layer_sensitivity, mce, sample_flags)
from workbench.analysis.geometry import (ClassGeometry, Drift, Embedding, Geometry,  # noqa: E402
                                         drift, embed, feature_geometry, per_class)
from workbench.analysis.similarity import (NC, Similarity, geometry_vector,  # noqa: E402
                                           linear_cka, model_similarity, neural_collapse)

__all__ += ["CorruptionResult", "corruption_errors", "mce", "SampleFlags", "sample_flags",
            "Flips", "flips", "SensitivityMatrix", "layer_sensitivity", "Gallery", "gallery",
            "Geometry", "feature_geometry", "ClassGeometry", "per_class", "Drift", "drift", "Embedding",
            "embed", "linear_cka", "geometry_vector", "Similarity", "model_similarity", "NC",
            "neural_collapse"]

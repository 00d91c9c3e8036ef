"""Active-subspace channel pruning: keep the channels the active subspace of a layer uses.

Cui, Zhang et al. (SIMODS 2020) find that a layer's loss gradients live in a low-dimensional
*active subspace* (see :mod:`workbench.analysis.subspace`). A channel matters if it carries
weight in that subspace: with the eigenpairs ``(λ_k, v_k)`` of the channel-pooled gradient
covariance ``E[g gᵀ]`` of layer ``L`` (``g_c = Σ_positions ∂ℓ/∂a_c``, the gradient of the layer's
output channel ``c``), the importance of channel ``c`` is

    s_c = Σ_{k ≤ active_dim} λ_k v_k[c]²,

the gradient energy of channel ``c`` inside the active subspace. Every layer then loses the
``sparsity`` fraction of its channels with the smallest ``s_c``, physically, with the channel
bookkeeping of :mod:`workbench.prune.structured` (residual groups sum their producers' scores;
channels reaching the output are kept).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workbench.analysis.subspace import _check_threshold, _subsample, all_layers, layer_names
from workbench.errors import ParameterError
from workbench.prune.base import (Pruned, check_sparsity, positive_int, prunable_layers,
                                  refuse_per_layer, register_pruner, require_data)
from workbench.prune.structured import NO_PER_LAYER, _structured


def active_channel_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers=None, *,
                          threshold: float = 0.95, target="loss", batch_size: int = 256,
                          seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """Per layer ``(channel importance, active dimension)`` of the channel-pooled gradients.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    >>> s, k = active_channel_scores(net, torch.randn(8, 3), torch.zeros(8, dtype=torch.long),
    ...                              ["0"], target="logit")["0"]
    >>> s.round(3).tolist(), k   # only neuron 0 reaches logit 0
    ([1.0, 0.0], 1)
    """
    spaces = all_layers(model, x, y, layers, target=target, pool="channel",
                        threshold=threshold, method="auto", batch_size=batch_size, seed=seed)
    return {name: (sp.channel_importance(), sp.active_dim) for name, sp in spaces.items()}


def active_neuron_counts(model, x=None, y=None, layers=None, *, threshold: float = 0.95,
                         target="loss", n_samples: int | None = 512,
                         seed: int = 0) -> dict[str, int]:
    """Active dimension of the channel-pooled gradients of every Conv2d/Linear layer: the
    number of "active neurons" each layer needs, to set next to the channel counts of
    structured-pruned variants (``variant.info["channels"]``, or :func:`channel_counts`).

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> counts = active_neuron_counts(s.base)
    >>> list(counts) == list(channel_counts(s.base.model))
    True
    >>> all(1 <= counts[n] <= c for n, c in channel_counts(s.base.model).items())
    True
    """
    spaces = all_layers(model, x, y, layers, target=target, pool="channel", threshold=threshold,
                        n_samples=n_samples, seed=seed)
    return {name: sp.active_dim for name, sp in spaces.items()}


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (Conv2d) or features (Linear) of every layer, by module name.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> channel_counts(create_model("lenet5", (1, 8, 8), 10))
    {'features.0': 6, 'features.3': 16, 'classifier.0': 120, 'classifier.2': 84, 'fc': 10}
    """
    if not isinstance(model, nn.Module) and hasattr(model, "model"):
        model = model.model
    return {n: int(m.weight.shape[0]) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@register_pruner("active_subspace", reference="Cui, Zhang et al. 2020, 'Active Subspace of "
                 "Neural Networks: Structural Analysis and Universal Attacks' (channel energy in "
                 "the active subspace of the loss gradients).", needs_data=True, structured=True,
                 per_layer=False)
def active_subspace(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
                    threshold: float = 0.95, samples: int = 512, batch_size: int = 256,
                    per_layer_sparsity=None) -> Pruned:
    """Remove the ``sparsity`` fraction of output channels of every layer with the least
    gradient energy in the layer's active subspace (``threshold`` of the variance), measured on
    ``samples`` training images (a seeded, class-stratified subset). Physically slimmed like
    :func:`~workbench.prune.structured.l1_structured`.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> p = active_subspace(s.base.model, 0.5, data=s.data)
    >>> p.info["channels"]["features.0"], p.info["active_dims"]["features.0"] <= 6
    ([6, 3], True)
    """
    sparsity = check_sparsity(sparsity)
    refuse_per_layer(per_layer_sparsity, "active_subspace", NO_PER_LAYER)
    require_data(data, "active_subspace", model)
    threshold = _check_threshold(threshold)
    samples = positive_int(samples, "samples")
    batch_size = positive_int(batch_size, "batch_size")
    if scope != "layer":
        raise ParameterError(f"active_subspace removes the same fraction of channels from every "
                             f"layer; only scope='layer' is supported, got {scope!r}")
    layers = [n for n in layer_names(model) if n in prunable_layers(model, exclude)]
    x, y = _subsample(data.x_train, data.y_train, samples, seed)
    scores = active_channel_scores(model, x, y, layers, threshold=threshold,
                                   batch_size=batch_size, seed=seed)
    pruned = _structured(model, sparsity, data, scope, exclude, 1.0, "active_subspace",
                         scores=lambda name, _module: torch.as_tensor(scores[name][0]))
    info = {k: v for k, v in pruned.info.items() if k != "p"}
    info.update(threshold=threshold, samples=int(len(x)),
                active_dims={n: int(k) for n, (_, k) in scores.items()})
    return Pruned(pruned.model, {}, info)


__all__ = ["active_subspace", "active_neuron_counts", "active_channel_scores", "channel_counts"]

"""N:M semi-structured sparsity (e.g. 2:4, which sparse tensor cores accelerate)."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.prune.base import (Pruned, apply_masks, check_sparsity, prunable_layers,
                                  refuse_per_layer, register_pruner)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-|w| weights of every group of ``m`` consecutive input weights.

    The weight is viewed as ``(out, fan_in)`` (a Conv2d kernel flattened per output channel as
    ``in * kh * kw``); ``fan_in`` must be divisible by ``m``. Ties go to the earlier position.

    Examples
    --------
    >>> import torch
    >>> nm_mask(torch.tensor([[4.0, -1.0, 3.0, 2.0]]), 2, 4)
    tensor([[ True, False,  True, False]])
    """
    groups = weight.detach().reshape(weight.shape[0], -1, m).abs()
    # stable sort on -|w|: the n largest, earlier positions first among ties
    top = torch.argsort(-groups, dim=-1, stable=True)[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.view_as(weight)


@register_pruner("nm", reference="Mishra et al. 2021, 'Accelerating Sparse Deep Neural Networks' "
                 "(NVIDIA 2:4 structured sparsity); Zhou et al. 2021 'Learning N:M Fine-grained "
                 "Structured Sparse Neural Networks From Scratch'.", per_layer=False)
def nm(model, sparsity=0.5, *, data=None, scope="layer", exclude=(), seed=0, n: int = 2,
       m: int = 4, skip_indivisible: bool = False, per_layer_sparsity=None) -> Pruned:
    """N:M sparsity: in every group of ``m`` consecutive input weights of each output row keep
    the ``n`` largest magnitudes.

    The sparsity is ``1 - n/m`` by construction: the ``sparsity`` argument is only validated
    (and ``scope`` is ignored); the real value is stored in ``info["sparsity"]``. Layers whose
    fan-in (``in_features``, or ``in_channels·kh·kw``) is not divisible by ``m`` raise
    :class:`UnsupportedLayerError` unless they are in ``exclude`` or ``skip_indivisible=True``
    (then they stay dense and are listed in ``info["skipped"]``). ``per_layer_sparsity`` is
    refused: the pattern fixes every layer's sparsity.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = nm(create_model("mlp", (8,), 2), n=2, m=4)
    >>> p.info["sparsity"], float(p.masks["fc"].float().mean())
    (0.5, 0.5)
    """
    check_sparsity(sparsity)
    refuse_per_layer(per_layer_sparsity, "nm",
                     "N:M fixes every layer's sparsity at 1 - n/m; exclude layers to keep them "
                     "dense")
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"N:M pruning needs integers {name} >= 1, got {name}={value!r}")
    if n >= m:
        raise ParameterError(f"N:M pruning needs n < m (keep n of every m weights), got {n}:{m}")
    masks, skipped = {}, []
    for name, layer in prunable_layers(model, exclude).items():
        fan_in = layer.weight[0].numel()
        if fan_in % m:
            if not skip_indivisible:
                raise UnsupportedLayerError(
                    f"layer {name!r} has {fan_in} inputs per output, not divisible by m={m}: "
                    f"exclude it (exclude=[{name!r}]) or pass skip_indivisible=True"
                )
            skipped.append(name)
            continue
        masks[name] = nm_mask(layer.weight, n, m)
    if not masks:
        raise UnsupportedLayerError(f"no layer has a fan-in divisible by m={m}; skipped {skipped}")
    return Pruned(apply_masks(model, masks), masks,
                  {"n": n, "m": m, "sparsity": 1 - n / m, "skipped": skipped})

"""Binary weights (XNOR-Net / BWN): ``w ≈ α·sign(w)`` with ``α = mean|w|`` per channel or tensor."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.quantize.apply import quantize_model
from workbench.quantize.base import (Quantized, QuantizedTensor, check_granularity,
                                     register_quantizer, rows)


def binary_quantize(weight: torch.Tensor, granularity: str = "channel",
                    mask: torch.Tensor | None = None) -> QuantizedTensor:
    """Binarize ``weight``: codes ``+1`` where ``w >= 0`` else ``-1``, scale ``α = mean|w|``.

    ``α`` is the least-squares optimal scale for sign codes. With a ``mask``, pruned weights get
    code 0 and ``α`` averages the kept weights only: a pruned binary layer is ternary-valued
    ({-1, 0, +1}), so its codes are stored with 2 bits (``bits == 2``); unpruned layers use 1.

    Examples
    --------
    >>> import torch
    >>> qt = binary_quantize(torch.tensor([[0.5, -1.0, 0.0, 1.5]]))
    >>> qt.codes.tolist(), float(qt.scale), qt.bits
    ([[1, -1, 1, 1]], 0.75, 1)
    >>> qt = binary_quantize(torch.tensor([[0.5, -1.0, 0.0, 1.5]]),
    ...                      mask=torch.tensor([[True, True, False, True]]))
    >>> qt.codes.tolist(), float(qt.scale), qt.bits
    ([[1, -1, 0, 1]], 1.0, 2)
    """
    r = rows(weight.detach().float(), granularity)
    keep = torch.ones_like(r, dtype=torch.bool) if mask is None else rows(mask.bool(), granularity)
    alpha = (r.abs() * keep).sum(1) / keep.sum(1).clamp(min=1)
    codes = torch.where(r >= 0, 1, -1) * keep
    pruned = not bool(keep.all())
    return QuantizedTensor(codes.to(torch.int8).reshape(weight.shape), alpha,
                           torch.zeros(len(r), dtype=torch.int32), 2 if pruned else 1)


@register_quantizer("binary", bits=(1,), reference=(
    "Rastegari et al. 2016, 'XNOR-Net: ImageNet Classification Using Binary Convolutional "
    "Neural Networks' (binary-weight networks, scale = mean|w|)."))
def binary(model, bits=1, *, data=None, granularity="channel", symmetric=True, exclude=(),
           seed=0, masks=None, activations=False, calibration_batches=8) -> Quantized:
    """Binarize every Conv2d/Linear weight to ``±α`` (pruned weights stay 0, see
    :func:`binary_quantize`).

    ``symmetric`` must stay True. ``activations=True`` also quantizes each layer's input to
    int8 (needs ``data``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> q = binary(create_model("mlp", (4,), 2))
    >>> sorted(set(q.layers["fc"].codes.flatten().tolist()))
    [-1, 1]
    """
    check_granularity(granularity)
    if symmetric is not True:
        raise ParameterError("binary quantization is symmetric by definition; leave "
                             "symmetric=True (use 'uniform' for affine quantization)")
    return quantize_model(model, lambda w, b, mask: binary_quantize(w, granularity, mask), bits,
                          supported=(1,), method="binary", exclude=exclude, masks=masks,
                          data=data, activations=activations,
                          calibration_batches=calibration_batches,
                          info={"granularity": granularity})

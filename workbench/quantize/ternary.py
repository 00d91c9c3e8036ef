"""Ternary weight networks (TWN): codes in {-1, 0, +1} with one scale per channel or tensor."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.quantize.apply import quantize_model
from workbench.quantize.base import (Quantized, QuantizedTensor, check_granularity,
                                     register_quantizer, rows)

THRESHOLD_FACTOR = 0.7  # Li & Liu's approximation of the optimal threshold for Gaussian weights


def ternary_quantize(weight: torch.Tensor, granularity: str = "channel",
                     mask: torch.Tensor | None = None) -> QuantizedTensor:
    """TWN ternarization: ``w ≈ α·sign(w)·[|w| > Δ]``.

    ``Δ = 0.7·mean|w|`` and ``α = mean(|w| : |w| > Δ)``, per row (channel) or per tensor.

    With a ``mask`` the means run over the kept (unpruned) weights only and pruned weights get
    code 0. A row with no weight above ``Δ`` (all zero) gets scale 1 and all-zero codes.

    Examples
    --------
    >>> import torch
    >>> qt = ternary_quantize(torch.tensor([[0.1, -0.9, 0.5, 0.05]]))
    >>> qt.codes.tolist(), round(float(qt.scale), 4)
    ([[0, -1, 1, 0]], 0.7)
    """
    r = rows(weight.detach().float(), granularity)
    keep = torch.ones_like(r, dtype=torch.bool) if mask is None else rows(mask.bool(), granularity)
    mag = r.abs() * keep
    delta = THRESHOLD_FACTOR * mag.sum(1) / keep.sum(1).clamp(min=1)
    big = (mag > delta[:, None]) & keep
    alpha = (mag * big).sum(1) / big.sum(1).clamp(min=1)
    alpha = torch.where(big.any(1), alpha, torch.ones_like(alpha))
    codes = (torch.sign(r) * big).to(torch.int8).reshape(weight.shape)
    return QuantizedTensor(codes, alpha, torch.zeros(len(r), dtype=torch.int32), 2)


@register_quantizer("ternary", bits=(2,), reference=(
    "Li & Liu 2016, 'Ternary Weight Networks' (arXiv:1605.04711)."))
def ternary(model, bits=2, *, data=None, granularity="channel", symmetric=True, exclude=(),
            seed=0, masks=None, activations=False, calibration_batches=8) -> Quantized:
    """Ternarize every Conv2d/Linear weight to ``α·{-1, 0, +1}`` (2-bit codes).

    ``symmetric`` must stay True (ternary levels are symmetric by definition).
    ``activations=True`` also quantizes each layer's input to int8 (needs ``data``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> q = ternary(create_model("mlp", (4,), 2))
    >>> sorted(set(q.layers["fc"].codes.flatten().tolist())) <= [-1, 0, 1]
    True
    """
    check_granularity(granularity)
    if symmetric is not True:
        raise ParameterError("ternary quantization is symmetric by definition; leave "
                             "symmetric=True (use 'uniform' for affine quantization)")
    return quantize_model(model, lambda w, b, mask: ternary_quantize(w, granularity, mask), bits,
                          supported=(2,), method="ternary", exclude=exclude, masks=masks,
                          data=data, activations=activations,
                          calibration_batches=calibration_batches,
                          info={"granularity": granularity, "threshold_factor": THRESHOLD_FACTOR})

"""Uniform (linear) quantization: symmetric or affine, per channel or per tensor."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.quantize.apply import quantize_model
from workbench.quantize.base import (Quantized, QuantizedTensor, check_granularity,
                                     register_quantizer, rows)

UNIFORM_BITS = (8, 7, 6, 5, 4, 3, 2)


def check_symmetric(symmetric) -> bool:
    if not isinstance(symmetric, bool):
        raise ParameterError(f"symmetric must be True or False, got {symmetric!r}")
    return symmetric


def uniform_quantize(weight: torch.Tensor, bits: int, granularity: str = "channel",
                     symmetric: bool = True, mask: torch.Tensor | None = None) -> QuantizedTensor:
    """Round ``weight`` to ``bits``-bit uniform codes with one scale per row (or per tensor).

    Symmetric: ``scale = max|w| / (2**(bits-1) - 1)``, codes in ``±(2**(bits-1) - 1)``, zero
    point 0. Affine: the range ``[min(w, 0), max(w, 0)]`` is split into ``2**bits - 1`` steps,
    codes lie in ``[0, 2**bits - 1]`` and the zero point is rounded to an integer so that 0 is
    exactly representable (masked weights, ReLU zeros). Rows that are all zero get scale 1.
    ``mask`` needs no special care: masked weights are zero and map to the zero point.

    Examples
    --------
    >>> import torch
    >>> qt = uniform_quantize(torch.tensor([[-1.0, 0.2, 0.5]]), bits=2)
    >>> qt.codes.tolist(), qt.scale.tolist(), qt.dequantize().tolist()
    ([[-1, 0, 0]], [1.0], [[-1.0, 0.0, 0.0]])
    >>> qa = uniform_quantize(torch.tensor([[-1.0, 0.0, 2.0]]), bits=2, symmetric=False)
    >>> qa.codes.tolist(), qa.zero_point.tolist(), qa.dequantize().tolist()
    ([[0, 1, 3]], [1], [[-1.0, 0.0, 2.0]])
    """
    r = rows(weight.detach().float(), granularity)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale = r.abs().amax(1) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.zeros(len(r), dtype=torch.int32)
        dtype = torch.int8
    else:
        qmin, qmax = 0, 2 ** bits - 1
        lo, hi = r.amin(1).clamp(max=0), r.amax(1).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.round(-lo / scale).clamp(qmin, qmax).to(torch.int32)
        dtype = torch.uint8
    codes = torch.round(r / scale[:, None]) + zero_point[:, None]
    codes = codes.clamp(qmin, qmax).to(dtype).reshape(weight.shape)
    return QuantizedTensor(codes, scale, zero_point, int(bits))


@register_quantizer("uniform", bits=UNIFORM_BITS, reference=(
    "Jacob et al. 2018, 'Quantization and Training of Neural Networks for Efficient "
    "Integer-Arithmetic-Only Inference'; Krishnamoorthi 2018, 'Quantizing deep convolutional "
    "networks for efficient inference: A whitepaper'."))
def uniform(model, bits=8, *, data=None, granularity="channel", symmetric=True, exclude=(),
            seed=0, masks=None, per_layer_bits=None, activations=False,
            calibration_batches=8) -> Quantized:
    """Uniform post-training quantization of every Conv2d/Linear weight.

    ``per_layer_bits`` maps layer names to their own width (mixed precision); other layers use
    ``bits``. ``activations=True`` also quantizes each layer's input to int8, calibrated on
    ``calibration_batches`` training batches of ``data``.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> q = uniform(create_model("mlp", (4,), 2), 4, per_layer_bits={"fc": 8})
    >>> q.info["bits"]
    {'features.1': 4, 'features.3': 4, 'fc': 8}
    >>> bool(q.layers["fc"].dequantize().eq(q.model.fc.weight).all())
    True
    """
    check_granularity(granularity)
    check_symmetric(symmetric)

    def quantize_weight(w, b, mask):
        return uniform_quantize(w, b, granularity, symmetric, mask)

    return quantize_model(model, quantize_weight, bits, supported=UNIFORM_BITS,
                          method="uniform", exclude=exclude, masks=masks,
                          per_layer_bits=per_layer_bits, data=data, activations=activations,
                          calibration_batches=calibration_batches,
                          info={"granularity": granularity, "symmetric": symmetric})

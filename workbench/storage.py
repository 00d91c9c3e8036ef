"""Storage size of a model's weights in the formats a compressed model can be stored in.

Sizes are computed from the masks and quantization codes, not by serialising: fp32 dense, CSR
(values + int16/int32 column indices + row pointers), bitmask (one bit per weight + values) and
packed low-bit codes (``bits`` per stored weight + per-channel scale/zero point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerStorage:
    """Bytes of one layer's weight in each format (``None`` where a format does not apply)."""

    numel: int
    nonzero: int
    dense: int
    csr: int
    bitmask: int
    packed: int | None

    @property
    def best(self) -> int:
        return min(b for b in (self.dense, self.csr, self.bitmask, self.packed) if b is not None)


def layer_storage(weight: torch.Tensor, mask: torch.Tensor | None = None,
                  bits: int | None = None, n_scales: int = 0,
                  n_codebook: int = 0) -> LayerStorage:
    """Storage of one weight tensor; ``bits`` is the code width if it is quantized.

    ``n_scales`` channels carry an fp32 scale and int32 zero point; ``n_codebook`` fp32
    codebook entries (k-means weight sharing) are stored instead of scales.

    Examples
    --------
    >>> import torch
    >>> s = layer_storage(torch.ones(4, 8), mask=torch.rand(4, 8) > 2)  # all pruned
    >>> s.dense, s.bitmask
    (128, 4)
    """
    numel = weight.numel()
    nonzero = int(mask.sum()) if mask is not None else int((weight != 0).sum())
    rows = weight.shape[0]
    cols = numel // max(rows, 1)
    value_bits = 32 if bits is None else bits
    values = math.ceil(nonzero * value_bits / 8)
    index_bytes = 2 if cols <= 65536 else 4
    side = n_scales * 8 + n_codebook * 4 if bits is not None else 0
    csr = values + nonzero * index_bytes + (rows + 1) * 4 + side
    bitmask = values + math.ceil(numel / 8) + side
    packed = math.ceil(numel * bits / 8) + side if bits is not None else None
    return LayerStorage(numel, nonzero, numel * 4, csr, bitmask, packed)


def model_storage(model: nn.Module, masks=None, quant=None) -> dict[str, LayerStorage]:
    """:class:`LayerStorage` for every Conv2d/Linear weight of ``model``."""
    masks, quant = masks or {}, quant or {}
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            q = quant.get(name)
            book = None if q is None else q.codebook
            out[name] = layer_storage(m.weight.detach(), masks.get(name),
                                      None if q is None else q.bits,
                                      0 if q is None or book is not None else q.scale.numel(),
                                      0 if book is None else book.numel())
    return out


def weight_sizes(model: nn.Module) -> dict[str, int]:
    """Layer name → number of weights, for every Conv2d/Linear layer of ``model``."""
    return {n: m.weight.numel() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def other_parameter_bytes(model: nn.Module) -> int:
    """fp32 bytes of everything that is not a Conv2d/Linear weight (biases, BatchNorm, …)."""
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    params = sum(p.numel() for p in model.parameters() if id(p) not in weights)
    buffers = sum(b.numel() for b in model.buffers() if b.dtype.is_floating_point)
    return 4 * (params + buffers)


def information_bound_bits(weight: torch.Tensor, value_bits: int = 32) -> float:
    """Information-theoretic size of a sparse weight, in bits: values + index bits.

    Index bits are ``log2 C(n, k)`` for ``k`` nonzeros among ``n`` weights (the fewest bits
    that tell every pattern with that count apart, ≈ ``n·H(k/n)``); values are ``value_bits``
    per nonzero. Compressed formats are judged against this (e.g. within 10 %).

    Examples
    --------
    >>> import torch
    >>> w = torch.zeros(4, 4)
    >>> w[0, 0] = 1.0  # 1 of 16 positions: log2(16) = 4 index bits + 32 value bits
    >>> round(information_bound_bits(w), 6)
    36.0
    """
    n, k = weight.numel(), int((weight != 0).sum())
    index = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    return index + k * value_bits

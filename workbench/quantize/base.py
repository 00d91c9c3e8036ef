"""The shared contract of every quantization method.

A quantization method is a function registered with :func:`register_quantizer`::

    fn(model, bits, *, data=None, granularity="channel", symmetric=True, exclude=(), seed=0,
       masks=None, **params) -> Quantized

It must not modify ``model``. It returns a :class:`Quantized` holding a new module whose Conv2d /
Linear weights are replaced by their de-quantized values (so the module runs anywhere), and, per
layer, the integer codes and scales (:class:`QuantizedTensor`) that define the compressed form and
that the low-bit backend packs. ``masks`` (from a pruned parent) are preserved: pruned weights
stay exactly zero after quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from workbench.errors import ParameterError
from workbench.registry import Registry

GRANULARITIES = ("channel", "tensor")


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Integer codes with per-channel (dim 0) or per-tensor scale and zero point.

    ``value = (codes - zero_point) * scale``; with a ``codebook`` (k-means clustering) the value
    is ``codebook[codes]`` instead: a ``(k,)`` codebook is shared by the whole layer, a
    ``(channels, k)`` codebook holds one row per output channel. ``bits`` is the storage width
    of one code.

    Examples
    --------
    >>> import torch
    >>> qt = QuantizedTensor(torch.tensor([[-1, 0, 1]]), torch.tensor([0.5]),
    ...                      torch.tensor([0]), bits=2)
    >>> qt.dequantize().tolist()
    [[-0.5, 0.0, 0.5]]
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    codebook: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        if self.codebook is not None:
            idx = self.codes.long()
            if self.codebook.ndim == 1:
                return self.codebook[idx]
            return self.codebook.gather(1, idx.reshape(len(idx), -1)).reshape(idx.shape)
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return (self.codes.float() - self.zero_point.reshape(shape)) * self.scale.reshape(shape)


@dataclass(frozen=True, eq=False)
class Quantized:
    """What a quantization method returns: the fake-quantized module and its codes per layer."""

    model: nn.Module
    layers: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QuantizerInfo:
    """Registry entry: the function plus the bit widths it supports and its source."""

    name: str
    fn: Callable[..., Quantized]
    reference: str
    bits: tuple[int, ...]
    needs_data: bool = False

    def __call__(self, *args, **kwargs) -> Quantized:
        return self.fn(*args, **kwargs)


QUANTIZERS: Registry[QuantizerInfo] = Registry("quantization method")


def register_quantizer(name: str, *, reference: str, bits: tuple[int, ...],
                       needs_data: bool = False):
    """Register a quantization function under ``name``; ``bits`` lists the widths it accepts."""

    def add(fn):
        QUANTIZERS.register(name)(QuantizerInfo(name, fn, reference, tuple(bits), needs_data))
        return fn

    return add


def check_bits(bits, supported: tuple[int, ...], method: str) -> int:
    """``bits`` as an int from ``supported``, or a clear :class:`ParameterError`."""
    try:
        b = int(bits)
    except (TypeError, ValueError):
        raise ParameterError(f"bits must be an integer, got {bits!r}") from None
    if b != bits or b not in supported:
        raise ParameterError(f"{method} supports bits in {list(supported)}, got {bits!r}")
    return b


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ParameterError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def rows(weight: torch.Tensor, granularity: str) -> torch.Tensor:
    """``weight`` as a 2-D view with one row per scale: ``(channels, -1)`` or ``(1, -1)``."""
    return weight.reshape(len(weight) if granularity == "channel" else 1, -1)

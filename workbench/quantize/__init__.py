"""Quantization methods (a registry) and the quantized-tensor container."""

from workbench.quantize.base import (QUANTIZERS, Quantized, QuantizedTensor,
                                     register_quantizer)
from workbench.quantize.activations import ActivationFakeQuant, activation_quantizers
from workbench.quantize import uniform as _uniform  # noqa: F401  (registers methods)
from workbench.quantize import ternary as _ternary  # noqa: F401
from workbench.quantize import binary as _binary  # noqa: F401
from workbench.quantize import kmeans as _kmeans  # noqa: F401

__all__ = ["QUANTIZERS", "Quantized", "QuantizedTensor", "register_quantizer",
           "ActivationFakeQuant", "activation_quantizers"]

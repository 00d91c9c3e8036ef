"""Quantization methods (a registry) and the quantized-tensor container."""

from workbench.quantize.base import (QUANTIZERS, Quantized, QuantizedTensor,
                                     register_quantizer)

__all__ = ["QUANTIZERS", "Quantized", "QuantizedTensor", "register_quantizer"]

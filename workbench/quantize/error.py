"""How far a quantized weight is from the original: the per-layer error report."""

from __future__ import annotations

import torch


def quantization_error(weight: torch.Tensor, quantized: torch.Tensor, bits: int) -> dict:
    """Mean squared, largest absolute and relative error of ``quantized`` against ``weight``.

    ``rel`` is ``||weight - quantized|| / ||weight||`` (0 for an all-zero weight).

    Examples
    --------
    >>> import torch
    >>> e = quantization_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]), bits=4)
    >>> e["mse"], e["max_abs"], e["rel"], e["bits"]
    (0.5, 1.0, 0.2, 4)
    """
    w = weight.detach().double()
    diff = w - quantized.detach().double()
    norm = float(w.norm())
    return {
        "mse": float(diff.pow(2).mean()) if diff.numel() else 0.0,
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
        "rel": float(diff.norm()) / norm if norm > 0 else 0.0,
        "bits": int(bits),
    }

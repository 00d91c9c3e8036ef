"""The int8-activation arithmetic of the ``lowbit`` kernels, simulated in torch (float64).

An engine that quantizes activations cannot match the fp32 variant exactly; its *reference* is
the variant with the same activation quantization simulated. :class:`SimulatedInt8Layer` is
that simulation for one layer run by the VNNI kernels: the input is rounded to uint8 per column
(one sample of a Linear layer, one im2col patch of a Conv2d) with exactly the kernel's rule
(the calibrated scale and zero point if the variant has them, else the column's min/max widened
to include 0, ``scale = (max - min) / 255``, ``zero_point = round(-min / scale)``; float32
division, round half to even), de-quantized, and multiplied by the layer's de-quantized weights
(BatchNorm folded) in float64. The engine's only remaining difference is fp32 rounding of the
final scale multiply.
"""

from __future__ import annotations

import torch
from torch import nn


def fake_quant_columns(rows: torch.Tensor, static: tuple[float, int] | None) -> torch.Tensor:
    """``rows (N, K)`` float32 rounded to uint8 per row and back, as the kernel does.

    Examples
    --------
    >>> import torch
    >>> fake_quant_columns(torch.tensor([[0.0, 1.0, 2.55]]), None).float().tolist()
    [[0.0, 1.0, 2.549999952316284]]
    >>> fake_quant_columns(torch.tensor([[0.004, 9.0]]), (0.01, 0)).float().tolist()
    [[0.0, 2.549999952316284]]
    """
    rows = rows.float()
    if static is not None:
        s = torch.full((len(rows), 1), float(static[0]))
        z = torch.full((len(rows), 1), float(static[1]))
    else:
        lo = rows.amin(1, keepdim=True).clamp(max=0)
        hi = rows.amax(1, keepdim=True).clamp(min=0)
        s = (hi - lo) / 255.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.round(-lo / s).clamp(0, 255)
    q = torch.clamp(torch.round(rows / s) + z, 0, 255)
    return (q.double() - z.double()) * s.double()


class SimulatedInt8Layer(nn.Module):
    """Reference of one int8-activation kernel layer (see the module docstring).

    Parameters
    ----------
    weight : Tensor
        De-quantized weights with BatchNorm folded, ``(O, K)``.
    bias : Tensor
        Folded bias ``(O,)``.
    static : (scale, zero_point) or None
        The calibrated activation quantization, or ``None`` for per-column min/max.
    conv : tuple or None
        ``(kernel_size, stride, padding, dilation)`` of a Conv2d, ``None`` for Linear.
    relu : bool
        Apply the fused ReLU.
    """

    consumes_act_quant = True  # replaces the variant's input fake-quant hook, as the kernel does

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, static, conv, relu: bool):
        super().__init__()
        self.weight = weight.reshape(len(weight), -1).double()
        self.bias = bias.double()
        self.static, self.conv, self.relu = static, conv, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_features = len(self.weight)
        if self.conv is None:
            lead = x.shape[:-1]
            y = fake_quant_columns(x.reshape(-1, x.shape[-1]), self.static) @ self.weight.T
            y = (y + self.bias).reshape(*lead, out_features)
        else:
            (kh, kw), stride, padding, dilation = self.conv
            b, _, h, w = x.shape
            cols = nn.functional.unfold(x.float(), (kh, kw), dilation, padding, stride)
            ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B·L, K) patches
            y = fake_quant_columns(rows, self.static) @ self.weight.T + self.bias
            y = y.reshape(b, ho * wo, out_features).transpose(1, 2).reshape(b, -1, ho, wo)
        if self.relu:
            y = y.clamp(min=0)
        return y.float()

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


def ideal_int8(model: nn.Module, calibration: torch.Tensor):
    """The textbook int8 version of ``model``, in float64: per-output-channel symmetric int8
    weights (``scale = max|w| / 127``, round to nearest) and, at the input of every Conv/Linear
    layer, per-tensor uint8 activations with the min/max range seen on ``calibration``
    (widened to include 0). Nothing else is rounded, so this is the error int8 inference
    cannot avoid; an engine's error is stated as a multiple of it.

    Returns a function ``x -> logits`` (float32). ``model`` is not modified.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(16, 4)
    >>> x = torch.randn(64, 16)
    >>> sim = ideal_int8(lin, x)
    >>> ref = lin(x).detach()
    >>> err = float((sim(x) - ref).abs().max())
    >>> 0 < err < 0.05 * float(ref.abs().max())
    True
    """
    import copy

    sim = copy.deepcopy(model).eval().double()
    layers = [m for m in sim.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    ranges: dict[int, list[float]] = {}

    def observe(module, args):
        x = args[0]
        lo, hi = ranges.setdefault(id(module), [0.0, 0.0])
        ranges[id(module)] = [min(lo, float(x.min())), max(hi, float(x.max()))]

    handles = [m.register_forward_pre_hook(observe) for m in layers]
    with torch.no_grad():
        sim(calibration.double())
    for h in handles:
        h.remove()

    def quantize_input(module, args):
        lo, hi = ranges[id(module)]
        scale = (hi - lo) / 255.0 or 1.0
        zero = round(-lo / scale)
        q = torch.clamp(torch.round(args[0] / scale) + zero, 0, 255)
        return ((q - zero) * scale,) + tuple(args[1:])

    with torch.no_grad():
        for m in layers:
            w = m.weight
            scale = w.reshape(len(w), -1).abs().amax(1).clamp(min=1e-12) / 127.0
            scale = scale.reshape((-1,) + (1,) * (w.dim() - 1))
            w.copy_(torch.clamp(torch.round(w / scale), -127, 127) * scale)
            m.register_forward_pre_hook(quantize_input)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sim(x.double()).float()

    return run

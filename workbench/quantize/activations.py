"""Int8 activation quantization: calibrate each layer's input range, then fake-quantize it.

Every quantization method offers ``activations=True``: after the weights are quantized, a few
training batches run through the (weight-quantized) copy, each quantized layer's input min/max
is recorded, and an :class:`ActivationFakeQuant` forward pre-hook is installed on that layer of
the copy. The hooks are part of the returned model (they are what makes it an int8-activation
model); the input model never sees a hook.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from workbench.errors import DataError, ParameterError

CALIBRATION_BATCH_SIZE = 64


class ActivationFakeQuant:
    """Forward pre-hook that rounds a layer's input to ``bits``-bit affine codes and back.

    ``x -> (clamp(round(x / scale) + zero_point, 0, 2**bits - 1) - zero_point) * scale``.
    A plain object (no closures), so models carrying it deep-copy and pickle.

    Examples
    --------
    >>> import torch
    >>> hook = ActivationFakeQuant.from_range(0.0, 2.55)
    >>> hook.zero_point, round(hook.scale, 4)
    (0, 0.01)
    >>> lin = torch.nn.Linear(2, 1)
    >>> _ = lin.register_forward_pre_hook(hook)
    >>> hook(lin, (torch.tensor([0.004, 9.0]),))[0].tolist()
    [0.0, 2.549999952316284]
    """

    def __init__(self, scale: float, zero_point: int, bits: int = 8):
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.bits = int(bits)

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int = 8) -> "ActivationFakeQuant":
        """The hook covering ``[lo, hi]`` widened to include 0, so 0 (ReLU, padding) is exact."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        qmax = 2 ** bits - 1
        scale = (hi - lo) / qmax
        if not scale > 0:  # an all-zero input: any scale represents it exactly
            scale = 1.0
        zero_point = min(max(round(-lo / scale), 0), qmax)
        return cls(scale, zero_point, bits)

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, 2 ** self.bits - 1)
        return ((q - self.zero_point) * self.scale,) + tuple(args[1:])

    def __repr__(self) -> str:
        return (f"ActivationFakeQuant(scale={self.scale:.6g}, zero_point={self.zero_point}, "
                f"bits={self.bits})")


@contextmanager
def _recording(modules: dict[str, nn.Module], ranges: dict):
    """Record the running min/max of each module's first input while the block runs."""

    def make(name):
        def record(module, args):
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

        return record

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield ranges
    finally:
        for h in handles:
            h.remove()


def input_ranges(model: nn.Module, names, x: torch.Tensor, batches: int,
                 batch_size: int = CALIBRATION_BATCH_SIZE) -> dict[str, tuple[float, float]]:
    """Min and max of the input of each named layer over the first ``batches`` batches of ``x``.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    >>> r = input_ranges(m, ["0"], torch.tensor([[1.0, -2.0], [3.0, 0.5]]), batches=1)
    >>> r["0"]
    (-2.0, 3.0)
    """
    modules = dict(model.named_modules())
    x = x[: batches * batch_size]
    was_training = model.training
    model.eval()
    try:
        with _recording({n: modules[n] for n in names}, {}) as ranges, torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])
    except RuntimeError as err:
        raise DataError(f"calibration data shaped {tuple(x.shape[1:])} does not fit the model: "
                        f"{str(err).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return ranges


def check_calibration(data, batches) -> None:
    """Refuse ``activations=True`` without data or with a bad ``calibration_batches``."""
    if data is None:
        raise ParameterError("activations=True needs data to calibrate the activation ranges; "
                             "pass data=... (a Session does this for you)")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ParameterError(f"calibration_batches must be a positive integer, got {batches!r}")


def install_activation_quant_(model: nn.Module, names, data, batches: int = 8,
                              bits: int = 8) -> dict:
    """Calibrate and install an :class:`ActivationFakeQuant` on each named layer of ``model``.

    Modifies ``model`` in place (callers pass their own copy): hooks of an earlier calibration
    are replaced. Returns, per layer, the calibrated ``min``/``max`` and the hook's
    ``scale``/``zero_point``/``bits``.
    """
    check_calibration(data, batches)
    names = list(names)
    modules = dict(model.named_modules())
    for name in names:  # recalibrating a copy of an activation-quantized model replaces its hooks
        hooks = modules[name]._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(h, ActivationFakeQuant)]:
            del hooks[key]
    ranges = input_ranges(model, names, data.x_train, batches)
    info = {}
    for name in names:
        lo, hi = ranges[name]
        hook = ActivationFakeQuant.from_range(lo, hi, bits)
        modules[name].register_forward_pre_hook(hook)
        info[name] = {"min": lo, "max": hi, "scale": hook.scale, "zero_point": hook.zero_point,
                      "bits": bits}
    return info


def activation_quantizers(model: nn.Module) -> dict[str, ActivationFakeQuant]:
    """The :class:`ActivationFakeQuant` hooks installed on ``model``, by layer name."""
    return {name: hook for name, m in model.named_modules()
            for hook in m._forward_pre_hooks.values() if isinstance(hook, ActivationFakeQuant)}

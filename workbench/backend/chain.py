"""Run a compiled model that is a plain chain of native Linear layers without torch modules.

At batch 1 a 1024-wide sparse layer takes tens of microseconds, and going through
``nn.Module.__call__``, reshapes, an output allocation and the work-buffer query costs ~10 µs
per layer on top (measured on the 784-1024-1024-10 MLP; at batch 64 on int8 kernels the module
calls are still ~4 % of the time). :func:`chain_runner` turns a compiled
model whose leaves are ``Flatten`` / ``Identity`` / ``Dropout`` and native Linear layers, run
in order, into one Python loop of kernel calls; intermediate activations live in buffers reused
per batch size (per thread), only the returned logits are freshly allocated. Linear layers an
engine left on torch (too small to pay off) join the loop as ``addmm`` steps, a ReLU right after
them fused.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from workbench.backend.graph import NativeLayer
from workbench.errors import ParameterError

PASS_THROUGH = (nn.Identity, nn.Dropout)


class TorchLinearStep:
    """A torch ``nn.Linear`` (and a ReLU right after it) as a chain step."""

    def __init__(self, layer: nn.Linear):
        self.layer, self.relu = layer, False
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def run_linear(self, x: torch.Tensor, y: torch.Tensor) -> None:
        w, b = self.layer.weight, self.layer.bias
        if b is None:
            torch.mm(x, w.t(), out=y)
        else:
            torch.addmm(b, x, w.t(), out=y)
        if self.relu:
            torch.relu_(y)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_pre_hooks or m._forward_hooks)


def _steps(model: nn.Module):
    """The leaves of ``model`` in order as chain steps, or None if one is not chainable or
    none is a native layer."""
    steps = []
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, PASS_THROUGH):
            continue
        if isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                return None
            continue
        if type(m) is nn.ReLU and steps and isinstance(steps[-1], TorchLinearStep) \
                and not steps[-1].relu and not _hooked(m):
            steps[-1].relu = True
            continue
        if type(m) is nn.Linear and not _hooked(m):
            steps.append(TorchLinearStep(m))
            continue
        if not isinstance(m, NativeLayer) or not m.chainable or _hooked(m):
            return None
        steps.append(m)
    if not any(isinstance(s, NativeLayer) for s in steps):
        return None
    return steps


def chain_runner(model: nn.Module):
    """A faster ``run(x)`` equivalent to ``model(x)`` if ``model`` is a chain of native
    Linear layers (checked on a random batch, bit for bit), else ``None``."""
    steps = _steps(model)
    if steps is None or any(a.out_features != b.in_features for a, b in zip(steps, steps[1:])):
        return None
    local = threading.local()
    last = len(steps) - 1

    def run(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = x.reshape(b, -1)
        if h.shape[1] != steps[0].in_features:
            raise ParameterError(f"this model takes {steps[0].in_features} input features per "
                                 f"sample, got a batch of shape {tuple(x.shape)}")
        h = h.contiguous()
        buffers = getattr(local, "buffers", None)
        if buffers is None or buffers[0] != b:
            buffers = local.buffers = (b, [torch.empty(b, s.out_features) for s in steps[:-1]])
        for i, s in enumerate(steps):
            y = torch.empty(b, s.out_features) if i == last else buffers[1][i]
            s.run_linear(h, y)
            h = y
        return h

    probe = torch.randn(3, steps[0].in_features)
    with torch.inference_mode():
        if not torch.equal(run(probe), model(probe)):
            return None
    run.module = model  # the same kernels as modules, for per-layer timing hooks
    return run

"""Per-layer time of a compiled model, measured with forward hooks on its torch module.

The ``torch``, ``sparse`` and ``lowbit`` engines return a rewritten ``nn.Module`` (our kernels
are modules in it), so each layer of the report can be timed with a pre/post forward hook pair;
what the hooks do not cover (activations, pooling, reshapes, the hooks themselves) is reported
as one ``(rest)`` entry, so the parts add up to the measured whole call. Engines that run the
whole graph elsewhere (ONNX Runtime, Inductor) have no per-layer timing: :func:`layer_times`
returns ``None`` for them rather than guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workbench.backend.base import CompiledModel
from workbench.errors import ParameterError

REST = "(rest)"


@dataclass(frozen=True)
class LayerTime:
    """Median time of one layer (milliseconds) and the kernel it ran on."""

    name: str
    layer: str
    kernel: str
    ms: float


def layer_times(compiled: CompiledModel, x: torch.Tensor, repeats: int = 5,
                warmup: int = 1) -> list[LayerTime] | None:
    """Median per-layer time of ``compiled`` on batch ``x``, plus a ``(rest)`` entry.

    Parameters
    ----------
    compiled : CompiledModel
    x : torch.Tensor
        The input batch.
    repeats, warmup : int
        Timed and untimed calls.

    Returns
    -------
    list of LayerTime or None
        One entry per layer of ``compiled.report`` (in report order) and a last ``(rest)``
        entry (whole call minus the layers, at least 0); ``None`` if the engine does not run
        a torch module (no per-layer hooks possible).

    Examples
    --------
    >>> import torch
    >>> from workbench.backend import compile_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> times = layer_times(compile_model(net, "torch"), torch.randn(4, 8), repeats=3)
    >>> [t.name for t in times], all(t.ms >= 0 for t in times)
    (['0', '2', '(rest)'], True)
    """
    if repeats < 1 or warmup < 0:
        raise ParameterError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    root, call = compiled._run, compiled
    if not isinstance(root, nn.Module):
        # A chain of native layers runs as one loop (workbench.backend.chain); its modules run
        # the same kernels and take the hooks (their ~10 µs of module overhead lands in (rest)).
        root = getattr(root, "module", None)
        if not isinstance(root, nn.Module):
            return None

        def call(batch):
            with torch.inference_mode():
                return root(batch)
    modules = dict(root.named_modules())
    layers = [r for r in compiled.report.layers if r.name in modules]
    spans: dict[str, list[float]] = {r.name: [] for r in layers}
    starts: dict[str, float] = {}
    handles = []

    def pre(name):
        def hook(module, args):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, output):
            spans[name].append(time.perf_counter() - starts.pop(name))
        return hook

    try:
        for r in layers:
            m = modules[r.name]
            handles.append(m.register_forward_pre_hook(pre(r.name), prepend=True))
            handles.append(m.register_forward_hook(post(r.name)))
        for _ in range(warmup):
            call(x)
        for s in spans.values():
            s.clear()
        totals = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call(x)
            totals.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
    out = []
    for r in layers:
        t = np.asarray(spans[r.name]).reshape(repeats, -1).sum(1)  # a layer may run twice a call
        out.append(LayerTime(r.name, r.layer, r.kernel, float(np.median(t)) * 1e3))
    rest = float(np.median(totals)) * 1e3 - sum(t.ms for t in out)
    out.append(LayerTime(REST, "activations, pooling, glue", "torch", max(0.0, rest)))
    return out


__all__ = ["LayerTime", "layer_times", "REST"]

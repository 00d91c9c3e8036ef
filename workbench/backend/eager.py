"""The ``torch`` (eager reference) and ``torch-compile`` (Inductor) engines."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from workbench.backend.base import CompiledModel, LayerReport, Report, Tolerance, register_engine
from workbench.backend.graph import find_sites


def _all_torch(model: nn.Module, kernel: str, reason: str = "") -> list[LayerReport]:
    return [LayerReport(s.name, s.kind, kernel, reason) for s in find_sites(model)]


def _dense_bytes(model: nn.Module) -> int:
    return sum(4 * s.layer.weight.numel() for s in find_sites(model))


@register_engine("torch", description="PyTorch eager, fp32 (the reference)",
                 tolerance=Tolerance(atol=0.0, rtol=1e-6))  # batch size changes the GEMM path
def compile_torch(model: nn.Module, *, masks=None, quant=None, example=None,
                  threads=None) -> CompiledModel:
    """The model itself (an independent copy), run eagerly: the reference of every engine.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> compile_torch(lin).report.kernels()
    {'': 'torch'}
    """
    m = copy.deepcopy(model).eval()
    report = Report("torch", _all_torch(m, "torch", "eager reference"))
    return CompiledModel(m, report, threads, _dense_bytes(m))


class _Compiled:
    """Run the Inductor-compiled module; on a compile failure fall back to eager (once noted)."""

    def __init__(self, eager: nn.Module, compiled, report: Report):
        self.eager, self.compiled, self.report = eager, compiled, report
        self.failed = False

    def __call__(self, x):
        if not self.failed:
            try:
                return self.compiled(x)
            except Exception as err:  # noqa: BLE001  any Inductor/Dynamo failure
                self.failed = True
                self.report.notes.append("torch.compile failed, running eagerly: "
                                         f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
                for i, r in enumerate(self.report.layers):
                    self.report.layers[i] = LayerReport(r.name, r.layer, "torch",
                                                        "torch.compile failed")
        return self.eager(x)


@register_engine("torch-compile", description="torch.compile (Inductor, C++ codegen), fp32",
                 tolerance=Tolerance(atol=1e-5, rtol=1e-4))
def compile_inductor(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                     freezing: bool = False, mode: str | None = None) -> CompiledModel:
    """``torch.compile(model)`` with the Inductor backend; failures fall back to eager.

    ``freezing=True`` constant-folds the weights and lets Inductor prepack them for oneDNN
    (the strongest dense torch option on CPU). Each new batch size compiles once (static
    shapes); with ``example`` the first compilation happens here instead of on the first call.
    """
    eager = copy.deepcopy(model).eval()
    for p in eager.parameters():
        p.requires_grad_(False)
    report = Report("torch-compile", _all_torch(eager, "inductor"))
    try:
        import torch._inductor.config as inductor_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opts = {"freezing": True} if freezing else None
            compiled = torch.compile(eager, backend="inductor", dynamic=False, mode=mode,
                                     options=opts)
        del inductor_config
    except Exception as err:  # noqa: BLE001
        report.notes.append(f"torch.compile unavailable, running eagerly: {err}")
        report.layers = _all_torch(eager, "torch", "torch.compile unavailable")
        return CompiledModel(eager, report, threads, _dense_bytes(eager))
    run = _Compiled(eager, compiled, report)
    if freezing:
        report.notes.append("freezing=True: weights constant-folded and prepacked")
    if example is not None:
        from workbench.backend.base import torch_threads

        with torch.inference_mode(), torch_threads(threads):
            run(torch.as_tensor(example).float().contiguous())
    return CompiledModel(run, report, threads, _dense_bytes(eager))

"""The shared contract of every inference engine, and the compiled model they return.

An engine is a function registered with :func:`register_engine`::

    fn(model, *, masks=None, quant=None, example=None, threads=None, **options) -> CompiledModel

It must not modify ``model``. ``masks`` (layer name → bool keep-mask) and ``quant`` (layer name →
:class:`~workbench.quantize.QuantizedTensor`) describe the compression a variant applied;
``example`` is a batch of real inputs (calibration data and a shape to trace with); ``threads`` is
the number of CPU threads the compiled model may use (default: torch's current setting). The
returned :class:`CompiledModel` is called on a float batch and returns the same logits as the
model, within the engine's documented :class:`Tolerance`, and its ``report`` says which layers ran
on which kernel or fell back to torch, and why. Engines that quantize activations set
``compiled.reference`` to a callable simulating their rounding on the variant (with the scales
they calibrated); their tolerance holds against that reference instead of the plain model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from workbench.errors import ParameterError
from workbench.registry import Registry


@dataclass(frozen=True)
class Tolerance:
    """How close an engine's logits are to the reference model's.

    ``max|Δlogit| <= atol + rtol * max|reference logit|`` over a batch, and the argmax agrees on
    at least ``agreement`` of the samples. ``exact_argmax=False`` marks engines that quantize
    activations, whose argmax may flip on near-ties of an untrained model.
    """

    atol: float = 1e-5
    rtol: float = 1e-4
    agreement: float = 0.999
    exact_argmax: bool = True

    def bound(self, reference: torch.Tensor) -> float:
        return self.atol + self.rtol * float(reference.abs().max())


@dataclass(frozen=True)
class LayerReport:
    """Where one layer runs: ``kernel`` is e.g. ``"csr"``, ``"int8-int8"`` or ``"torch"``;
    ``isa`` is the instruction set of the compiled kernel that runs it (``"avx2"``, ``"neon"``,
    ...; empty for torch and ONNX Runtime)."""

    name: str
    layer: str
    kernel: str
    reason: str = ""
    isa: str = ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        isa = f" [{self.isa}]" if self.isa else ""
        return f"{self.name:<24} {self.layer:<28} {self.kernel}{isa}{why}"


@dataclass
class Report:
    """The per-layer placement of a compiled model plus engine-wide notes."""

    engine: str
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def kernels(self) -> dict[str, str]:
        """Layer name → kernel."""
        return {r.name: r.kernel for r in self.layers}

    def isas(self) -> dict[str, str]:
        """Layer name → instruction set, for the layers on our compiled kernels."""
        return {r.name: r.isa for r in self.layers if r.isa}

    def fallbacks(self) -> dict[str, str]:
        """Layer name → reason, for the layers that run on plain torch."""
        return {r.name: r.reason for r in self.layers if r.kernel == "torch"}

    def as_dict(self) -> dict:
        return {"engine": self.engine, "notes": list(self.notes),
                "layers": [r.__dict__.copy() for r in self.layers]}

    def __str__(self) -> str:
        lines = [f"engine {self.engine!r}"] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines + ["  " + str(r) for r in self.layers])


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``torch.set_num_threads(threads)`` (restored afterwards)."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class CompiledModel:
    """A model compiled by an engine: call it on a float batch to get logits.

    Parameters
    ----------
    run : callable
        ``run(x) -> logits`` for a contiguous float32 batch.
    report : Report
        Which layers run where.
    threads : int or None
        Threads torch may use while ``run`` executes (engines with their own pools ignore it).
    weight_bytes : int or None
        Bytes of the weights in the compiled form (``None`` if the engine does not know).
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], report: Report,
                 threads: int | None = None, weight_bytes: int | None = None):
        self._run = run
        self.report = report
        self.threads = threads
        self.weight_bytes = weight_bytes
        self.reference: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def engine(self) -> str:
        return self.report.engine

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = type(x).__name__ + (f" {x.dtype}" if isinstance(x, torch.Tensor) else "")
            raise ParameterError(f"a compiled model takes a float tensor batch, got {got}")
        if x.dtype != torch.float32 or x.requires_grad or not x.is_contiguous():
            x = x.detach().to(torch.float32).contiguous()
        with torch.inference_mode():
            if self.threads is None or self.threads == torch.get_num_threads():
                return self._run(x)
            with torch_threads(self.threads):
                return self._run(x)

    def __repr__(self) -> str:
        used = sorted({r.kernel for r in self.report.layers})
        return f"CompiledModel(engine={self.engine!r}, kernels={used})"


@dataclass(frozen=True)
class EngineInfo:
    """Registry entry: the compile function, its fixed options and its tolerance."""

    name: str
    fn: Callable[..., CompiledModel]
    description: str
    tolerance: Tolerance
    options: dict = field(default_factory=dict)

    def __call__(self, model: nn.Module, *, masks=None, quant=None, example=None,
                 threads=None, **options) -> CompiledModel:
        if not isinstance(model, nn.Module):
            raise ParameterError(f"engines compile a torch.nn.Module, got {type(model).__name__}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ParameterError(f"threads must be a positive integer or None, got {threads!r}")
        compiled = self.fn(model, masks=dict(masks or {}), quant=dict(quant or {}),
                           example=example, threads=threads, **{**self.options, **options})
        compiled.report.engine = self.name
        return compiled


ENGINES: Registry[EngineInfo] = Registry("inference engine")


def register_engine(name: str, *, description: str, tolerance: Tolerance = Tolerance(),
                    **options):
    """Register a compile function under ``name``; ``options`` are fixed keyword arguments
    (so one function can back several presets, e.g. ``onnxruntime`` and ``onnxruntime-int8``)."""

    def add(fn):
        ENGINES.register(name)(EngineInfo(name, fn, description, tolerance, dict(options)))
        return fn

    return add


def compile_model(model: nn.Module, engine: str = "torch", *, masks=None, quant=None,
                  example=None, threads=None, **options) -> CompiledModel:
    """Compile ``model`` with the named engine (see :data:`ENGINES`)."""
    return ENGINES[engine](model, masks=masks, quant=quant, example=example, threads=threads,
                           **options)


def compile_variant(variant, engine: str = "torch", *, threads=None, example_size: int = 256,
                    **options) -> CompiledModel:
    """Compile a session :class:`~workbench.session.Variant` (its masks, codes and data).

    The example batch (calibration data for static int8 engines) is the first
    ``example_size`` training inputs of the variant's data.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> cm = compile_variant(s.base, "torch")
    >>> x = s.data.x_test[:4]
    >>> bool((cm(x) - s.base.model(x)).abs().max() < 1e-5)
    True
    """
    example = variant.data.x_train[:example_size]
    return compile_model(variant.model, engine, masks=variant.masks, quant=variant.quant,
                         example=example, threads=threads, **options)


def example_input(model: nn.Module, example) -> torch.Tensor:
    """A float32 example batch, or a clear error if the engine needs one and got none."""
    if example is None:
        raise ParameterError("this engine needs example inputs (example=<a batch of inputs>) "
                             "to trace/calibrate the model; compile_variant passes training data")
    return torch.as_tensor(example).detach().to(torch.float32).contiguous()


__all__ = ["ENGINES", "CompiledModel", "EngineInfo", "LayerReport", "Report", "Tolerance",
           "compile_model", "compile_variant", "register_engine"]

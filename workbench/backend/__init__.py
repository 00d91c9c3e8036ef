"""Compiled inference: run a variant on torch, Inductor, ONNX Runtime or our sparse / low-bit
kernels, side by side (a registry of engines, see :data:`ENGINES`)."""

from workbench.backend.base import (ENGINES, CompiledModel, EngineInfo, LayerReport, Report,
                                    Tolerance, compile_model, compile_variant, register_engine)
from workbench.backend import eager as _eager  # noqa: F401  (registers engines)
from workbench.backend import onnx as _onnx  # noqa: F401
from workbench.backend import sparse as _sparse  # noqa: F401
from workbench.backend import lowbit as _lowbit  # noqa: F401
from workbench.backend.benchmark import BenchmarkResult, benchmark

__all__ = ["ENGINES", "BenchmarkResult", "benchmark", "CompiledModel", "EngineInfo", "LayerReport", "Report", "Tolerance",
           "compile_model", "compile_variant", "register_engine"]

"""The ONNX Runtime engines: fp32, static int8 (QDQ, calibrated) and dynamic int8.

The model is exported with ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``;
the dynamo exporter is the fallback) with a dynamic batch axis, then run by an
``onnxruntime.InferenceSession`` on the CPU execution provider. Static int8 calibrates the
activation ranges on ``example`` (a variant's training inputs) with MinMax calibration and
per-channel int8 weights; dynamic int8 quantizes weights ahead and activations per call.
Masks and codes are not used: ONNX Runtime runs the (de-quantized) weights densely.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.backend.base import (CompiledModel, LayerReport, Report, Tolerance, example_input,
                                    register_engine)
from workbench.backend.graph import find_sites
from workbench.errors import ParameterError, WorkbenchError

INT8_TOLERANCE = Tolerance(atol=1e-3, rtol=0.1, agreement=0.98, exact_argmax=False)


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` as ONNX bytes (opset 17, dynamic batch axis)."""
    m = copy.deepcopy(model).eval()
    x = example[:2].contiguous()
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=17,
                              dynamo=dynamo)
                if dynamo:
                    kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
                    prog = torch.onnx.export(m, (x,), **kwargs)
                    return prog.model_proto.SerializeToString()
                torch.onnx.export(m, (x,), buf, dynamic_axes={"x": {0: "batch"},
                                                              "logits": {0: "batch"}}, **kwargs)
                return buf.getvalue()
        except Exception as err:  # noqa: BLE001  try the other exporter
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {str(err).splitlines()[0]}")
    raise WorkbenchError("torch.onnx.export failed: " + "; ".join(errors))


class _Calibration:
    """An onnxruntime CalibrationDataReader over batches of ``x``."""

    def __init__(self, x: np.ndarray, batch: int = 32):
        self.batches = iter([{"x": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(blob: bytes, mode: str, calibration: np.ndarray) -> bytes:
    """An ONNX model quantized to int8 by ``onnxruntime.quantization``: ``mode="static"``
    (QDQ, per-channel int8 weights, uint8 activations calibrated with MinMax on
    ``calibration``) or ``"dynamic"`` (activation ranges computed per call)."""
    from onnxruntime.quantization import (QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(blob)
            if mode == "static":
                quantize_static(str(src), str(dst), _Calibration(calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                                 per_channel=True)
            return dst.read_bytes()
    finally:
        root.setLevel(level)


def _session(blob: bytes, threads: int | None, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


@register_engine("onnxruntime", description="ONNX Runtime CPU, fp32")
def compile_onnxruntime(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                        int8: str | None = None, spinning: bool = True,
                        calibration_size: int = 256) -> CompiledModel:
    """Export to ONNX and run with ONNX Runtime; ``int8`` is ``None``, ``"static"`` (QDQ,
    calibrated on ``example``) or ``"dynamic"``.

    ``spinning=False`` stops ORT's threads from busy-waiting between calls (fairer when other
    work shares the cores; slightly slower at batch 1).
    """
    if int8 not in (None, "static", "dynamic"):
        raise ParameterError(f"int8 must be None, 'static' or 'dynamic', got {int8!r}")
    x = example_input(model, example)
    blob = export_onnx(model, x)
    kernel = "ort-fp32"
    if int8 is not None:
        blob = quantize_onnx(blob, int8, x[:calibration_size].numpy())
        kernel = f"ort-int8-{int8}"
    sess = _session(blob, threads, spinning)

    def run(xb: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"x": xb.numpy()})[0])

    name = "onnxruntime" + ("" if int8 is None else f"-int8{'' if int8 == 'static' else '-dynamic'}")
    layers = [LayerReport(s.name, s.kind, kernel, "whole graph in ONNX Runtime")
              for s in find_sites(model)]
    report = Report(name, layers, [f"ONNX model {len(blob)} bytes"])
    wbytes = sum(s.layer.weight.numel() * (1 if int8 else 4) for s in find_sites(model))
    compiled = CompiledModel(run, report, threads, wbytes)
    compiled.session = sess
    return compiled


register_engine("onnxruntime-int8", description="ONNX Runtime CPU, static int8 QDQ (calibrated)",
                tolerance=INT8_TOLERANCE, int8="static")(compile_onnxruntime)
register_engine("onnxruntime-int8-dynamic", description="ONNX Runtime CPU, dynamic int8",
                tolerance=INT8_TOLERANCE, int8="dynamic")(compile_onnxruntime)

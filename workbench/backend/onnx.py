"""The ONNX Runtime engines: fp32, static int8 (QDQ, calibrated) and dynamic int8.

The model is exported with ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``;
the dynamo exporter is the fallback) with a dynamic batch axis, then run by an
``onnxruntime.InferenceSession`` on the CPU execution provider. Static int8 calibrates the
activation ranges on ``example`` (a variant's training inputs; MinMax or Percentile
calibration) with per-channel int8 weights; dynamic int8 quantizes weights ahead and activations
per call. Masks and codes are not used: ONNX Runtime runs the (de-quantized) weights densely.

The int8 engines quantize activations, so their reference is not the fp32 variant: the compiled
model's ``reference`` runs the *same* quantized ONNX graph with graph optimizations disabled,
i.e. every QuantizeLinear / DequantizeLinear node with the calibrated scales and zero points
executes as written and the Conv / Gemm between them in fp32 (static); for dynamic int8 the
reference is the dynamic graph unfused (DynamicQuantizeLinear + MatMulInteger/ConvInteger run as
separate nodes). The optimized session fuses these into integer kernels (QLinearConv,
requantization in int32/fp32), which is the only difference the contract tests allow.
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

# Against ``compiled.reference`` (the quantized graph run unfused), not the fp32 variant.
INT8_TOLERANCE = Tolerance(atol=1e-3, rtol=0.05, agreement=0.999, exact_argmax=False)


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` as ONNX bytes (opset 17, dynamic batch axis).

    The model is traced on 2 samples; each exporter's graph is then run on 3 and compared with
    the model, so a graph that baked the batch size in (``int(x.shape[0])``, a reshape to a
    traced size) is caught here and the other exporter is tried, instead of failing in
    ONNX Runtime at the first other batch size.
    """
    m = copy.deepcopy(model).eval()
    x = example[:2].contiguous()
    errors = []
    for dynamo in (False, True):
        name = "dynamo" if dynamo else "torchscript"
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=17,
                              dynamo=dynamo)
                if dynamo:
                    kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
                    blob = torch.onnx.export(m, (x,), **kwargs).model_proto.SerializeToString()
                else:
                    torch.onnx.export(m, (x,), buf, dynamic_axes={"x": {0: "batch"},
                                                                  "logits": {0: "batch"}},
                                      **kwargs)
                    blob = buf.getvalue()
        except Exception as err:  # noqa: BLE001  try the other exporter
            errors.append(f"{name}: {str(err).splitlines()[0]}")
            continue
        problem = _batch_problem(blob, m, example)
        if problem is None:
            return blob
        errors.append(f"{name}: {problem}")
    advice = ("; the model's forward seems to turn the batch size into a constant (such as "
              "int(x.shape[0]) or a reshape to a fixed size): write x.flatten(1) or "
              "x.reshape(x.shape[0], -1)") if any("3 samples" in e for e in errors) else ""
    raise WorkbenchError("torch.onnx.export failed: " + "; ".join(errors) + advice)


def _batch_problem(blob: bytes, model: nn.Module, example: torch.Tensor) -> str | None:
    """Why the exported graph does not reproduce ``model`` on 3 samples, or ``None``."""
    x = torch.cat([example] * 3)[:3].to(torch.float32).contiguous()
    try:
        out = _session(blob, 1, False, quiet=True).run(None, {"x": x.numpy()})[0]
    except Exception as err:  # noqa: BLE001  ORT's own error says which node
        return f"the graph fails on 3 samples (batch size baked in?): {str(err).splitlines()[0]}"
    with torch.no_grad():
        ref = model(x)
    if out.shape != tuple(ref.shape):
        return f"the graph returns {out.shape} on 3 samples, the model {tuple(ref.shape)}"
    diff = float(np.abs(out - ref.numpy()).max())
    if diff > 1e-3 * (1 + float(ref.abs().max())):
        return f"the graph differs from the model by {diff:.3g} on 3 samples"
    return None


class _Calibration:
    """An onnxruntime CalibrationDataReader over batches of ``x``."""

    def __init__(self, x: np.ndarray, batch: int = 32):
        self.batches = iter([{"x": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


CALIBRATIONS = ("minmax", "percentile")
# Their inputs are quantized, their outputs stay float: quantizing the logits clamps them to
# the calibrated range (a trained 784-1024-1024-10 MLP on MNIST: max |Δlogit| 5.5 % of the
# logit range, 45x an ideal int8 simulation; 0.12 %, = the ideal, without), and ONNX Runtime
# then fuses DequantizeLinear + Gemm into MatMulIntegerToFloat, measured as fast (0.089 vs
# 0.095 ms at batch 1, 0.297 vs 0.300 ms at batch 64).
UNQUANTIZED_OUTPUTS = ("Conv", "Gemm", "MatMul")


def saturates_u8s8() -> bool:
    """True on x86-64 CPUs without VNNI (AVX-512 VNNI or AVX-VNNI): there ONNX Runtime's u8s8
    kernels sum pairs of uint8 x int8 products into int16 (``vpmaddubsw``), which saturates
    for 8-bit weights (2 * 255 * 127 > 32767); 7-bit weights (``reduce_range``) cannot.
    Measured on a Zen 3: argmax agreement 0.9944 with the unfused graph, max |Δlogit| ~10 %
    of the logit range on a 784-1024-1024-10 MLP, ten times an ideal int8 simulation."""
    from workbench.backend import isa

    if isa.machine() != "x86_64":
        return False
    try:
        from workbench.backend.native import KernelUnavailable, cpu_features

        features = cpu_features()
    except KernelUnavailable:  # no compiler for the probe: ask the operating system
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
        return "avx512_vnni" not in text and "avx_vnni" not in text
    return not ({"avx512vnni", "avxvnni"} & features)


def quantize_onnx(blob: bytes, mode: str, calibration: np.ndarray,
                  method: str = "minmax", reduce_range: bool = False) -> bytes:
    """An ONNX model quantized to int8 by ``onnxruntime.quantization``: ``mode="static"``
    (QDQ, per-channel int8 weights, uint8 activations calibrated on ``calibration`` with
    ``method`` "minmax" or "percentile" (99.999th percentile of |x|) at the inputs of
    Conv/Gemm/MatMul, whose outputs stay float: :data:`UNQUANTIZED_OUTPUTS`) or ``"dynamic"``
    (activation ranges computed per call); ``reduce_range`` stores weights in 7 bits (see
    :func:`saturates_u8s8`)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(blob)
            if mode == "static":
                calibrate = (CalibrationMethod.Percentile if method == "percentile"
                             else CalibrationMethod.MinMax)
                quantize_static(str(src), str(dst), _Calibration(calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=calibrate, reduce_range=reduce_range,
                                extra_options={"OpTypesToExcludeOutputQuantization":
                                               list(UNQUANTIZED_OUTPUTS)})
            else:
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                                 per_channel=True, reduce_range=reduce_range)
            return dst.read_bytes()
    finally:
        root.setLevel(level)


def _session(blob: bytes, threads: int | None, spinning: bool, optimize: bool = True,
             quiet: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 4 if quiet else 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


@register_engine("onnxruntime", description="ONNX Runtime CPU, fp32")
def compile_onnxruntime(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                        int8: str | None = None, spinning: bool = True,
                        calibration_size: int = 256,
                        calibration: str = "minmax",
                        reduce_range: bool | None = None) -> CompiledModel:
    """Export to ONNX and run with ONNX Runtime; ``int8`` is ``None``, ``"static"`` (QDQ,
    calibrated on the first ``calibration_size`` inputs of ``example`` with ``calibration``
    "minmax" or "percentile") or ``"dynamic"``.

    ``reduce_range`` (int8 only) quantizes weights to 7 bits; default: on x86-64 CPUs without
    VNNI, whose ONNX Runtime kernels saturate with 8-bit weights (:func:`saturates_u8s8`).

    ``spinning=False`` stops ORT's threads from busy-waiting between calls (fairer when other
    work shares the cores; slightly slower at batch 1).
    """
    if int8 not in (None, "static", "dynamic"):
        raise ParameterError(f"int8 must be None, 'static' or 'dynamic', got {int8!r}")
    if calibration not in CALIBRATIONS:
        raise ParameterError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) \
            or calibration_size < 1:
        raise ParameterError(f"calibration_size must be a positive integer, got "
                             f"{calibration_size!r}")
    x = example_input(model, example)
    blob = export_onnx(model, x)
    kernel = "ort-fp32"
    if reduce_range is None:
        reduce_range = int8 is not None and saturates_u8s8()
    if int8 is not None:
        blob = quantize_onnx(blob, int8, x[:calibration_size].numpy(), calibration,
                             bool(reduce_range))
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
    if int8 is not None:
        plain = _session(blob, threads, spinning, optimize=False)

        def reference(xb: torch.Tensor) -> torch.Tensor:
            xb = xb.detach().to(torch.float32).contiguous()
            return torch.from_numpy(plain.run(None, {"x": xb.numpy()})[0])

        compiled.reference = reference
        report.notes.append(f"int8 {int8}" + (f", {calibration} calibration on "
                                               f"{min(len(x), calibration_size)} inputs"
                                               if int8 == "static" else "")
                            + (", 7-bit weights (reduce_range: without VNNI ONNX Runtime's "
                               "u8s8 kernels saturate 8-bit ones)" if reduce_range else "")
                            + "; reference: the same quantized graph run unfused "
                            "(compiled.reference)")
    return compiled


register_engine("onnxruntime-int8", description="ONNX Runtime CPU, static int8 QDQ (calibrated)",
                tolerance=INT8_TOLERANCE, int8="static")(compile_onnxruntime)
register_engine("onnxruntime-int8-dynamic", description="ONNX Runtime CPU, dynamic int8",
                tolerance=INT8_TOLERANCE, int8="dynamic")(compile_onnxruntime)

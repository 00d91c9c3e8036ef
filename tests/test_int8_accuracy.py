"""The int8 engines against the float model, not only against their own rounding: on every zoo
model (trained briefly: the MLP and LeNet-5 on the MNIST test split's 7k/2k parts, the larger
VGG and ResNet, slow to train on 28×28 images, on digits), ONNX Runtime's static int8 and our
int8-activation kernels agree with the float reference on ≥ 99.5 % of the test split's
argmaxes, and their max |Δlogit| stays within ``MULTIPLE`` times that of an ideal int8 simulation of the same model
(:func:`workbench.backend.simulate.ideal_int8`: per-channel int8 weights, per-tensor calibrated
uint8 activations at each layer input, nothing else rounded).

Where the ideal int8 itself flips more argmaxes than 0.5 % (measured on MNIST: resnet_small,
99.25 %; lenet5 on digits, 99.44 %: 2 of 360 near-ties), the engine is held to the ideal's
agreement instead: no int8 engine with per-tensor calibrated activations can do better.

Why ``MULTIPLE = 3``: an engine rounds at least where the simulation does; ONNX Runtime's QDQ
graph also rounds the inputs of the adds and pools between layers, at most one rounding of the
same size per layer more, so its error stays within about twice the ideal one. Quantized
logits (clamped to the calibrated range) gave 45x on a trained MLP, and 8-bit weights on CPUs
whose ONNX Runtime kernels saturate 16-bit sums (x86-64 without VNNI) about 10x: both fail.
"""

from __future__ import annotations

import pytest
import torch

from workbench.backend import compile_model
from workbench.backend.simulate import ideal_int8
from workbench.models.default import trained_model
from workbench.quantize import QUANTIZERS

MODELS = ["mlp", "lenet5", "vgg_small", "resnet_small"]
ON_MNIST = ("mlp", "lenet5")  # 2,001 test images: one flip is 0.05 % (on digits' 360: 0.28 %)
MULTIPLE = 3.0
AGREEMENT = 0.995


@pytest.fixture(scope="module")
def trained(digits, mnist_dir):
    """Model name -> (trained model, its data)."""
    from workbench.data import load_dataset

    mnist = load_dataset("mnist", root=mnist_dir)
    out = {}
    for name in MODELS:
        data = mnist if name in ON_MNIST else digits
        out[name] = trained_model(name, data, epochs=2 if name in ON_MNIST else 3,
                                  progress=False), data
    return out


def _check(name, out, ref, ideal):
    span = float(ref.max() - ref.min())
    err, best = (float((o - ref).abs().max()) / span for o in (out, ideal))
    agreement, floor = (float((o.argmax(1) == ref.argmax(1)).float().mean()) for o in (out, ideal))
    assert agreement >= min(AGREEMENT, floor), \
        f"{name}: argmax agreement {agreement:.4f} (ideal int8: {floor:.4f})"
    assert err <= MULTIPLE * best, (f"{name}: max |Δlogit| {err:.4f} of the logit range, "
                                    f"{err / best:.1f}x the ideal int8's {best:.4f}")


@pytest.mark.parametrize("model_name", MODELS)
def test_onnxruntime_int8_is_as_accurate_as_ideal_int8(model_name, trained):
    model, data = trained[model_name]
    calibration, x = data.x_train[:256], data.x_test
    cm = compile_model(model, "onnxruntime-int8", example=calibration, threads=1)
    with torch.no_grad():
        ref = model(x)
    _check(model_name, cm(x), ref, ideal_int8(model, calibration)(x))


@pytest.mark.parametrize("model_name", MODELS)
def test_our_int8_kernels_are_as_accurate_as_ideal_int8(model_name, trained):
    """On an 8-bit variant (int8 weights), our kernels quantize activations per column: the
    float reference is the variant itself."""
    model, data = trained[model_name]
    q = QUANTIZERS["uniform"](model, 8)
    calibration, x = data.x_train[:256], data.x_test
    cm = compile_model(q.model, "lowbit-int8", quant=q.layers, threads=1)
    assert all(k in ("int8-int8", "torch") for k in cm.report.kernels().values())
    assert "int8-int8" in cm.report.kernels().values()
    with torch.no_grad():
        ref = q.model(x)
    _check(model_name, cm(x), ref, ideal_int8(q.model, calibration)(x))

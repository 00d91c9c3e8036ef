"""Row-major 8-bit codes for layers with few outputs (``csrc/rows.c``): the weight-only and the
int8-activation kernels against their references, Linear and Conv2d, 1 and 2 threads, and the
stored size of the default CNN against the information-theoretic bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench
from workbench.backend import compile_model
from workbench.backend.weightonly import rows_pay
from workbench.quantize import QUANTIZERS
from workbench.storage import information_bound_bits

# every test runs on each instruction set the CPU runs (scalar, avx2, avx512 / neon)
pytestmark = pytest.mark.usefixtures("kernel_isa")


def _layers(cm):
    return [m for m in getattr(cm._run, "module", cm._run).modules() if hasattr(m, "rows")]


@pytest.mark.parametrize("engine", ["lowbit", "lowbit-int8"])
@pytest.mark.parametrize("out,k", [(1, 25), (6, 70), (10, 84), (84, 120), (120, 150)])
@pytest.mark.parametrize("threads", [1, 2])
def test_few_output_linear_layers_run_row_major(engine, out, k, threads):
    torch.manual_seed(out * k)
    model = nn.Sequential(nn.Linear(k, out), nn.ReLU()).eval()
    q = QUANTIZERS["uniform"](model, 8, symmetric=out % 2 == 0)  # odd: affine zero points
    cm = compile_model(q.model, engine, quant=q.layers, threads=threads)
    (layer,) = _layers(cm)
    assert layer.rows and layer.packed.numel() == out * k  # no padding to 32 outputs
    reference = cm.reference or q.model
    for batch in (1, 3, 17, 300):  # 300 x 120 x 150 MACs: both threads work
        x = torch.randn(batch, k)
        with torch.no_grad():
            want = reference(x)
        got = cm(x)
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()) + 1e-6


@pytest.mark.parametrize("engine", ["lowbit", "lowbit-int8"])
def test_default_cnn_in_8_bits_is_stored_near_its_information_bound(engine):
    """LeNet-5's layers have 6-120 outputs: as row-major codes, the whole model's int8 weights
    take at most 10 % more than 8 bits per weight (the scales and zero points included)."""
    session = workbench.Session.default(progress=False)
    q = QUANTIZERS["uniform"](session.base.model, 8)
    cm = compile_model(q.model, engine, quant=q.layers)
    layers = _layers(cm)
    assert len(layers) == 5 and all(m.rows for m in layers)
    bound = sum(information_bound_bits(q.model.get_submodule(n).weight, 8) for n in q.layers)
    assert 1.0 < cm.weight_bytes / (bound / 8) <= 1.10
    x = session.data.x_test[:64]
    reference = cm.reference or q.model
    with torch.no_grad():
        assert bool((cm(x).argmax(1) == reference(x).argmax(1)).all())
        assert float((cm(x) - reference(x)).abs().max()) < 1e-4


def test_wide_layers_keep_the_packed_blocks():
    assert not rows_pay(1024) and not rows_pay(1000) and rows_pay(120)
    model = nn.Sequential(nn.Linear(64, 1024)).eval()
    q = QUANTIZERS["uniform"](model, 8)
    for engine in ("lowbit", "lowbit-int8"):
        (layer,) = _layers(compile_model(q.model, engine, quant=q.layers))
        assert not layer.rows

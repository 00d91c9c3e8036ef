"""The C kernels against independent torch oracles, over shapes that hit every code path:
gather (few columns) and tiled (16/32/64-wide) SpMM, int16 and int32 column indices, N:M,
im2col convolutions (stride, padding, dilation, 1×1), fused BN + ReLU, all packed low-bit
widths with symmetric and affine codes, XNOR + popcount, and 1 vs 2 threads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.backend import compile_model
from workbench.backend.lowbit import pack_codes, signed_codes
from workbench.backend.native import available
from workbench.backend.sparse import nm_pattern, to_csr
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS

pytestmark = pytest.mark.skipif(not available(), reason="no C compiler for the kernels")


@pytest.fixture(autouse=True)
def _no_grad():
    """Reference outputs are plain tensors (no autograd graph)."""
    with torch.no_grad():
        yield


def sparse_linear(k, o, density, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, o, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(o, k, generator=g))
        lin.weight.mul_(torch.rand(o, k, generator=g) < density)
    return lin.eval()


@pytest.mark.parametrize("batch", [1, 3, 7, 8, 16, 33, 64, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_csr_linear_matches_dense(batch, threads):
    model = nn.Sequential(sparse_linear(70, 45, 0.2), nn.ReLU())
    cm = compile_model(model, "sparse", max_density=1.0, threads=threads)
    assert cm.report.kernels() == {"0": "csr"}
    assert cm.report.layers[0].layer == "Linear+ReLU"
    x = torch.randn(batch, 70)
    with torch.no_grad():
        ref = model(x)
    out = cm(x)
    assert (out >= 0).all() and float((out - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("k", [255, 256, 300, 70000])
def test_blocked_csr_on_any_fan_in(k):
    """Chunks of 255 columns with one-byte indices; partial last chunks; empty chunks."""
    lin = sparse_linear(k, 3, 0.01 if k > 300 else 0.1, bias=False)
    with torch.no_grad():
        lin.weight[0, :] = 0
        lin.weight[0, k - 1] = 1.5  # a row whose only weight is in the last chunk
    start, counts, idx, val = to_csr(lin.weight.detach())
    assert idx.dtype == counts.dtype == torch.uint8 and counts.shape == (-(-k // 255), 3)
    assert int(counts.sum()) == len(val) == int((lin.weight != 0).sum())
    cm = compile_model(lin, "sparse", max_density=1.0)
    for batch in (1, 9, 40):
        x = torch.randn(batch, k)
        with torch.no_grad():
            assert float((cm(x) - lin(x)).abs().max()) < 1e-4


def test_dense_chunks_and_many_row_blocks():
    """255 nonzeros of a row in one chunk (the one-byte count's maximum), 100 rows."""
    lin = sparse_linear(600, 100, 0.3)
    with torch.no_grad():
        lin.weight[7, :255] = 1.0
    cm = compile_model(lin, "sparse", max_density=1.0, threads=2)
    for batch in (2, 20, 70):
        x = torch.randn(batch, 600)
        with torch.no_grad():
            assert float((cm(x) - lin(x)).abs().max()) < 1e-3


def test_rows_without_nonzeros_give_the_bias():
    lin = sparse_linear(20, 6, 0.3)
    with torch.no_grad():
        lin.weight[2:4] = 0
    cm = compile_model(lin, "sparse", max_density=1.0)
    x = torch.randn(40, 20)
    out = cm(x)
    assert torch.equal(out[:, 2], lin.bias[2].expand(40))
    assert float((out - lin(x)).abs().max()) < 1e-5


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2), dict(kernel_size=(3, 5),
    padding=(2, 1), dilation=(1, 2)), dict(kernel_size=1), dict(kernel_size=1, stride=2)])
def test_sparse_and_lowbit_conv_match_torch(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, **geometry)
    model = nn.Sequential(conv, nn.BatchNorm2d(7), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-2, 2)  # negative BN scales fold too
    model.eval()
    pruned = PRUNERS["magnitude"](model, 0.7)
    x = torch.randn(3, 5, 11, 9)
    cm = compile_model(pruned.model, "sparse", max_density=1.0)
    assert cm.report.layers[0].layer == "Conv2d+BN+ReLU"
    assert float((cm(x) - pruned.model(x)).abs().max()) < 1e-4
    q = QUANTIZERS["uniform"](model, 8, activations=True, data=_Data(torch.randn(64, 5, 11, 9)))
    cm = compile_model(q.model, "lowbit", quant=q.layers)
    assert cm.report.kernels() == {"0": "int8"}
    ref = q.model(x)
    assert float((cm(x) - ref).abs().max()) < 1e-3 * float(ref.abs().max())


class _Data:
    """The part of a Dataset that activation calibration reads."""

    def __init__(self, x):
        self.x_train = x


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_kernels_match_dense(n, m):
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8))
    p = PRUNERS["nm"](model, n=n, m=m)
    assert nm_pattern(p.masks["0"].float()) == (n, m) or n / m < 0.5
    cm = compile_model(p.model, "sparse", masks=p.masks, max_density=1.0)
    # every N:M pattern is stored as a flat bitmask (1 bit per weight + the kept values)
    assert cm.report.kernels()["0"] == f"nm-{n}:{m}"
    assert "bitmask" in cm.report.layers[0].reason
    for batch in (1, 5, 13, 64):
        x = torch.randn(batch, 64)
        assert float((cm(x) - p.model(x)).abs().max()) < 1e-5


def test_pack_codes_layout_round_trips():
    """Unpacking the packed bytes in Python gives the codes back, for every width."""
    torch.manual_seed(0)
    for bits, lo, hi in [(8, -128, 127), (4, 0, 15), (2, 0, 3), (1, -1, 1)]:
        d = torch.randint(lo, hi + 1, (37, 21), dtype=torch.int32)
        if bits == 1:
            d = torch.where(d >= 0, 1, -1)
        packed, kp = pack_codes(d, bits)
        g = {8: 1, 4: 2, 2: 4, 1: 1}[bits]
        ob, loads = 2, kp // 4 // g  # 37 outputs -> 2 blocks of 32
        lb = 8 if bits == 1 else 64
        p = packed.numpy().reshape(ob, loads, 2, lb)
        back = torch.zeros(64, kp, dtype=torch.int32)
        for o in range(64):
            for k in range(kp):
                q, i = divmod(k, 4)
                vec = p[o // 32, q // g, (o % 32) // 16]
                byte = (o % 16) * 4 + i
                if bits == 8:
                    v = int(vec[byte].astype("int8"))
                elif bits == 1:
                    v = -1 if (int.from_bytes(vec.tobytes(), "little") >> byte) & 1 else 1
                else:
                    v = (int(vec[byte]) >> (bits * (q % g))) & (2 ** bits - 1)
                back[o, k] = v
        assert torch.equal(back[:37, :21], d), bits
        assert packed.numel() == 64 * kp * bits // 8


@pytest.mark.parametrize("method,bits,kw", [
    ("uniform", 8, {}), ("uniform", 8, {"symmetric": False}), ("uniform", 5, {}),
    ("uniform", 4, {}), ("uniform", 4, {"symmetric": False}), ("uniform", 3, {}),
    ("uniform", 2, {}), ("uniform", 2, {"symmetric": False}), ("ternary", 2, {}),
    ("binary", 1, {}), ("uniform", 8, {"granularity": "tensor"})])
@pytest.mark.parametrize("batch", [1, 6, 19])
def test_lowbit_linear_matches_quantized_reference(method, bits, kw, batch):
    """Oracle: the de-quantized weights times the uint8-rounded inputs, in float64."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(83, 37), nn.ReLU())
    q = QUANTIZERS[method](model, bits, **kw)
    cm = compile_model(q.model, "lowbit", quant=q.layers, threads=2)
    storage = {8: 8, 5: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]
    assert cm.report.kernels() == {"0": f"int{storage}"}
    x = torch.randn(batch, 83)
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 255
    z = torch.round(-lo / s).clamp(0, 255)
    xq = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    w = q.layers["0"].dequantize().double()
    ref = torch.relu(xq.double() @ w.T + q.model[0].bias.double())
    assert float((cm(x).double() - ref).abs().max()) < 1e-4 * float(ref.abs().max()) + 1e-5


def test_signed_codes_handles_pruned_binary_as_two_bits():
    model = nn.Linear(16, 4)
    p = PRUNERS["magnitude"](model, 0.5)
    q = QUANTIZERS["binary"](p.model, 1, masks=p.masks)
    d, zw, bits = signed_codes(q.layers[""], 4)
    assert bits == 2 and set(d.unique().tolist()) == {-1, 0, 1} and zw.abs().sum() == 0
    cm = compile_model(q.model, "lowbit", quant=q.layers)
    assert cm.report.kernels() == {"": "int2"}


@pytest.mark.parametrize("batch,k", [(1, 64), (9, 130), (64, 1000)])
def test_xnor_popcount_matches_sign_oracle(batch, k):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(k, 21))
    q = QUANTIZERS["binary"](model, 1)
    cm = compile_model(q.model, "lowbit", quant=q.layers, binary_activations=True)
    assert cm.report.kernels() == {"0": "xnor-popcount"}
    assert any("binarise" in n for n in cm.report.notes)
    x = torch.randn(batch, k)
    xs = torch.where(x < 0, -1.0, 1.0) * x.abs().mean(1, keepdim=True)
    w = torch.where(q.layers["0"].codes < 0, -1.0, 1.0) * q.layers["0"].scale[:, None]
    ref = xs.double() @ w.double().T + q.model[0].bias.double()
    assert float((cm(x).double() - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_layers_outside_sequentials_and_grouped_convs():
    """ResNet blocks call conv1/bn1 directly (no fusion); grouped convs fall back."""
    from conftest import zoo_model

    model = zoo_model("resnet_small")
    p = PRUNERS["magnitude"](model, 0.9)
    cm = compile_model(p.model, "sparse", max_density=1.0)
    kinds = {r.name: r.layer for r in cm.report.layers}
    assert kinds["stem.0"] == "Conv2d+BN+ReLU" and kinds["layers.0.conv1"] == "Conv2d"
    x = torch.randn(4, 1, 8, 8)
    assert float((cm(x) - p.model(x)).abs().max()) < 1e-4
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    cm = compile_model(grouped, "sparse", max_density=1.0)
    assert "grouped" in cm.report.fallbacks()["0"]

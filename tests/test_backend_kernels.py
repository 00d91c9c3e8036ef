"""The C kernels against independent torch oracles, over shapes that hit every code path:
gather (few columns) and tiled (16/32/64-wide) SpMM, int16 and int32 column indices, N:M,
im2col convolutions (stride, padding, dilation, 1×1), fused BN + ReLU, all packed low-bit
widths with symmetric and affine codes on both low-bit paths (int8 activations, weight-only fp32
activations, dense packed and sparse codes), XNOR + popcount, and 1 vs 2 threads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.backend import compile_model
from workbench.backend.lowbit import pack_codes, signed_codes
from workbench.backend.weightonly import pack_weight_only
from workbench.backend.sparse import FORMATS, format_bytes, nm_pattern, to_bitmask, to_csr
from workbench.errors import ParameterError
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS
from workbench.storage import information_bound_bits

# every test runs on each instruction set the CPU runs (scalar, avx2, avx512 / neon)
pytestmark = pytest.mark.usefixtures("kernel_isa")


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
    cm = compile_model(model, "sparse", max_density=1.0, threads=threads, formats=("csr",))
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
    assert cm.report.kernels() == {"0": "int8-int8"}
    ref = q.model(x)
    assert float((cm(x) - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    for bits, kernel in [(8, "int8-fp32"), (4, "int4-fp32"), (3, "int4-sparse-fp32")]:
        q = QUANTIZERS["uniform"](pruned.model, bits, masks=pruned.masks)
        cm = compile_model(q.model, "lowbit", quant=q.layers, threads=2,
                           max_density=0.5 if bits == 3 else 0.0)
        assert cm.report.kernels() == {"0": kernel}
        ref = q.model(x)
        assert float((cm(x) - ref).abs().max()) < 1e-5 * float(ref.abs().max())
        # the int8-activation path on the same layer matches its simulated reference
        cm8 = compile_model(q.model, "lowbit-int8", quant=q.layers)
        ref8 = cm8.reference(x)
        assert float((cm8(x) - ref8).abs().max()) < 1e-4 * float(ref8.abs().max())


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
    # 2:4 runs on its own kernel, other N:M patterns as a flat bitmask
    assert cm.report.kernels()["0"] == f"nm-{n}:{m}"
    assert ("2:4 kernel" if (n, m) == (2, 4) else "stored as a bitmask") in \
        cm.report.layers[0].reason
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
    cm = compile_model(q.model, "lowbit-int8", quant=q.layers, threads=2)
    storage = {8: 8, 5: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]
    assert cm.report.kernels() == {"0": f"int{storage}-int8"}
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
    cm = compile_model(q.model, "lowbit", quant=q.layers, sparse=False)
    assert cm.report.kernels() == {"": "int2-fp32"}


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


@pytest.mark.parametrize("method,bits,kw", [
    ("uniform", 8, {}), ("uniform", 8, {"symmetric": False}), ("uniform", 6, {}),
    ("uniform", 4, {}), ("uniform", 4, {"symmetric": False}), ("uniform", 3, {}),
    ("uniform", 2, {"symmetric": False}), ("ternary", 2, {}), ("binary", 1, {}),
    ("uniform", 4, {"granularity": "tensor"})])
@pytest.mark.parametrize("batch", [1, 2, 5, 8, 19])
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_only_linear_matches_float64_oracle(method, bits, kw, batch, threads):
    """Oracle: the de-quantized weights times the unrounded fp32 inputs, in float64; odd
    fan-ins leave partial packed loads."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(83, 37), nn.ReLU())
    q = QUANTIZERS[method](model, bits, **kw)
    cm = compile_model(q.model, "lowbit", quant=q.layers, threads=threads)
    storage = {8: 8, 6: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]
    assert cm.report.kernels() == {"0": f"int{storage}-fp32"}
    x = torch.randn(batch, 83)
    w = q.layers["0"].dequantize().double()
    ref = torch.relu(x.double() @ w.T + q.model[0].bias.double())
    assert float((cm(x).double() - ref).abs().max()) < 1e-5 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_weight_only_int4_long_fan_in_matches_float64_oracle(symmetric, batch):
    """The 4-bit layout (offset-binary nibbles, x pre-scaled per input) over a long fan-in
    that is not a multiple of 8 and outputs that are not a multiple of 16, 1 and 2 threads."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4101, 35))
    q = QUANTIZERS["uniform"](model, 4, symmetric=symmetric)
    w = q.layers["0"].dequantize().double()
    x = torch.randn(batch, 4101) * 3
    ref = x.double() @ w.T + q.model[0].bias.double()
    for threads in (1, 2):
        cm = compile_model(q.model, "lowbit", quant=q.layers, threads=threads)
        assert cm.report.kernels() == {"0": "int4-fp32"}
        assert float((cm(x).double() - ref).abs().max()) < 1e-5 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("batch", [1, 3, 4, 5, 16, 17, 40, 64])
def test_sparse_codes_match_float64_oracle(sparsity, bits, batch):
    """Pruned + quantized layers on the sparse-codes kernel (Rice-coded gaps): gathers (<= 4
    rows) and 16-row tiles, rows with no codes, 2 threads."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(700, 45), nn.ReLU())
    with torch.no_grad():
        model[0].weight[3] = 0.0  # an output with no stored code gives its bias
    p = PRUNERS["magnitude"](model, sparsity)
    q = QUANTIZERS["uniform"](p.model, bits, masks=p.masks)
    cm = compile_model(q.model, "lowbit", quant=q.layers, threads=2, max_density=1.0)
    assert cm.report.kernels()["0"] == f"int{8 if bits == 8 else 4}-sparse-fp32"
    x = torch.randn(batch, 700)
    w = q.layers["0"].dequantize().double()
    ref = torch.relu(x.double() @ w.T + q.model[0].bias.double())
    out = cm(x)
    assert torch.equal(out[:, 3], torch.relu(q.model[0].bias[3]).expand(batch))
    assert float((out.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max()) + 1e-6


def test_weight_only_layouts_round_trip():
    """Unpacking the packed bytes in Python gives the signed codes back (the sparse Rice
    format: tests/test_rice.py)."""
    torch.manual_seed(5)
    for bits in (8, 4, 2, 1):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        d = torch.randint(lo, hi + 1, (37, 21), dtype=torch.int32)
        packed = pack_weight_only(d, bits).numpy()
        if bits == 4:  # blocks of 16 outputs, groups of 8 inputs, offset-binary nibbles
            words = packed.view("<u4").reshape(3, 3, 16)
            assert packed.size == 3 * 3 * 64
            for o in range(48):
                for k in range(24):
                    f = (int(words[o // 16, k // 8, o % 16]) >> (4 * (k % 8))) & 15
                    assert f - 8 == (int(d[o, k]) if o < 37 and k < 21 else -8)
            continue
        g = 8 // bits
        loads = -(-21 // g)
        assert packed.size == 64 * loads  # 2 blocks of 32 outputs, one byte per load
        p = packed.reshape(2, loads, 2, 16)
        for o in range(37):
            for k in range(21):
                byte = int(p[o // 32, k // g, (o % 32) // 16, o % 16])
                field = (byte >> (bits * (k % g))) & (2 ** bits - 1)
                assert field - (2 ** bits if field > hi else 0) == int(d[o, k])


def random_weight(o, k, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(o, k, generator=g) * (torch.rand(o, k, generator=g) < density)


@pytest.mark.parametrize("two_level", [False, True])
@pytest.mark.parametrize("o,k,density", [(5, 64, 0.3), (37, 129, 0.1), (3, 700, 0.02),
                                         (9, 1, 1.0), (16, 256, 1.0), (4, 70, 0.0),
                                         (70, 40, 0.2)])
def test_bitmask_layout_decodes_to_the_weight(two_level, o, k, density):
    """Decoding the stored masks in Python (an independent reader) gives the weight back."""
    w = random_weight(o, k, density, seed=o * k)
    f = to_bitmask(w, two_level)
    nb = -(-k // 64)
    back = torch.zeros(o, nb * 64)
    values = f["values"].tolist()
    p = q = 0  # running value / nibble offsets; the stored ones mark every 32-row block
    for r in range(o):
        if r % 32 == 0:
            assert p == int(f["rowptr"][r // 32]) and (not two_level or q == f["nptr"][r // 32])
        for b in range(nb):
            if two_level:
                g, bits = int(f["masks"][r, b]) & 0xFFFF, 0
                for j in range(16):
                    if g >> j & 1:
                        nib = (int(f["nibbles"][q // 2]) >> (4 * (q % 2))) & 0xF
                        bits |= nib << (4 * j)
                        q += 1
            else:
                bits = int(f["masks"][r, b]) & (2 ** 64 - 1)
            for j in range(64):
                if bits >> j & 1:
                    back[r, b * 64 + j] = values[p]
                    p += 1
    nblocks = -(-o // 32)
    assert p == int((w != 0).sum()) == f["values"].numel() == int(f["rowptr"][-1])
    assert len(f["rowptr"]) == nblocks + 1
    if two_level:
        assert q == int(f["nptr"][-1]) and len(f["nptr"]) == nblocks + 1
    assert torch.equal(back[:, :k], w) and not back[:, k:].any()


@pytest.mark.parametrize("fmt", ["bitmask", "bitmask-2level", "csr"])
@pytest.mark.parametrize("o,k,density", [(1, 1, 1.0), (7, 13, 0.5), (45, 70, 0.2),
                                         (33, 300, 0.1), (64, 1024, 0.05), (130, 129, 0.6),
                                         (20, 100, 1.0), (10, 65, 0.0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bitmask_kernels_match_torch(fmt, o, k, density, threads):
    """Random sparse Linear+ReLU in each format against float64 torch: every batch path
    (bit walk and VEXPANDPS for < 8 columns, 1-4 vector lane tiles, several tiles), empty
    rows, all-zero and fully dense layers, odd sizes."""
    w = random_weight(o, k, density, seed=o + k)
    if o > 2:
        w[1] = 0  # an empty row
    lin = nn.Linear(k, o)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin, nn.ReLU()).eval()
    cm = compile_model(model, "sparse", max_density=1.0, formats=(fmt,), nm=False, threads=threads)
    assert cm.report.kernels() == {"0": fmt}
    assert cm.weight_bytes == format_bytes(w)[fmt]
    g = torch.Generator().manual_seed(1)
    for batch in (1, 2, 5, 7, 8, 16, 33, 64, 100, 130):
        x = torch.randn(batch, k, generator=g)
        ref = torch.relu(x.double() @ w.double().T + lin.bias.double())
        out = cm(x)
        assert float((out.double() - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))
        if o > 2:
            assert torch.equal(out[:, 1], torch.relu(lin.bias[1]).expand(batch))


@pytest.mark.parametrize("fmt", FORMATS)
def test_few_column_walks_split_over_two_threads(fmt):
    """Below 8 columns a call goes parallel only from ~400k multiply-adds: such a layer on two
    threads gives the one-thread result."""
    w = random_weight(1024, 4096, 0.1, seed=11)
    lin = nn.Linear(4096, 1024)
    with torch.no_grad():
        lin.weight.copy_(w)
    one, two = (compile_model(nn.Sequential(lin).eval(), "sparse", formats=(fmt,), threads=t)
                for t in (1, 2))
    assert one.report.kernels() == {"0": fmt}
    for batch in (1, 3):
        x = torch.randn(batch, 4096)
        ref = x.double() @ w.double().T + lin.bias.double()
        assert torch.equal(one(x), two(x))
        assert float((two(x).double() - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))


@pytest.mark.parametrize("fmt", ["bitmask", "bitmask-2level"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bitmask_bit_walk_on_long_rows_and_dense_blocks(fmt, threads):
    """Below 8 columns a row's offsets are decoded in pieces of 4096 columns: rows across the
    piece boundary, blocks of 64 columns with more than 32 nonzeros, and a full row."""
    w = random_weight(12, 4500, 0.05, seed=3)
    w[2, 4000:4200] = 1.5  # dense across the boundary at column 4096
    w[3, :64] = -0.5  # a full first block
    w[4] = 0.25  # a full row
    lin = nn.Linear(4500, 12)
    with torch.no_grad():
        lin.weight.copy_(w)
    assert 5 * int((w != 0).sum()) < w.numel()  # the bit walk, not the VEXPANDPS path
    cm = compile_model(nn.Sequential(lin).eval(), "sparse", max_density=1.0, formats=(fmt,),
                       nm=False, threads=threads)
    g = torch.Generator().manual_seed(2)
    for batch in (1, 3, 7):
        x = torch.randn(batch, 4500, generator=g)
        ref = x.double() @ w.double().T + lin.bias.double()
        assert float((cm(x).double() - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))


@pytest.mark.parametrize("fmt", ["bitmask", "bitmask-2level"])
def test_bitmask_conv_matches_torch(fmt):
    """Conv2d (im2col columns, tiles that cross samples) on both bitmask formats."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(6, 9, 3, padding=1), nn.ReLU()).eval()
    p = PRUNERS["magnitude"](model, 0.8)
    cm = compile_model(p.model, "sparse", max_density=1.0, formats=(fmt,), threads=2)
    assert cm.report.kernels() == {"0": fmt}
    for batch in (1, 3):
        x = torch.randn(batch, 6, 7, 5)  # 35 positions: tiles straddle two samples
        assert float((cm(x) - p.model(x)).abs().max()) < 1e-4


def test_formats_are_chosen_by_size_within_the_information_bound():
    """Each layer gets its smallest format, or CSR within 2 % of it, and at 80-98 % sparsity
    that is within 10 % of log2 C(n, k) index bits + 32 bits per value."""
    chosen = set()
    for sparsity in (0.8, 0.9, 0.95, 0.98):
        w = random_weight(512, 1024, 1 - sparsity, seed=int(sparsity * 100))
        lin = nn.Linear(1024, 512)
        with torch.no_grad():
            lin.weight.copy_(w)
        cm = compile_model(lin, "sparse")
        sizes = format_bytes(w)
        (layer,) = cm.report.layers
        smallest = min(sizes, key=sizes.get)
        if smallest != "csr" and sizes["csr"] <= 1.02 * sizes[smallest]:
            assert layer.kernel == "csr" and "fastest to walk" in layer.reason
        else:
            assert layer.kernel == smallest and "smallest" in layer.reason
        chosen.add(layer.kernel)
        assert cm.weight_bytes == sizes[layer.kernel]
        assert cm.weight_bytes * 8 <= 1.10 * information_bound_bits(w)
    assert chosen == {"csr", "bitmask-2level"}


def test_sparse_layers_fit_nm_by_chance_stay_unstructured():
    w = random_weight(64, 512, 0.02, seed=5)  # every group of 8 has <= 4 nonzeros by chance
    assert nm_pattern(w) is not None
    lin = nn.Linear(512, 64)
    with torch.no_grad():
        lin.weight.copy_(w)
    assert compile_model(lin, "sparse", max_density=1.0).report.kernels() == {"": "csr"}


def test_linear_chains_run_without_modules():
    model = nn.Sequential(nn.Flatten(), sparse_linear(90, 40, 0.2), nn.ReLU(),
                          nn.Dropout(0.5), sparse_linear(40, 7, 0.3)).eval()
    cm = compile_model(model, "sparse", max_density=1.0)
    assert any("chain" in n for n in cm.report.notes) and not isinstance(cm._run, nn.Module)
    for batch in (1, 9, 70):
        x = torch.randn(batch, 3, 30)
        assert float((cm(x) - model(x)).abs().max()) < 1e-5
    with pytest.raises(ParameterError, match="90 input features"):
        cm(torch.randn(2, 89))
    residual = nn.Sequential(sparse_linear(20, 20, 0.3))
    assert not any("chain" in n for n in compile_model(
        _Residual(residual), "sparse", max_density=1.0).report.notes)


def test_chains_take_in_the_linear_layers_left_on_torch():
    """Layers too small for the sparse kernels run as addmm steps of the same loop (a ReLU
    after them fused, one without bias too), bit for bit as the modules."""
    model = nn.Sequential(sparse_linear(200, 100, 0.1), nn.ReLU(), sparse_linear(100, 30, 0.1),
                          nn.ReLU(), sparse_linear(30, 5, 0.5, bias=False)).eval()
    cm = compile_model(model, "sparse")
    assert cm.report.kernels() == {"0": "bitmask-2level", "2": "torch", "4": "torch"}
    assert any("chain" in n for n in cm.report.notes) and not isinstance(cm._run, nn.Module)
    for batch in (1, 9, 70):
        x = torch.randn(batch, 200)
        ref = model(x)
        assert torch.equal(cm(x), cm._run.module(x))
        assert float((cm(x) - ref).abs().max()) < 1e-6 * (1 + float(ref.abs().max()))
    # nothing of ours to run: no chain
    small = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 2)).eval()
    assert not any("chain" in n for n in compile_model(small, "sparse").report.notes)


@pytest.mark.parametrize("engine,options", [("lowbit-int8", {}), ("lowbit", {}),
                                             ("lowbit", {"activations": "fp32"})])
def test_lowbit_linear_chains_run_without_modules(engine, options):
    """Low-bit Linear chains also run as one loop of kernel calls, unless a layer keeps a
    torch hook (weight-only kernels under a variant's activation fake-quant)."""
    from workbench.quantize import QUANTIZERS

    model = nn.Sequential(nn.Flatten(), nn.Linear(90, 40), nn.ReLU(), nn.Linear(40, 7)).eval()
    q = QUANTIZERS["uniform"](model, 4, activations=True, data=_Data(torch.randn(64, 3, 30)))
    cm = compile_model(q.model, engine, quant=q.layers, **options)
    hooked = bool(options)
    assert any("chain" in n for n in cm.report.notes) != hooked
    assert isinstance(cm._run, nn.Module) == hooked
    modules = getattr(cm._run, "module", cm._run)
    reference = cm.reference or q.model
    for batch in (1, 9, 70):
        x = torch.randn(batch, 3, 30)
        assert torch.equal(cm(x), modules(x))  # the same kernels, bit for bit
        assert float((cm(x) - reference(x)).abs().max()) < 1e-4


class _Residual(nn.Module):
    """x + f(x): its leaves are Linear layers in order, but it is not a chain."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


@pytest.mark.parametrize("o,k", [(1, 4), (3, 8), (7, 68), (33, 256), (130, 1024)])
@pytest.mark.parametrize("threads", [1, 2])
def test_nm24_kernel_matches_torch(o, k, threads):
    """Random 2:4 Linear+ReLU on the dedicated 2:4 kernel (row tails of 1-3 rows, groups
    keeping 0, 1 or 2 weights) against float64 torch for batch sizes 1..130."""
    g = torch.Generator().manual_seed(o * k)
    w = torch.randn(o, k // 4, 4, generator=g)
    keep = torch.rand(o, k // 4, 4, generator=g).argsort(-1) < 2
    w = (w * keep).reshape(o, k)
    w[1:, : min(k, 8)] *= torch.rand(o - 1, min(k, 8), generator=g) < 0.5  # groups keeping < 2
    lin = nn.Linear(k, o)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin, nn.ReLU()).eval()
    # formats=("bitmask",): tiny layers would otherwise count as "2:4 by chance" (csr)
    cm = compile_model(model, "sparse", max_density=1.0, formats=("bitmask",), threads=threads)
    assert cm.report.kernels() == {"0": "nm-2:4"}
    assert "2:4 kernel" in cm.report.layers[0].reason
    for batch in (1, 2, 7, 8, 15, 16, 17, 33, 64, 65, 100, 130):
        x = torch.randn(batch, k, generator=g)
        ref = torch.relu(x.double() @ w.double().T + lin.bias.double())
        out = cm(x)
        assert out.shape == (batch, o)
        assert float((out.double() - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))

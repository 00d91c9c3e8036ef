"""The Rice-coded gap format of pruned + quantized weight-only layers (``csrc/rice.c``): an
independent Python decoder against the encoder, the kernel against float64 torch on both paths
(gathers below 5 columns, 16-column tiles in groups of up to 4), awkward patterns (empty rows,
an empty layer, dense rows, gaps far beyond 64·2^k), and the stored size against the
information-theoretic bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.backend import compile_model
from workbench.backend.lowbit import signed_codes
from workbench.backend.native import load_kernels
from workbench.backend.weightonly import RICE_ROWS, rice_code_bytes, to_rice_codes
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS
from workbench.storage import information_bound_bits

# every test runs on each instruction set the CPU runs (scalar, avx2, avx512 / neon)
pytestmark = pytest.mark.usefixtures("kernel_isa")


@pytest.fixture(autouse=True)
def _no_grad():
    """Reference outputs are plain tensors (no autograd graph), and inputs are seeded: a
    40,000-term fp32 dot product is off its float64 value by up to ~1e-5 relative on some
    draws (1.4e-5 seen once; at most 7.7e-6 over seeds 0-19, alike on every ISA)."""
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def decode(r, o: int, k: int) -> np.ndarray:
    """The ``(o, k)`` signed codes back from the three bit streams, bit by bit; also checks the
    per-block table."""
    def bits(t):
        return np.unpackbits(t.numpy(), bitorder="little").astype(np.int64)

    cb, ub, lb = bits(r.counts), bits(r.unary), bits(r.lows)
    ones = np.flatnonzero(ub)
    raw = r.values.numpy()
    if r.bits == 8:
        codes = raw.view(np.int8).astype(np.int64)
    else:
        nib = np.stack([raw & 15, raw >> 4], 1).reshape(-1).astype(np.int64)
        codes = np.where(nib > 7, nib - 16, nib)
    out = np.zeros((o, k), dtype=np.int64)
    pc, i, last = 0, 0, -1
    blocks = r.blocks.numpy().view(np.uint32)
    for row in range(o):
        if row % RICE_ROWS == 0:
            assert blocks[row // RICE_ROWS].tolist() == [pc, last + 1, i]
        low = sum(int(cb[pc + b]) << b for b in range(r.kc))
        pc += r.kc
        q = 0
        while cb[pc] == 0:
            q, pc = q + 1, pc + 1
        pc += 1
        c = -1
        for _ in range((q << r.kc) | low):
            quotient, last = int(ones[i]) - last - 1, int(ones[i])
            c += (quotient << r.k) + sum(int(lb[i * r.k + b]) << b for b in range(r.k)) + 1
            out[row, c] = codes[i]
            i += 1
    assert i == r.nnz and len(ones) == r.nnz
    return out


def patterned(o, k, density, bits, seed):
    """Random signed codes (never 0) at ``density``, plus the awkward rows: row 1 empty, row 2
    fully dense, row 3 with one code at each end (a gap of k - 2)."""
    g = torch.Generator().manual_seed(seed)
    lim = 127 if bits == 8 else 7
    v = torch.randint(1, lim + 1, (o, k), generator=g, dtype=torch.int32)
    v *= torch.where(torch.rand(o, k, generator=g) < 0.5, -1, 1).to(torch.int32)
    v *= (torch.rand(o, k, generator=g) < density).to(torch.int32)
    if o > 3:
        v[1] = 0
        v[2] = v[2].abs().clamp(min=1)
        v[3] = 0
        v[3, 0], v[3, -1] = -lim, lim
    return v


CASES = [(1, 1, 1.0), (5, 3, 0.0), (7, 13, 0.5), (37, 129, 0.1), (20, 700, 0.02),
         (33, 1000, 0.3), (17, 5000, 0.003), (40, 257, 1.0)]


@pytest.mark.parametrize("o,k,density", CASES)
@pytest.mark.parametrize("bits", [8, 4])
def test_encoder_round_trips(o, k, density, bits):
    v = patterned(o, k, density, bits, seed=o * k)
    r = to_rice_codes(v)
    assert r.bits == (bits if r.nnz else 4) and r.nnz == int((v != 0).sum())
    assert np.array_equal(decode(r, o, k), v.numpy())
    assert r.blocks.shape == (-(-o // RICE_ROWS), 3)


def test_long_gaps_and_zero_k():
    """Gaps of thousands of inputs with k small (long unary runs over many zero words), and
    k = 0 at 50 % density."""
    v = torch.zeros(6, 40000, dtype=torch.int32)
    v[0, [0, 39999]] = torch.tensor([3, -4], dtype=torch.int32)
    v[2, 30000] = 5
    v[4, :] = 1  # dense rows pull k down to 0
    v[5, :] = 1
    r = to_rice_codes(v)
    assert r.k == 0 and (39998 >> r.k) > 64 * 2 ** r.k
    assert np.array_equal(decode(r, 6, 40000), v.numpy())
    x = torch.randn(3, 40000)
    for n in (1, 3):
        assert_kernel_matches(v, x[:n])
    assert_kernel_matches(v, torch.randn(20, 40000))
    v = patterned(3, 50000, 0.0005, 8, seed=1)  # few codes: long gaps, large k
    r = to_rice_codes(v)
    assert r.k >= 8 and np.array_equal(decode(r, 3, 50000), v.numpy())
    assert_kernel_matches(v, torch.randn(2, 50000))


def run_kernel(values, x, sw, bias, relu, threads=1):
    lib = load_kernels()
    r = to_rice_codes(values)
    (o, k), n = values.shape, x.shape[0]
    y = torch.full((n, o), float("nan"))
    work = torch.empty(lib.wb_wq_rice_work(n, k))
    lib.wb_wq_rice(r.counts.data_ptr(), r.unary.data_ptr(), r.lows.data_ptr(),
                   r.blocks.data_ptr(), r.values.data_ptr(), r.bits, r.k, r.kc, sw.data_ptr(),
                   bias.data_ptr(), x.data_ptr(), y.data_ptr(), work.data_ptr(), n, 1, o, k,
                   r.nnz, int(relu), threads)
    return y


def assert_kernel_matches(values, x, relu=True, threads=1):
    o = values.shape[0]
    g = torch.Generator().manual_seed(o)
    sw, bias = torch.rand(o, generator=g) + 0.1, torch.randn(o, generator=g)
    ref = x.double() @ (values.double() * sw.double()[:, None]).T + bias.double()
    if relu:
        ref = torch.relu(ref)
    out = run_kernel(values, x.contiguous(), sw, bias, relu, threads)
    assert float((out.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("o,k,density", CASES)
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_matches_float64_oracle(o, k, density, bits):
    v = patterned(o, k, density, bits, seed=o + k)
    g = torch.Generator().manual_seed(2)
    for batch in (1, 2, 3, 4, 5, 16, 17, 33, 64, 65, 100):
        x = torch.randn(batch, k, generator=g)
        assert_kernel_matches(v, x, relu=batch % 2 == 1)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("batch", [1, 3, 17, 64])
def test_kernel_two_threads(bits, batch):
    v = patterned(300, 1500, 0.3, bits, seed=9)
    x = torch.randn(batch, 1500)
    assert_kernel_matches(v, x, threads=2)


def pruned_quantized(model, sparsity, bits):
    p = PRUNERS["magnitude"](model, sparsity)
    return QUANTIZERS["uniform"](p.model, bits, masks=p.masks)


@pytest.mark.parametrize("bits", [8, 4])
def test_compiled_conv_matches_the_variant(bits):
    """Conv2d (im2col rows; L > 1 output layout, tiles straddling two samples)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(6, 9, 3, padding=1), nn.ReLU()).eval()
    q = pruned_quantized(model, 0.7, bits)
    for threads in (1, 2):
        cm = compile_model(q.model, "lowbit", quant=q.layers, threads=threads, max_density=1.0)
        assert cm.report.kernels() == {"0": f"int{bits}-sparse-fp32"}
        for batch in (1, 3):
            x = torch.randn(batch, 6, 7, 5)
            with torch.no_grad():
                ref = q.model(x)
            assert float((cm(x) - ref).abs().max()) < 1e-5 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("bits", [8, 4])
def test_size_within_ten_percent_of_the_bound(bits):
    """At 90 % random sparsity on 1024², the layer's bytes (streams, codes, block table and
    the fp32 scale; not the bias) are within 10 % of log2 C(n, k) + bits per code + 32 bits
    per output."""
    torch.manual_seed(0)
    q = pruned_quantized(nn.Linear(1024, 1024), 0.9, bits)
    cm = compile_model(q.model, "lowbit", quant=q.layers, threads=1)
    assert cm.report.kernels() == {"": f"int{bits}-sparse-fp32"}
    w = q.model.weight.detach()
    bound = information_bound_bits(w, bits) + 32 * 1024
    assert cm.weight_bytes * 8 <= 1.10 * bound
    d, zw, _ = signed_codes(q.layers[""], 1024)
    r = to_rice_codes(d - zw.to(torch.int32)[:, None])
    assert r.nnz == int((w != 0).sum())
    assert cm.weight_bytes == rice_code_bytes(r) + 4 * 1024

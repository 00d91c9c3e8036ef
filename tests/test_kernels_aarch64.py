"""The C kernels cross-compiled for aarch64 (``neon`` and ``scalar``) and run under qemu-user,
checked against the host by record and replay (``tests/kernel_replay.py``).

Real compiled models (every engine path: CSR, both bitmask formats, 2:4, im2col convolutions,
int8 activations static and dynamic, weight-only packed, row-major and Rice-coded codes, XNOR)
run once on the host's portable ``scalar`` kernels while every kernel call is recorded; one
aarch64 executable per ISA replays each call on fresh buffers holding the recorded inputs, and
its outputs must match the host's. The host kernels are themselves checked against float64
oracles (tests/test_backend_kernels.py, test_rice.py, test_rows.py), so this is a transitive
correctness check of the ARM builds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

import kernel_replay as kr
from workbench.backend import compile_model, native
from workbench.backend import isa as isas
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS

# Output pointer arguments of every work function (index -> dtype), from the C prototypes in
# workbench/backend/csrc/*.c; workspaces (scratch) are not compared.
OUTPUTS = {
    # (start, cnt, idx, val, bias, x, y, work, B, K, L, O, relu, nthreads)
    "wb_csr_spmm": {6: "float32"},
    # (kind, masks, nib, nptr, rowptr, val, bias, x, y, work, B, K, L, O, relu, nthreads)
    "wb_bitmask_spmm": {8: "float32"},
    # (val, pos, bias, x, y, work, B, K, L, O, relu, nthreads)
    "wb_nm24_spmm": {4: "float32"},
    # (x, out, B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, rows, nthreads)
    "wb_im2col": {1: "float32"},
    # (x, xq, sx, zx, xsum, B, K, L, Kp, static_scale, static_zp, nthreads)
    "wb_quantize_columns": {1: "uint8", 2: "float32", 3: "int32", 4: "int32"},
    # (w, bits, sw, zw, wsum, bias, xq, sx, zx, xsum, y, B, L, O, K, Kp, relu, nthreads)
    "wb_lowbit_gemm": {10: "float32"},
    # (x, work, w, bits, sw, zw, wsum, bias, y, B, L, O, K, Kp, scale, zp, relu, x_rows, nthr.)
    "wb_lowbit_forward": {8: "float32"},
    # (x, xb, sx, B, K, L, Kw, nthreads)
    "wb_binarize_columns": {1: "uint64", 2: "float32"},
    # (w, sw, bias, xb, sx, y, B, L, O, K, Kw, relu, nthreads)
    "wb_xnor_gemm": {5: "float32"},
    # (x, w, bits, sw, zw, bias, y, xsum_work, B, L, O, K, relu, nthreads)
    "wb_wq_gemm": {6: "float32"},
    # (x, w, sw, zw, bias, y, B, L, O, K, relu, nthreads)
    "wb_wq_rows": {5: "float32"},
    # (x, work, w, sw, zw, wsum, bias, y, B, L, O, K, scale, zp, relu, x_rows, nthreads)
    "wb_lowbit_rows": {7: "float32"},
    # (counts, unary, lows, blocks, val, bits, kg, kc, sw, bias, x, y, work, B, L, O, K, nnz,
    #  relu, nthreads)
    "wb_wq_rice": {11: "float32"},
}
# Integer queries: Python sizes buffers from the host's answers, so ARM must answer the same.
QUERIES = ("wb_tile_width", "wb_work_floats", "wb_lowbit_work_bytes", "wb_wq_work",
           "wb_wq_rice_work", "wb_has_vnni")
# Float outputs: max|delta| <= RTOL * (1 + max|host|). The ARM builds contract a*b + c into
# fused multiply-adds (-ffp-contract=fast; x86-64's baseline has no FMA) and vectorize sums
# in another order, so they differ from the host in the last bits. Integer outputs (quantized
# activations, their sums and zero points, sign bits) must be equal: both sides divide and
# round with the same IEEE operations, so not even rounding ties can differ.
RTOL = 1e-4
ISAS = ("neon", "scalar")


def _need_tools():
    missing = kr.missing_tools()
    if missing:
        why = (f"{' and '.join(missing)} not found: the aarch64 kernel checks need the Debian "
               "packages gcc-aarch64-linux-gnu and qemu-user")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


class _Data:
    """The part of a Dataset that activation calibration reads."""

    def __init__(self, x):
        self.x_train = x


def _linear(k, o, density=1.0, seed=0, relu=True, weight=None):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, o)
    with torch.no_grad():
        w = torch.randn(o, k, generator=g) * (torch.rand(o, k, generator=g) < density) \
            if weight is None else weight
        lin.weight.copy_(w)
        lin.bias.copy_(torch.randn(o, generator=g))
    return (nn.Sequential(lin, nn.ReLU()) if relu else nn.Sequential(lin)).eval()


def _conv(c, o, seed=0, bn=True, **geometry):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(c, o, **geometry)]
    if bn:
        layers.append(nn.BatchNorm2d(o))
    layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            model[1].running_mean.uniform_(-1, 1)
            model[1].running_var.uniform_(0.5, 2)
            model[1].weight.uniform_(-2, 2)
    return model.eval()


def _run(cm, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    for shape in shapes:
        cm(torch.randn(*shape, generator=g))


def _sparse(lib):
    """CSR, flat and two-level bitmask, 2:4 and other N:M, im2col convolutions."""
    batches = [(b,) for b in (1, 5, 7, 8, 16, 33, 64, 100)]
    # CSR: few-column walk, 16-64 lane tiles, several tiles, two row blocks, empty rows
    model = _linear(70, 45, 0.2)
    with torch.no_grad():
        model[0].weight[2:4] = 0
    cm = compile_model(model, "sparse", max_density=1.0, formats=("csr",), isa="scalar")
    _run(cm, [(b, 70) for (b,) in batches])
    # CSR across 255-column chunks, on 2 threads, no ReLU
    cm = compile_model(_linear(600, 40, 0.1, seed=1, relu=False), "sparse", max_density=1.0,
                       formats=("csr",), threads=2, isa="scalar")
    _run(cm, [(1, 600), (9, 600), (70, 600)])
    # bitmask formats: sparse, fully dense, empty, odd sizes
    for fmt in ("bitmask", "bitmask-2level"):
        for o, k, density, bs in [(37, 129, 0.1, (1, 2, 5, 8, 33, 64, 100)),
                                  (20, 100, 1.0, (1, 5, 17)), (10, 65, 0.0, (3, 16)),
                                  (130, 129, 0.6, (7, 40))]:
            cm = compile_model(_linear(k, o, density, seed=o + k), "sparse", max_density=1.0,
                               formats=(fmt,), nm=False, threads=2, isa="scalar")
            _run(cm, [(b, k) for b in bs])
        # bit walk over rows longer than the 4096-column pieces, dense 64-column blocks
        w = torch.randn(12, 4500) * (torch.rand(12, 4500) < 0.05)
        w[2, 4000:4200], w[3, :64], w[4] = 1.5, -0.5, 0.25
        cm = compile_model(_linear(4500, 12, weight=w, relu=False), "sparse", max_density=1.0,
                           formats=(fmt,), nm=False, isa="scalar")
        _run(cm, [(1, 4500), (3, 4500)])
    # 2:4 on its own kernel (bitmask below 8 columns), row tails of 1-3 rows
    for o, k in [(33, 256), (7, 68), (1, 4)]:
        g = torch.Generator().manual_seed(o * k)
        keep = torch.rand(o, k // 4, 4, generator=g).argsort(-1) < 2
        w = (torch.randn(o, k // 4, 4, generator=g) * keep).reshape(o, k)
        cm = compile_model(_linear(k, o, weight=w), "sparse", max_density=1.0,
                           formats=("bitmask",), isa="scalar")
        assert cm.report.kernels() == {"0": "nm-2:4"}
        _run(cm, [(b, k) for b in (1, 7, 8, 17, 64, 100)])
    # other N:M patterns as a flat bitmask
    for n, m in [(1, 4), (4, 8)]:
        p = PRUNERS["nm"](nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8)), n=n, m=m)
        cm = compile_model(p.model, "sparse", masks=p.masks, max_density=1.0, isa="scalar")
        _run(cm, [(1, 64), (13, 64), (64, 64)])
    # convolutions: im2col (stride, padding, dilation), 1x1 without im2col, BN + ReLU folded
    for i, geometry in enumerate([dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2),
                                  dict(kernel_size=(3, 5), padding=(2, 1), dilation=(1, 2)),
                                  dict(kernel_size=1), dict(kernel_size=1, stride=2)]):
        pruned = PRUNERS["magnitude"](_conv(5, 7, seed=i, **geometry), 0.7)
        cm = compile_model(pruned.model, "sparse", max_density=1.0, isa="scalar")
        _run(cm, [(3, 5, 11, 9), (1, 5, 11, 9)])
    for fmt in ("bitmask", "bitmask-2level"):  # 35 positions: tiles straddle two samples
        pruned = PRUNERS["magnitude"](_conv(6, 9, bn=False, kernel_size=3, padding=1), 0.8)
        cm = compile_model(pruned.model, "sparse", max_density=1.0, formats=(fmt,), threads=2,
                           isa="scalar")
        _run(cm, [(1, 6, 7, 5), (3, 6, 7, 5)])
    # a chain of Linear layers (one loop of kernel calls)
    chain = nn.Sequential(nn.Flatten(), _linear(90, 40, 0.2)[0], nn.ReLU(),
                          _linear(40, 7, 0.3)[0]).eval()
    cm = compile_model(chain, "sparse", max_density=1.0, isa="scalar")
    _run(cm, [(1, 3, 30), (9, 3, 30), (70, 3, 30)])


def _lowbit_int8(lib):
    """int8 activations, dynamic and static: packed 8/4/2/1-bit codes and row-major 8 bits."""
    torch.manual_seed(1)
    for out, method, bits, kw in [(64, "uniform", 8, {}), (64, "uniform", 8, {"symmetric": False}),
                                  (37, "uniform", 8, {}), (37, "uniform", 8, {"symmetric": False}),
                                  (37, "uniform", 4, {}), (37, "uniform", 4, {"symmetric": False}),
                                  (37, "uniform", 2, {"symmetric": False}), (37, "ternary", 2, {}),
                                  (37, "binary", 1, {})]:
        q = QUANTIZERS[method](_linear(83, out, seed=out + bits), bits, **kw)
        cm = compile_model(q.model, "lowbit-int8", quant=q.layers, threads=2, isa="scalar")
        _run(cm, [(1, 83), (6, 83), (19, 83)])
    # static (calibrated) activation scales, Linear and Conv2d (im2col rows)
    for bits in (8, 4):
        q = QUANTIZERS["uniform"](_linear(83, 40, seed=bits), bits, activations=True,
                                  data=_Data(torch.randn(64, 83)))
        cm = compile_model(q.model, "lowbit", quant=q.layers, isa="scalar")
        _run(cm, [(1, 83), (10, 83)])
        q = QUANTIZERS["uniform"](_conv(5, 7 if bits == 8 else 33, kernel_size=3, padding=1),
                                  bits, activations=True, data=_Data(torch.randn(64, 5, 11, 9)))
        cm = compile_model(q.model, "lowbit", quant=q.layers, isa="scalar")
        _run(cm, [(3, 5, 11, 9)])
    # dynamic int8 activations on a convolution with packed (not row-major) codes
    q = QUANTIZERS["uniform"](_conv(4, 64, bn=False, kernel_size=3, stride=2), 8)
    cm = compile_model(q.model, "lowbit-int8", quant=q.layers, isa="scalar")
    _run(cm, [(2, 4, 9, 9)])


def _weight_only(lib):
    """fp32 activations: packed 8/4/2/1-bit codes, row-major 8 bits, Rice-coded sparse codes."""
    torch.manual_seed(3)
    for out, method, bits, kw in [(64, "uniform", 8, {}), (37, "uniform", 8, {}),
                                  (37, "uniform", 8, {"symmetric": False}),
                                  (37, "uniform", 4, {}), (37, "uniform", 4, {"symmetric": False}),
                                  (37, "uniform", 2, {"symmetric": False}), (37, "ternary", 2, {}),
                                  (37, "binary", 1, {}),
                                  (37, "uniform", 4, {"granularity": "tensor"})]:
        q = QUANTIZERS[method](_linear(83, out, seed=out * bits), bits, **kw)
        cm = compile_model(q.model, "lowbit", quant=q.layers, isa="scalar")
        _run(cm, [(b, 83) for b in (1, 2, 5, 8, 19)])
    # a long fan-in (not a multiple of 8) on 2 threads: parallel row sums and products
    q = QUANTIZERS["uniform"](_linear(4101, 35, relu=False), 4, symmetric=False)
    cm = compile_model(q.model, "lowbit", quant=q.layers, threads=2, isa="scalar")
    _run(cm, [(3, 4101), (9, 4101)])
    # convolutions (im2col rows)
    for bits, out in [(8, 7), (8, 64), (4, 9)]:
        q = QUANTIZERS["uniform"](_conv(5, out, kernel_size=3, stride=2, padding=1), bits)
        cm = compile_model(q.model, "lowbit", quant=q.layers, isa="scalar")
        _run(cm, [(2, 5, 11, 9)])
    # pruned + quantized: Rice-coded gaps, gathers (<= 4 rows) and 16-row tiles, empty rows
    for sparsity in (0.5, 0.9, 0.99):
        for bits in (8, 4):
            model = _linear(700, 45, seed=int(sparsity * 100) + bits)
            with torch.no_grad():
                model[0].weight[3] = 0.0
            p = PRUNERS["magnitude"](model, sparsity)
            q = QUANTIZERS["uniform"](p.model, bits, masks=p.masks)
            cm = compile_model(q.model, "lowbit", quant=q.layers, threads=2, max_density=1.0,
                               isa="scalar")
            assert cm.report.kernels()["0"].endswith("sparse-fp32")
            _run(cm, [(b, 700) for b in (1, 4, 5, 16, 17, 40, 64)])


def _xnor(lib):
    """Fully binary layers on binarised activations (XNOR + popcount), Linear and Conv2d."""
    torch.manual_seed(2)
    for k, batch in [(64, 1), (130, 9), (1000, 20)]:
        q = QUANTIZERS["binary"](_linear(k, 21, relu=False), 1)
        cm = compile_model(q.model, "lowbit", quant=q.layers, binary_activations=True,
                           isa="scalar")
        assert cm.report.kernels() == {"0": "xnor-popcount"}
        _run(cm, [(batch, k)])
    q = QUANTIZERS["binary"](_conv(5, 11, kernel_size=3, padding=1), 1)
    cm = compile_model(q.model, "lowbit", quant=q.layers, binary_activations=True, isa="scalar")
    _run(cm, [(2, 5, 7, 6)])


def _direct(lib):
    """Functions no engine calls on its own: the split quantize + GEMM of the int8 path on
    each packed width (columns in rows and across samples, static and dynamic scales), and
    the size queries."""
    g = torch.Generator().manual_seed(7)
    for out, bits, method in [(64, 8, "uniform"), (37, 4, "uniform"), (37, 2, "uniform"),
                              (37, 1, "binary")]:
        q = QUANTIZERS[method](_linear(83, out, seed=bits), bits)
        cm = compile_model(q.model, "lowbit-int8", quant=q.layers, isa="scalar")
        (layer,) = [m for m in getattr(cm._run, "module", cm._run).modules()
                    if getattr(m, "kernel_function", "") == "wb_lowbit_forward"]
        k, kp = layer.in_features, layer.kp
        for b, ell, scale, zp in [(1, 1, 0.0, 0), (9, 1, 0.0, 0), (3, 5, 0.0, 0),
                                  (4, 1, 0.04, 128), (2, 3, 0.05, 7)]:
            x = torch.randn(b, k, ell, generator=g) * 2
            n = b * ell
            xq, sx = torch.empty(n * kp, dtype=torch.uint8), torch.empty(n)
            zx, xsum = torch.empty(n, dtype=torch.int32), torch.empty(n, dtype=torch.int32)
            lib.wb_quantize_columns(x.data_ptr(), xq.data_ptr(), sx.data_ptr(), zx.data_ptr(),
                                    xsum.data_ptr(), b, k, ell, kp, scale, zp, 1)
            y = torch.empty(b, out, ell)
            lib.wb_lowbit_gemm(layer.packed.data_ptr(), layer.bits, layer.sw.data_ptr(),
                               layer.zw.data_ptr(), layer.wsum.data_ptr(),
                               layer.bias.data_ptr(), xq.data_ptr(), sx.data_ptr(),
                               zx.data_ptr(), xsum.data_ptr(), y.data_ptr(), b, ell, out, k, kp,
                               int(b % 2), 1)
    for n in (1, 7, 8, 15, 16, 17, 32, 33, 48, 64, 65, 200):
        lib.wb_tile_width(n)
        lib.wb_work_floats(n, 70, 45)
        lib.wb_lowbit_work_bytes(n, 96)
        lib.wb_wq_rice_work(n, 700)
        for bits in (1, 2, 4, 8):
            lib.wb_wq_work(bits, n, 83)
    lib.wb_has_vnni()


def record_workload() -> kr.Recording:
    """Every kernel path, on small shapes, recorded on the host's scalar kernels."""
    torch.manual_seed(0)  # reproducible (the chain runner probes with torch.randn)
    with torch.no_grad(), kr.recording("scalar") as rec:
        lib = native.load_kernels("scalar")
        for part in (_sparse, _lowbit_int8, _weight_only, _xnor, _direct):
            part(lib)
    return rec


@pytest.fixture(scope="module")
def recorded():
    _need_tools()
    t0 = time.perf_counter()
    rec = record_workload()
    print(f"\nrecorded {len(rec.calls)} calls of {len(rec.functions())} functions in "
          f"{time.perf_counter() - t0:.1f} s ({sum(map(len, rec.blobs)) / 1e6:.1f} MB of blobs)")
    return rec


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    """``get(isa) -> (executable, Build)``, each ISA cross-built once per module."""
    _need_tools()
    root, built = tmp_path_factory.mktemp("aarch64"), {}

    def get(isa: str):
        if isa not in built:
            t0 = time.perf_counter()
            built[isa] = kr.build_driver(isa, root / isa)
            print(f"\nbuilt the aarch64 {isa} driver in {time.perf_counter() - t0:.1f} s")
        return built[isa]

    return get


def _replay(rec, calls, exe, workdir, name):
    path = workdir / f"{name}.calls"
    kr.write_calls(path, rec, OUTPUTS, calls)
    t0 = time.perf_counter()
    replay = kr.run_driver(exe, path, workdir / f"{name}.results", len(calls))
    return replay, time.perf_counter() - t0


def test_tables_cover_every_signature():
    """A function added to native.SIGNATURES must be added to OUTPUTS or QUERIES here."""
    assert set(OUTPUTS).isdisjoint(QUERIES)
    assert set(native.SIGNATURES) - set(kr.PROBES) == set(OUTPUTS) | set(QUERIES)
    for name, outs in OUTPUTS.items():
        argtypes = native.SIGNATURES[name][1]
        assert all(argtypes[i] is ctypes.c_void_p for i in outs), name


def test_workload_exercises_every_function(recorded):
    assert set(OUTPUTS) | set(QUERIES) <= recorded.functions()
    counts = {f: sum(c.name == f for c in recorded.calls) for f in OUTPUTS}
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("isa", ISAS)
def test_aarch64_kernels_match_the_host(isa, recorded, drivers, tmp_path):
    exe, made = drivers(isa)
    sources = {f.name for f in native.kernel_sources()}
    assert set(made.source_isa) == sources
    assert set(made.source_isa.values()) == {isa}, made.source_isa
    assert not made.notes, made.notes

    info = kr.probe(exe)
    assert info["isa"] == isa
    features = set(filter(None, info["features"].split(",")))
    required = isas.get_isa(isa, "aarch64").requires
    assert required <= features, f"qemu's CPU lacks {sorted(required - features)}"

    replay, seconds = _replay(recorded, recorded.calls, exe, tmp_path, isa)
    print(f"\nreplayed {len(replay.results)} of {len(recorded.calls)} calls on aarch64 {isa} "
          f"in {seconds:.1f} s")
    assert not replay.crashed, replay.crashed
    mismatches = kr.compare(recorded, recorded.calls, replay, OUTPUTS, QUERIES, RTOL)
    assert not mismatches, "\n".join(map(str, mismatches[:30]))
    ran = {recorded.calls[i].name for i, r in replay.results.items() if r.status == 0}
    assert set(OUTPUTS) | set(QUERIES) <= ran


def test_a_corrupted_input_is_reported(recorded, drivers, tmp_path):
    """The comparison can fail: the same call with its bias negated, and a query asked with
    another size, are reported; the untouched call is not."""
    exe, _ = drivers(ISAS[0])
    call = next(c for c in recorded.calls if c.name == "wb_csr_spmm" and c.args[4].kind == "ptr"
                and c.args[12].value == 0)  # no ReLU: every output moves with its bias
    negated = kr.with_input(recorded, call, 4, lambda b: (
        -np.frombuffer(b[:len(b) // 4 * 4], np.float32)).tobytes() + b[len(b) // 4 * 4:])
    query = next(c for c in recorded.calls if c.name == "wb_tile_width" and c.args[0].value == 1)
    wrong = dataclasses.replace(query, args=(kr.Arg("int", 64),))
    calls = [call, negated, query, wrong]
    replay, _ = _replay(recorded, calls, exe, tmp_path, "corrupted")
    found = kr.compare(recorded, calls, replay, OUTPUTS, QUERIES, RTOL)
    assert [m.index for m in found] == [1, 3], found
    assert "output argument 6" in found[0].detail and "returned 64" in found[1].detail


def test_a_pointer_outside_every_tensor_fails_loudly():
    rec = kr.Recording()
    lib = kr.RecordingLibrary(native.load_kernels("scalar"), rec)
    raw = (ctypes.c_float * 16)()
    with pytest.raises(LookupError, match=r"wb_binarize_columns: pointer argument 0 "):
        lib.wb_binarize_columns(ctypes.addressof(raw), 0, 0, 1, 16, 1, 1, 1)
    assert not rec.calls

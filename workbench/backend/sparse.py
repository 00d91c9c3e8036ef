"""The ``sparse`` engine: unstructured (CSR) and N:M sparse Linear/Conv2d on our C kernels.

Every Linear/Conv2d (BatchNorm folded, a following ReLU fused) is stored in the format that fits
its zero pattern: N:M when every group of ``m`` consecutive inputs keeps at most ``n`` weights
with ``n/m <= 1/2`` and that is smaller than CSR, else blocked CSR (values + one byte per
column index, see :func:`to_csr`). Conv2d runs as im2col (``torch.nn.functional.unfold``)
+ sparse GEMM. Layers denser than the break-even density run on torch (dense MKL is faster
there), so ``sparse`` is never slower than the dense model by design; with ``batch_dependent``
densities a layer keeps its dense weight too and picks per call by the number of columns.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.backend.base import CompiledModel, Report, Tolerance, register_engine
from workbench.backend.graph import NativeLayer, Site, Workspace, conv_geometry, rewrite
from workbench.backend.native import KernelUnavailable, load_kernels
from workbench.errors import ParameterError

# Break-even densities measured with benchmarks/backend.py on a 2-core AVX-512 machine: below
# SMALL_BATCH_DENSITY the kernels beat MKL at every batch size; up to LARGE_BATCH_DENSITY they
# win only from LARGE_BATCH columns (batch × output positions) on.
SMALL_BATCH_DENSITY = 0.3
LARGE_BATCH_DENSITY = 0.35
LARGE_BATCH = 16
# Layers with fewer weights than this stay on torch unless max_density is given: their work is
# too small for a sparse format to pay for the call and the im2col (LeNet on 8x8 digits).
MIN_WEIGHTS = 8192


def nm_pattern(weight2d: torch.Tensor, ms=(4, 8)) -> tuple[int, int] | None:
    """``(n, m)`` if every group of ``m`` consecutive inputs of each row has ≤ ``n`` nonzeros
    with ``n/m <= 1/2`` (the smallest such ``n`` and the first fitting ``m``), else ``None``.

    Examples
    --------
    >>> import torch
    >>> nm_pattern(torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 0]]))
    (2, 4)
    >>> nm_pattern(torch.tensor([[1.0, 2, 3, 0]])) is None
    True
    """
    out, k = weight2d.shape
    for m in ms:
        if k % m:
            continue
        n = int((weight2d.reshape(out, k // m, m) != 0).sum(-1).max())
        if 0 < n and 2 * n <= m:
            return n, m
    return None


CHUNK = 255  # columns per block of the blocked CSR: one-byte column offsets and row counts
ROWS = 32  # rows per entry of the block start table


def to_csr(weight2d: torch.Tensor):
    """Blocked CSR of the nonzeros: ``(start, counts, idx, values)``.

    The columns are cut into chunks of :data:`CHUNK`; the nonzeros are stored chunk by chunk,
    row by row, each column as one byte (its offset in the chunk). ``counts (nchunks, O)``
    uint8 holds each row's number of nonzeros in each chunk and ``start (nchunks, O/ROWS)``
    int32 where every block of :data:`ROWS` rows begins. About 5 bytes per nonzero plus one
    byte per (row, chunk); the kernel keeps one chunk of its input tile in L1.

    Examples
    --------
    >>> import torch
    >>> w = torch.zeros(2, 300)
    >>> w[0, 1], w[0, 299], w[1, 0] = 2.0, 3.0, 1.0
    >>> start, counts, idx, val = to_csr(w)
    >>> start.tolist(), counts.tolist(), idx.tolist(), val.tolist()
    ([[0], [2]], [[1, 1], [1, 0]], [1, 0, 44], [2.0, 1.0, 3.0])
    """
    out, k = weight2d.shape
    nchunks, nblocks = -(-k // CHUNK), -(-out // ROWS)
    rows, cols = (weight2d != 0).nonzero(as_tuple=True)
    block = cols // CHUNK
    order = torch.argsort(block * out + rows, stable=True)  # chunk-major, then row, then column
    rows, cols, block = rows[order], cols[order], block[order]
    values = weight2d[rows, cols].float().contiguous()
    counts = torch.bincount(block * out + rows, minlength=nchunks * out).reshape(nchunks, out)
    flat = torch.cat([torch.zeros(1, dtype=torch.int64), counts.reshape(-1).cumsum(0)])
    starts = flat[:-1].reshape(nchunks, out)[:, ::ROWS]
    idx = (cols - block * CHUNK).to(torch.uint8).contiguous()
    return (starts.to(torch.int32).contiguous(), counts.to(torch.uint8).contiguous(), idx,
            values)


def to_nm(weight2d: torch.Tensor, n: int, m: int):
    """``(values (O, K/m·n) float32, positions uint8)``: each group's ≤ n weights, padded with
    zero-valued entries at the group's first positions."""
    out, k = weight2d.shape
    g = weight2d.reshape(out, k // m, m)
    # order positions so the nonzeros come first (stable), keep the first n of each group
    key = (g == 0).to(torch.int8)
    pos = torch.argsort(key, dim=-1, stable=True)[..., :n]
    vals = torch.gather(g, -1, pos)
    return vals.reshape(out, -1).contiguous().float(), pos.to(torch.uint8).reshape(out, -1).contiguous()


def to_nm24(weight2d: torch.Tensor):
    """2:4 weights (≤ 2 nonzeros per group of 4 inputs) in the output-vectorised layout of
    ``wb_nm24_gemm``: ``values [O/16][K/4][2][16]`` float32 and ``positions [O/16][K/4][16]``
    uint8 (first position in bits 0-1, second in bits 2-3); outputs padded to 16."""
    out, k = weight2d.shape
    vals, pos = to_nm(weight2d, 2, 4)  # (O, K/2)
    ob = -(-out // 16)
    v = torch.zeros(ob * 16, k // 2)
    p = torch.zeros(ob * 16, k // 2, dtype=torch.uint8)
    v[:out], p[:out] = vals, pos
    v = v.reshape(ob, 16, k // 4, 2).permute(0, 2, 3, 1).contiguous()
    p = p.reshape(ob, 16, k // 4, 2).permute(0, 2, 1, 3)
    packed = (p[..., 0] | (p[..., 1] << 2)).contiguous()
    return v.reshape(-1), packed.reshape(-1)


class SparseLayer(NativeLayer):
    """A Linear/Conv2d run by the CSR or N:M kernel (optionally dense below ``min_columns``)."""

    def __init__(self, site: Site, lib, fmt: str, threads: int | None, min_columns: int = 1):
        super().__init__(site.layer, threads)
        w, b, _ = site.folded()
        w2 = w.reshape(w.shape[0], -1)
        self.lib, self.fmt, self.relu = lib, fmt, int(site.relu)
        self.bias = b
        self.min_columns = min_columns
        self.dense = (w2.clone(), b) if min_columns > 1 else None
        self.work = Workspace()
        if fmt == "csr":
            self.start, self.counts, self.idx, self.values = to_csr(w2)
            self.bytes = 5 * self.values.numel() + self.counts.numel() + 4 * self.start.numel()
        elif fmt == "2:4":
            self.rows_layout = True  # vectorised over outputs: (B·L, K) rows in, (B·L, O) out
            self.values, self.pos = to_nm24(w2)
            self.bytes = 4 * self.nnz_slots(w2) + self.pos.numel()
        else:
            n, m = map(int, fmt.split(":"))
            self.nm = (n, m)
            self.values, self.pos = to_nm(w2, n, m)
            self.bytes = 4 * self.values.numel() + self.pos.numel()
        self.nnz = int((w2 != 0).sum())

    def _kernel(self, x, y, B, K, L):
        if self.dense is not None and B * L < self.min_columns:
            w, b = self.dense
            if L == 1:
                out = torch.addmm(b, x, w.t())
            else:  # (B, K, L) columns
                out = torch.matmul(w, x) + b[:, None]
            if self.relu:
                out.clamp_(min=0)
            y.view_as(out).copy_(out)
            return
        if self.fmt == "2:4":  # x is (B·L, K) rows; the kernel writes (B·L, O)
            out = y if L == 1 else torch.empty(B * L, self.out_features)
            self.lib.wb_nm24_gemm(self.values.data_ptr(), self.pos.data_ptr(),
                                  self.bias.data_ptr(), x.data_ptr(), out.data_ptr(), B * L, K,
                                  self.out_features, self.relu, self.nthreads())
            if L > 1:
                y.view(B, self.out_features, L).copy_(out.view(B, L, -1).transpose(1, 2))
            return
        work = self.work.get(self.lib.wb_work_floats(B * L, K, self.out_features))
        if self.fmt == "csr":
            self.lib.wb_csr_spmm(self.start.data_ptr(), self.counts.data_ptr(),
                                 self.idx.data_ptr(), self.values.data_ptr(), self.bias.data_ptr(), x.data_ptr(),
                                 y.data_ptr(), work.data_ptr(), B, K, L, self.out_features,
                                 self.relu, self.nthreads())
        else:
            n, m = self.nm
            self.lib.wb_nm_spmm(self.values.data_ptr(), self.pos.data_ptr(), n, m,
                                self.bias.data_ptr(), x.data_ptr(), y.data_ptr(),
                                work.data_ptr(), B, K, L, self.out_features, self.relu,
                                self.nthreads())

    @staticmethod
    def nnz_slots(w2: torch.Tensor) -> int:
        return w2.numel() // 2

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.fmt}, nnz={self.nnz}"


def _torch_bytes(site: Site) -> int:
    return 4 * site.layer.weight.numel()


@register_engine("sparse", description="our CSR / N:M sparse kernels (C, OpenMP); dense layers "
                 "stay on torch", tolerance=Tolerance(atol=1e-5, rtol=1e-4))
def compile_sparse(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                   max_density: float | None = None, nm: bool = True) -> CompiledModel:
    """Compile ``model`` for the sparse kernels.

    Parameters
    ----------
    max_density : float, optional
        Run a layer on the sparse kernels if its density (nonzero fraction, after BN folding)
        is at most this; default: :data:`SMALL_BATCH_DENSITY` for every batch and up to
        :data:`LARGE_BATCH_DENSITY` from :data:`LARGE_BATCH` columns on. ``1.0`` forces every
        supported layer onto the kernels (used by the tests).
    nm : bool
        Use the N:M format where the pattern fits.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    >>> cm = compile_sparse(lin, max_density=1.0)
    >>> cm.report.kernels()
    {'0': 'csr'}
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(cm(x), lin(x), atol=1e-5))
    True
    """
    if max_density is not None and not 0.0 <= float(max_density) <= 1.0:
        raise ParameterError(f"max_density must lie in [0, 1], got {max_density!r}")
    report = Report("sparse")
    try:
        lib = load_kernels()
    except KernelUnavailable as err:
        report.notes.append(f"compiled kernels unavailable, every layer runs on torch: {err}")
        lib = None
    total = {"bytes": 0}

    def make(site: Site):
        layer = site.layer
        if lib is None:
            total["bytes"] += _torch_bytes(site)
            return None, "torch", "no compiled kernels"
        if isinstance(layer, nn.Conv2d) and conv_geometry(layer):
            total["bytes"] += _torch_bytes(site)
            return None, "torch", f"unsupported: {conv_geometry(layer)}"
        w, _, _ = site.folded()
        w2 = w.reshape(w.shape[0], -1)
        density = float((w2 != 0).float().mean())
        min_columns = 1
        if max_density is not None:
            if density > max_density:
                total["bytes"] += _torch_bytes(site)
                return None, "torch", f"density {density:.2f} > max_density {max_density:.2f}"
        elif w2.numel() < MIN_WEIGHTS:
            total["bytes"] += _torch_bytes(site)
            return None, "torch", (f"{w2.numel()} weights: too small for the sparse kernels to "
                                   "pay off")
        elif density > LARGE_BATCH_DENSITY:
            total["bytes"] += _torch_bytes(site)
            return None, "torch", (f"density {density:.2f} above the break-even "
                                   f"{LARGE_BATCH_DENSITY:.2f}: dense is faster")
        elif density > SMALL_BATCH_DENSITY:
            min_columns = LARGE_BATCH
        pattern = nm_pattern(w2) if nm else None
        fmt = "csr"
        if pattern is not None:  # N:M only where it is the smaller format
            nnz, (n, m) = int((w2 != 0).sum()), pattern
            csr_bytes = nnz * 5 + len(w2) * -(-w2.shape[1] // CHUNK)
            if m == 4 and n <= 2:
                n = 2  # the 2:4 kernel also runs 1:4 (zero second weights)
            if w2.numel() // m * n * 5 <= csr_bytes:
                fmt = f"{n}:{m}"
        module = SparseLayer(site, lib, fmt, threads, min_columns)
        total["bytes"] += module.bytes
        note = f"density {density:.3f}" + (f", dense below {min_columns} columns"
                                           if min_columns > 1 else "")
        return module, fmt if fmt == "csr" else f"nm-{fmt}", note

    compiled, layers = rewrite(model, make)
    report.layers = layers
    return CompiledModel(compiled, report, threads, total["bytes"])

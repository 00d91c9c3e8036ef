"""The ``sparse`` engine: unstructured and N:M sparse Linear/Conv2d on our C kernels.

Every Linear/Conv2d (BatchNorm folded, a following ReLU fused) is stored in the format that fits
its zero pattern (the report says which and why): N:M patterns (every group of ``m`` inputs
keeps at most ``n <= m/2``) as a flat bitmask, 2:4 on its own kernel (``csrc/nm24.c``, from 8
columns on); any other pattern in the smallest of
blocked CSR (values + one byte per column index, :func:`to_csr`), the flat bitmask (1 bit per
weight, best above ~28 % density) and the two-level bitmask (4-bit masks of the non-empty
groups of 4 columns only, best from ~5 % to ~28 %), see :func:`format_bytes`; CSR, the fastest
to walk, also wherever it is within :data:`CSR_MARGIN` of the smallest. With few columns
the kernels walk the nonzeros of each row; from 8 columns on the columns sit in the SIMD lanes
(``csrc/lanes.h``). Conv2d runs as im2col + the same kernels. Layers denser than the measured
break-even run on torch, so ``sparse`` is never slower than dense by design; between
:data:`SMALL_BATCH_DENSITY` and :data:`LARGE_BATCH_DENSITY` a layer keeps its dense weight too
and picks per call by the number of columns.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.backend import native
from workbench.backend.base import CompiledModel, Report, Tolerance, register_engine
from workbench.backend.chain import chain_runner
from workbench.backend.graph import NativeLayer, Site, Workspace, conv_geometry, rewrite
from workbench.errors import ParameterError

# Break-even densities measured with benchmarks/backend.py on a 2-core AVX-512 machine: below
# SMALL_BATCH_DENSITY the kernels beat MKL at every batch size; up to LARGE_BATCH_DENSITY they
# win only from LARGE_BATCH columns (batch × output positions) on.
SMALL_BATCH_DENSITY = 0.4
LARGE_BATCH_DENSITY = 0.45
LARGE_BATCH = 32
# Layers with fewer weights than this stay on torch unless max_density is given: their work is
# too small for a sparse format to pay for the call and the im2col (LeNet on 8x8 digits). At
# 8192, LeNet's 120->84 layer (10,080 weights) ran sparse and made the whole model 2-6 % slower
# than torch eager at batch 1: ~1 µs of work saved against a call path that, unlike torch's
# Linear warmed by the layer before it, is cold in the caches (measured 32 vs 13 µs).
MIN_WEIGHTS = 16384


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


# CSR needs no mask decoding: at 95 % on a 1024² layer it stores 0.3 % more than the two-level
# bitmask and runs 1.5x faster at batch 64
CSR_MARGIN = 1.02
CHUNK = 255  # columns per block of the blocked CSR: one-byte column offsets and row counts
ROWS = 32  # rows per entry of the block start table
BLOCK = 64  # columns per mask of the bitmask formats
FORMATS = ("csr", "bitmask", "bitmask-2level")


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


def to_bitmask(weight2d: torch.Tensor, two_level: bool = False) -> dict:
    """Bitmask format of ``wb_bitmask_spmm``: per row and block of 64 columns the mask of its
    nonzeros, plus the nonzero values packed row by row, unpadded (``rowptr`` int32: where
    every block of :data:`ROWS` rows begins, then the number of nonzeros; the kernels find a
    row's own start from the popcounts of the rows before it).

    Flat (``two_level=False``): ``masks`` int64 ``(O, nblocks)``, one bit per weight.
    Two-level: ``masks`` int16 ``(O, nblocks)`` marks the non-empty groups of 4 columns and
    ``nibbles`` (uint8, two per byte, low first, 9 bytes of read-ahead padding; ``nptr``
    int32 as ``rowptr``, in nibbles) holds the 4-bit masks of those groups only.

    Examples
    --------
    >>> import torch
    >>> w = torch.zeros(2, 70)
    >>> w[0, 1], w[0, 66], w[1, 5] = 2.0, 3.0, 1.0
    >>> f = to_bitmask(w)
    >>> f["masks"].tolist(), f["rowptr"].tolist(), f["values"].tolist()
    ([[2, 4], [32, 0]], [0, 3], [2.0, 3.0, 1.0])
    >>> t = to_bitmask(w, two_level=True)
    >>> t["masks"].tolist(), t["nibbles"][:2].tolist(), t["nptr"].tolist()
    ([[1, 1], [2, 0]], [66, 2], [0, 3])
    """
    out, k = weight2d.shape
    nb = -(-k // BLOCK)
    nz = torch.zeros(out, nb * BLOCK, dtype=torch.bool)
    nz[:, :k] = weight2d != 0
    values = weight2d[weight2d != 0].float().contiguous()  # row-major: row, then column
    fmt = {"values": values, "rowptr": _block_starts(nz.sum(1))}
    if not two_level:
        bits = nz.reshape(out, nb, BLOCK).to(torch.int64) << torch.arange(BLOCK)
        fmt["masks"] = bits.sum(-1).contiguous()  # distinct powers of two: the sum is the OR
        return fmt
    groups = nz.reshape(out, nb, BLOCK // 4, 4)
    nibble = (groups.to(torch.int64) << torch.arange(4)).sum(-1)  # (O, nb, 16) in 0..15
    used = groups.any(-1)
    gmask = (used.to(torch.int64) << torch.arange(BLOCK // 4)).sum(-1)
    fmt["masks"] = torch.from_numpy(gmask.numpy().astype("uint16").view("int16")).contiguous()
    seq = nibble[used].to(torch.uint8)  # row, block, group order
    if len(seq) % 2:
        seq = torch.cat([seq, torch.zeros(1, dtype=torch.uint8)])
    packed = seq[0::2] | (seq[1::2] << 4)
    fmt["nibbles"] = torch.cat([packed, torch.zeros(9, dtype=torch.uint8)]).contiguous()
    fmt["nptr"] = _block_starts(used.sum((1, 2)))
    return fmt


def _block_starts(per_row: torch.Tensor) -> torch.Tensor:
    """int32 offsets where every block of :data:`ROWS` rows begins, then the total."""
    ends = per_row.to(torch.int64).cumsum(0)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), ends])[:-1][::ROWS]
    return torch.cat([starts, ends[-1:]]).to(torch.int32).contiguous()


def to_nm24(weight2d: torch.Tensor) -> dict:
    """2:4 layout of ``wb_nm24_spmm`` (``csrc/nm24.c``): per block of 4 rows (the last one
    ``O % 4`` rows), per group of 4 columns, per row its two kept values (``values`` float32)
    and their positions in the group (``pos`` uint8, 0..3); a group with fewer than two
    nonzeros is padded with zero values.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[0.0, 1, 0, 2], [3, 0, 0, 0]])
    >>> f = to_nm24(w)
    >>> f["values"].tolist(), f["pos"].tolist()
    ([1.0, 2.0, 3.0, 0.0], [1, 3, 0, 1])
    """
    out, k = weight2d.shape
    g = weight2d.float().reshape(out, k // 4, 4)
    # stable sort of "is zero" puts the kept positions first, in column order
    pos = torch.argsort((g == 0).to(torch.int8), dim=-1, stable=True)[..., :2]
    vals = torch.gather(g, -1, pos)
    vs, ps = [], []
    for o0 in range(0, out, 4):  # (rows, groups, 2) -> (groups, rows, 2) per block
        vs.append(vals[o0:o0 + 4].transpose(0, 1).reshape(-1))
        ps.append(pos[o0:o0 + 4].transpose(0, 1).reshape(-1))
    return {"values": torch.cat(vs).contiguous(),
            "pos": torch.cat(ps).to(torch.uint8).contiguous()}


def format_bytes(weight2d: torch.Tensor) -> dict[str, int]:
    """Bytes of each unstructured format for this weight (what :class:`SparseLayer` stores).

    ``csr``: 4 + 1 bytes per nonzero, one count byte per (row, 255-column chunk) and an int32
    per (chunk, 32-row block); ``bitmask``: 4 bytes per nonzero + 1 bit per weight (64-column
    blocks) + an int32 per 32-row block; ``bitmask-2level``: 4 bytes per nonzero + 16 bits per
    (row, 64-column block) + 4 bits per non-empty group of 4 columns (+ 9 bytes of read-ahead)
    + two int32 per 32-row block.
    """
    out, k = weight2d.shape
    nz = weight2d != 0
    nnz = int(nz.sum())
    nb = -(-k // BLOCK)
    padded = torch.zeros(out, nb * BLOCK, dtype=torch.bool)
    padded[:, :k] = nz
    used = int(padded.reshape(out, nb, BLOCK // 4, 4).any(-1).sum())
    chunks, blocks = -(-k // CHUNK), -(-out // ROWS)
    return {"csr": 5 * nnz + chunks * out + 4 * chunks * blocks,
            "bitmask": 4 * nnz + 8 * out * nb + 4 * (blocks + 1),
            "bitmask-2level": 4 * nnz + 2 * out * nb + -(-used // 2) + 9 + 8 * (blocks + 1)}


def work_floats(n: int, k: int, tiled: bool = False) -> int:
    """Floats of packed input tiles the kernels need for ``n`` columns of ``k`` rows (as
    ``wb_work_floats``: tiles of 16-64 columns; none below 8 columns, which are read in place,
    unless ``tiled``: the 2:4 kernel packs every batch)."""
    if n < 8 and not tiled:
        return 1
    bt = 16 * min(4, -(-n // 16))
    return -(-n // bt) * bt * k


class SparseLayer(NativeLayer):
    """A Linear/Conv2d run by the CSR or bitmask kernels (optionally dense below
    ``min_columns``); ``fmt`` is ``"csr"``, ``"bitmask"``, ``"bitmask-2level"`` or an N:M
    pattern such as ``"2:4"`` (stored as a flat bitmask)."""

    def __init__(self, site: Site, lib, fmt: str, threads: int | None, min_columns: int = 1):
        super().__init__(site.layer, threads)
        w, b, _ = site.folded()
        w2 = w.reshape(w.shape[0], -1)
        self.lib, self.fmt, self.relu = lib, fmt, int(site.relu)
        self.bias = b
        self.min_columns = min_columns
        self.dense = (w2.clone(), b) if min_columns > 1 else None
        self.tiled, self.few = False, None
        self.work = Workspace()
        self.nnz = int((w2 != 0).sum())
        dense_bytes = 0 if self.dense is None else 4 * w2.numel()  # kept for small batches
        if fmt == "csr":
            self.start, self.counts, self.idx, self.values = to_csr(w2)
            self.bytes = (5 * self.values.numel() + self.counts.numel() + 4 * self.start.numel()
                          + dense_bytes)
            self.operands = (self.start, self.counts, self.idx, self.values, self.bias)
            self.call = lib.wb_csr_spmm
            self.kernel_function = "wb_csr_spmm"
        elif fmt == "2:4":
            # below 8 columns the flat bitmask's VEXPANDPS path is faster (1/16 of the lanes
            # would be used here: measured 416 vs 231 µs at batch 1), so both are kept
            self.packed, f = to_nm24(w2), to_bitmask(w2)
            self.bytes = sum(t.numel() * t.element_size()
                             for t in (*self.packed.values(), *f.values())) + dense_bytes
            self.operands = (self.packed["values"], self.packed["pos"], self.bias)
            self.call, self.tiled = lib.wb_nm24_spmm, True
            self.kernel_function = "wb_nm24_spmm"
            self.few = (lib.wb_bitmask_spmm, (0, f["masks"], None, None, f["rowptr"],
                                              f["values"], self.bias))
        else:
            two_level = fmt == "bitmask-2level"
            self.packed = to_bitmask(w2, two_level)
            self.bytes = sum(t.numel() * t.element_size() for t in self.packed.values()) \
                + dense_bytes
            f = self.packed
            self.operands = (int(two_level), f["masks"], f.get("nibbles"), f.get("nptr"),
                             f["rowptr"], f["values"], self.bias)
            self.call = lib.wb_bitmask_spmm
            self.kernel_function = "wb_bitmask_spmm"
        self._bound = {False: (self.call, _pointers(self.operands), self.tiled)}
        if self.few is not None:
            self._bound[True] = (self.few[0], _pointers(self.few[1]), False)

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
        call, weights, tiled = self.bound(B * L)
        work = self.work.get(work_floats(B * L, K, tiled))
        call(*weights, x.data_ptr(), y.data_ptr(), work.data_ptr(), B, K, L, self.out_features,
             self.relu, self.nthreads())

    def bound(self, columns: int) -> tuple:
        """``(kernel, weight pointers, tiled)`` for a call on ``columns`` columns (taken once
        at construction: at batch 1 a small layer's kernel takes ~1 µs and collecting the
        pointers per call another)."""
        return self._bound[self.few is not None and columns < 8]

    @property
    def chainable(self) -> bool:
        return self.conv is None and self.dense is None

    def run_linear(self, x, y):
        """The kernel on a contiguous ``(B, K)`` batch into ``y`` (see ``chain.py``)."""
        b, k = x.shape
        call, weights, tiled = self.bound(b)
        work = self.work.get(work_floats(b, k, tiled))
        call(*weights, x.data_ptr(), y.data_ptr(), work.data_ptr(), b, k, 1, self.out_features,
             self.relu, self.nthreads())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.fmt}, nnz={self.nnz}"


def _pointers(operands) -> tuple:
    return tuple(t.data_ptr() if isinstance(t, torch.Tensor) else t for t in operands)


def _torch_bytes(site: Site) -> int:
    return 4 * site.layer.weight.numel()


@register_engine("sparse", description="our CSR / N:M sparse kernels (C, OpenMP); dense layers "
                 "stay on torch", tolerance=Tolerance(atol=1e-5, rtol=1e-4))
def compile_sparse(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                   max_density: float | None = None, nm: bool = True,
                   formats=FORMATS, isa: str | None = None) -> CompiledModel:
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
    formats : sequence of str
        The unstructured formats to choose from (a subset of :data:`FORMATS`); each layer gets
        the one that stores it in the fewest bytes (see :func:`format_bytes`).
    isa : str, optional
        The kernels' instruction set (``"avx512"``, ``"avx2"``, ``"neon"``, ``"scalar"``);
        default ``$WORKBENCH_ISA``, else the best one this CPU runs.

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
    formats = tuple(formats) if not isinstance(formats, str) else (formats,)
    if not formats or any(f not in FORMATS for f in formats):
        raise ParameterError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
    report = Report("sparse")
    lib = native.kernels_or_none(report, isa)
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
        sizes = format_bytes(w2)
        smallest = min(formats, key=sizes.__getitem__)
        fastest_fits = "csr" in formats and sizes["csr"] <= CSR_MARGIN * sizes[smallest]
        pattern = nm_pattern(w2) if nm else None
        if pattern is not None and sizes["bitmask"] > sizes[smallest]:
            pattern = None  # so sparse that it fits N:M by chance: an unstructured format
        if max_density is not None:
            if density > max_density:
                total["bytes"] += _torch_bytes(site)
                return None, "torch", f"density {density:.2f} > max_density {max_density:.2f}"
        elif w2.numel() < MIN_WEIGHTS:
            total["bytes"] += _torch_bytes(site)
            return None, "torch", (f"{w2.numel()} weights: too small for the sparse kernels to "
                                   "pay off")
        elif pattern is not None:
            pass  # N:M (at most 1/2 dense) beats dense at every batch size
        elif density > LARGE_BATCH_DENSITY:
            total["bytes"] += _torch_bytes(site)
            return None, "torch", (f"density {density:.2f} above the break-even "
                                   f"{LARGE_BATCH_DENSITY:.2f}: dense is faster")
        elif density > SMALL_BATCH_DENSITY:
            min_columns = LARGE_BATCH
        if pattern is not None:  # N:M runs as a flat bitmask: 1 bit per weight + values
            fmt = f"{pattern[0]}:{pattern[1]}"
            why = f"{fmt} pattern, stored as a bitmask"
            if fmt == "2:4":
                why = ("2:4 pattern on the 2:4 kernel (2 values + 2 byte positions per group "
                       "of 4 columns, 4 rows share each input load; measured 1.6x the bitmask "
                       "walk at batch 64), below 8 columns as a bitmask")
        else:
            fmt = "csr" if fastest_fits else smallest
            why = ("smallest of " if fmt == smallest else
                   f"fastest to walk, within {CSR_MARGIN - 1:.0%} of the smallest of ") \
                + ", ".join(f"{f} {sizes[f]} B" for f in formats)
        module = SparseLayer(site, lib, fmt, threads, min_columns)
        total["bytes"] += module.bytes
        note = f"density {density:.3f}, {why}" + (f", dense below {min_columns} columns"
                                                  if min_columns > 1 else "")
        return module, f"nm-{fmt}" if pattern is not None else fmt, note

    compiled, layers = rewrite(model, make)
    report.layers = layers
    fast = chain_runner(compiled) if lib is not None else None
    if fast is not None:
        report.notes.append("a chain of Linear layers: one loop of kernel calls, no modules")
    return CompiledModel(fast or compiled, report, threads, total["bytes"])

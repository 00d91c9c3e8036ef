"""Weight-only low-bit layers: packed integer weights, fp32 activations (``csrc/weightonly.c``).

The codes of a quantized layer are stored packed (8, 4, 2 or 1 bits per weight, per-channel
scale and zero point, BatchNorm folded into the scale) and de-quantized on the fly inside the
kernel; the activations stay fp32, so the layer computes the variant's own fake-quantized layer
up to fp32 summation order (max|Δlogit| ~1e-6 relative). A layer that is also pruned can store
only its surviving codes (:func:`to_rice_codes`): 8- or 4-bit signed values and Rice-coded column
gaps, 1.00-1.03x the information-theoretic size at 50-95 % random sparsity on a 1024² layer,
against 1.3-2.0x for the one-byte chunk-local column indices it replaced. Measured on the 2-core
development machine (1024², 1 thread, interleaved medians), its kernel takes 0.7-1.2x the time of
the one-byte-index kernel at batch 64 and 1.2-2.0x at batch 1 (the decoding is serial per row).
8-bit codes of a layer with few outputs, which blocks of 32 outputs would pad by more than
:data:`ROW_PADDING`, are stored row-major instead (``csrc/rows.c``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from workbench.backend.graph import NativeLayer, Site, Workspace
from workbench.errors import ParameterError


def weight_only_codes(d: torch.Tensor, zw: torch.Tensor, scale: torch.Tensor, bits: int):
    """``(fields, zero point, scale)`` for the kernel: two's complement fields of ``bits``
    bits with ``value = (field - zw) * scale``. Binary codes ``±1`` become the field
    ``-(d < 0)`` with zero point ``-1/2`` and twice the scale (``(2·field + 1)·scale``)."""
    zw, scale = zw.float(), scale.float()
    if bits == 1:
        return -(d < 0).to(torch.int32), torch.full_like(zw, -0.5), 2 * scale
    return d, zw, scale


def pack_weight_only(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed fields ``(O, K)`` into the ``wb_wq_gemm`` layout (see ``csrc/weightonly.c``).

    Examples
    --------
    >>> import torch
    >>> packed = pack_weight_only(torch.tensor([[1, -2, 1, -1]], dtype=torch.int32), 2)
    >>> packed.numel()  # 32 outputs x 1 load (of 4 inputs) x 1 byte
    32
    >>> bin(int(packed[0]))  # input 1 in bits 0-1, input 2 in bits 2-3, ...
    '0b11011001'
    """
    o, k = fields.shape
    if bits == 4:
        return _pack_int4(fields)
    G = 8 // bits
    op, nl = math.ceil(o / 32) * 32, math.ceil(k / G)
    full = np.zeros((op, nl * G), dtype=np.int64)
    full[:o, :k] = fields.numpy()
    full &= (1 << bits) - 1  # two's complement field
    v = full.reshape(op // 32, 2, 16, nl, G).transpose(0, 3, 1, 2, 4)  # [block][load][half][j][g]
    byte = (v << (np.arange(G) * bits)).sum(-1).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(byte).reshape(-1)).clone()


def _pack_int4(fields: torch.Tensor) -> torch.Tensor:
    """The 4-bit layout of ``wb_wq_gemm``: outputs in blocks of 16, inputs in groups of 8, per
    (block, group) 16 little-endian uint32 (one per output) holding in bits ``[4g, 4g+4)`` the
    offset-binary field ``d + 8`` of input ``8·group + g``; padding fields are 0.

    Examples
    --------
    >>> import torch
    >>> packed = _pack_int4(torch.tensor([[1, -2, 3]], dtype=torch.int32))
    >>> packed.numel()  # 16 outputs x 1 group (of 8 inputs) x 4 bytes
    64
    >>> [hex(b) for b in packed[:4].tolist()]  # fields 9, 6, 11 (d + 8), then padding
    ['0x69', '0xb', '0x0', '0x0']
    """
    o, k = fields.shape
    op, kp = math.ceil(o / 16) * 16, math.ceil(k / 8) * 8
    full = np.zeros((op, kp), dtype=np.int64)
    full[:o, :k] = (fields.numpy().astype(np.int64) & 15) ^ 8  # two's complement -> offset
    v = full.reshape(op // 16, 16, kp // 8, 8).transpose(0, 2, 1, 3)  # [block][group][j][g]
    word = (v << (4 * np.arange(8))).sum(-1).astype("<u4")
    return torch.from_numpy(np.ascontiguousarray(word).view(np.uint8).reshape(-1)).clone()


# Share of padding beyond which 8-bit codes are stored row-major (csrc/rows.c) instead of in
# the packed layouts' blocks of 32 outputs: layers of 6-120 outputs (LeNet-5) padded to 32 cost
# 30-50 % more bytes than their codes.
ROW_PADDING = 0.05


def rows_pay(out: int, block: int = 32) -> bool:
    """Whether blocks of ``block`` outputs would pad ``out`` outputs by more than
    :data:`ROW_PADDING`, so that row-major 8-bit codes are the smaller layout.

    Examples
    --------
    >>> rows_pay(6), rows_pay(120), rows_pay(1000), rows_pay(1024)
    (True, True, False, False)
    """
    return math.ceil(out / block) * block > (1 + ROW_PADDING) * out


RICE_ROWS = 16  # rows per block of the Rice format (3 uint32 of offsets each)
RICE_MAX_K = 12  # largest Rice parameter tried for the gaps


class RiceCodes(NamedTuple):
    """A sparse signed-code matrix as Rice-coded column gaps (layout: ``csrc/rice.c``)."""

    counts: torch.Tensor  # uint8 bit stream: each row's number of codes, Rice(kc)
    unary: torch.Tensor   # uint8 bit stream: per code, (gap >> k) zeros then a one
    lows: torch.Tensor    # uint8 bit stream: per code, the k low bits of its gap
    blocks: torch.Tensor  # int32 (RICE_ROWS-row blocks, 3): counts bit, unary bit, first code
    values: torch.Tensor  # uint8: int8 codes, or int4 two per byte (low nibble first)
    bits: int             # 8 or 4
    k: int                # Rice parameter of the gaps
    kc: int               # Rice parameter of the row counts
    nnz: int


def _rice_k(symbols: np.ndarray, kmax: int) -> int:
    """The Rice parameter in ``0..kmax`` with the fewest bits for ``symbols``."""
    cost = [int((symbols >> k).sum()) + len(symbols) * (k + 1) for k in range(kmax + 1)]
    return int(np.argmin(cost))


def _bit_stream(ones: np.ndarray, nbits: int) -> torch.Tensor:
    """Little-endian bytes of ``nbits`` bits with ``ones`` set, in whole 8-byte words plus 8
    bytes of padding (the kernel reads 8 bytes at a time)."""
    bitarr = np.zeros(math.ceil(nbits / 64) * 64 + 64, dtype=np.uint8)
    bitarr[ones] = 1
    return torch.from_numpy(np.packbits(bitarr, bitorder="little"))


def _low_bits(symbols: np.ndarray, k: int, start: np.ndarray) -> np.ndarray:
    """Positions of the one bits when the k low bits of each symbol go at ``start``."""
    return np.concatenate([start[(symbols >> b) & 1 == 1] + b for b in range(k)]
                          + [np.zeros(0, dtype=np.int64)])


def to_rice_codes(values: torch.Tensor) -> RiceCodes:
    """The nonzero signed codes ``values (O, K)`` (``code - zero point``) as Rice-coded gaps.

    Per row, the gaps ``c_i - c_{i-1} - 1`` (``c_{-1} = -1``) between the stored columns are
    Rice(``k``) coded, their low bits and unary quotients in two streams, the row's count
    Rice(``kc``) coded in a third; ``k`` and ``kc`` minimise the size over ``0..12`` and
    ``0..20``. Codes are 4-bit (two per byte, low nibble first) when every value lies in
    ``[-8, 7]``, else 8-bit.

    Examples
    --------
    >>> import torch
    >>> v = torch.zeros(2, 300, dtype=torch.int32)
    >>> v[0, 1], v[0, 299], v[1, 0] = 3, -2, 1
    >>> r = to_rice_codes(v)
    >>> r.bits, r.k, r.kc, r.nnz, r.blocks.tolist()  # gaps 1, 297, 0 and counts 2, 1
    (4, 6, 0, 3, [[0, 0, 0]])
    >>> bin(int(r.unary[0]))  # quotients 0, 4, 0: one bits at 0, 5, 6
    '0b1100001'
    >>> [hex(b) for b in r.values.tolist()]  # codes 3, -2 (0xe), 1
    ['0xe3', '0x1']
    """
    o, k = values.shape
    v = values.numpy()
    rows, cols = np.nonzero(v)  # row-major: sorted by row, then column
    vals = v[rows, cols].astype(np.int64)
    lo, hi = (int(vals.min()), int(vals.max())) if len(vals) else (0, 0)
    if lo < -128 or hi > 127:
        raise ParameterError(f"codes minus zero point span [{lo}, {hi}]: no 8-bit sparse form")
    bits = 4 if -8 <= lo and hi <= 7 else 8
    nnz = len(cols)
    counts = np.bincount(rows, minlength=o).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # per row
    prev = np.concatenate([[-1], cols[:-1]]).astype(np.int64)
    prev[first[counts > 0]] = -1
    gaps = cols.astype(np.int64) - prev - 1
    kg, kc = _rice_k(gaps, RICE_MAX_K), _rice_k(counts, 20)
    # gaps: one bits of the unary stream, low bits at i*k
    ones = np.cumsum((gaps >> kg) + 1) - 1
    unary = _bit_stream(ones, int(ones[-1]) + 1 if nnz else 0)
    lows = _bit_stream(_low_bits(gaps, kg, np.arange(nnz) * kg), nnz * kg)
    # counts: Rice(kc), the low bits then the unary part
    clen = (counts >> kc) + kc + 1
    cstart = np.concatenate([[0], np.cumsum(clen)[:-1]]).astype(np.int64)
    cstream = _bit_stream(np.concatenate([_low_bits(counts, kc, cstart), cstart + clen - 1]),
                          int(clen.sum()))
    if max(int(clen.sum()), int(ones[-1]) + 1 if nnz else 0, nnz * kg) >= 2 ** 32 - 64:
        raise ParameterError("a Rice stream longer than 2^32 bits: no sparse form")
    b0 = np.arange(0, o, RICE_ROWS)
    ustart = np.concatenate([[0], ones + 1])
    blocks = np.stack([cstart[b0], ustart[first[b0]], first[b0]], 1)
    if bits == 8:
        packed = vals.astype(np.int8).view(np.uint8)
    else:
        nib = (vals & 15).astype(np.uint8)
        if nnz % 2:
            nib = np.concatenate([nib, np.zeros(1, np.uint8)])
        packed = nib[0::2] | (nib[1::2] << 4)
    return RiceCodes(cstream, unary, lows,
                     torch.from_numpy(blocks.astype(np.uint32).view(np.int32).copy()),
                     torch.from_numpy(np.ascontiguousarray(packed).copy()), bits, kg, kc, nnz)


def rice_code_bytes(r: RiceCodes) -> int:
    """Bytes of :func:`to_rice_codes`: the three bit streams with their padding, the codes and
    the per-block table (``k``, ``kc`` and the shape are not counted)."""
    return sum(t.numel() * t.element_size() for t in (r.counts, r.unary, r.lows, r.blocks,
                                                       r.values))


class WeightOnlyLayer(NativeLayer):
    """A Linear/Conv2d with packed low-bit weights and fp32 activations.

    ``sparse=True`` stores only the nonzero codes (:func:`to_rice_codes`). :attr:`bytes`
    counts every byte kept for the weight (codes, streams, tables, scale and zero points) but
    not the bias.
    """

    rows_layout = True

    def __init__(self, site: Site, lib, d: torch.Tensor, zw: torch.Tensor, scale: torch.Tensor,
                 bits: int, threads: int | None, sparse: bool = False):
        super().__init__(site.layer, threads)
        _, b, g = site.folded()
        o = self.out_features
        fields, zf, sf = weight_only_codes(d, zw, scale.expand(o), bits)
        self.lib, self.relu, self.sparse = lib, int(site.relu), sparse
        self.sw, self.bias = (sf * g).contiguous(), b.contiguous()
        self.rows = not sparse and bits == 8 and rows_pay(o)
        self.kernel_function = "wb_wq_rice" if sparse else "wb_wq_rows" if self.rows \
            else "wb_wq_gemm"
        if sparse:
            self.rice = to_rice_codes(d - zw.to(torch.int32)[:, None])
            self.bits, self.nnz = self.rice.bits, self.rice.nnz
            self.bytes = rice_code_bytes(self.rice) + 4 * o  # + the scale
            self.work = Workspace()
        else:
            self.bits = bits
            self.zw = zf.contiguous()
            self.packed = fields.to(torch.int8).contiguous() if self.rows \
                else pack_weight_only(fields, bits)
            self.has_zw = bool(zf.abs().max() > 0)
            self.xsum = Workspace()
            self.bytes = self.packed.numel() + 4 * o + (4 * o if self.has_zw else 0)

    def _kernel(self, x, y, B, K, L):
        n = B * L
        if self.sparse:
            r = self.rice
            work = self.work.get(self.lib.wb_wq_rice_work(n, K))
            self.lib.wb_wq_rice(r.counts.data_ptr(), r.unary.data_ptr(), r.lows.data_ptr(),
                                r.blocks.data_ptr(), r.values.data_ptr(), r.bits, r.k, r.kc,
                                self.sw.data_ptr(),
                                self.bias.data_ptr(), x.data_ptr(), y.data_ptr(),
                                work.data_ptr(), B, L, self.out_features, K, r.nnz, self.relu,
                                self.nthreads())
            return
        if self.rows:
            self.lib.wb_wq_rows(x.data_ptr(), self.packed.data_ptr(), self.sw.data_ptr(),
                                self.zw.data_ptr() if self.has_zw else None,
                                self.bias.data_ptr(), y.data_ptr(), B, L, self.out_features, K,
                                self.relu, self.nthreads())
            return
        # row sums of x, and for 4 bits the rows scaled per input (= wb_wq_work floats)
        work = n + 16 + n * (-(-K // 8) * 8) if self.bits == 4 else n
        xsum = self.xsum.get(work).data_ptr() if self.has_zw or self.bits == 4 else None
        self.lib.wb_wq_gemm(x.data_ptr(), self.packed.data_ptr(), self.bits, self.sw.data_ptr(),
                            self.zw.data_ptr(), self.bias.data_ptr(), y.data_ptr(), xsum, B, L,
                            self.out_features, K, self.relu, self.nthreads())

    def extra_repr(self) -> str:
        form = f"sparse, nnz={self.nnz}" if self.sparse else \
            ("dense, row-major" if self.rows else "dense")
        return f"{super().extra_repr()}, bits={self.bits}, {form}, activations=fp32"

"""Weight-only low-bit layers: packed integer weights, fp32 activations (``csrc/weightonly.c``).

The codes of a quantized layer are stored packed (8, 4, 2 or 1 bits per weight, per-channel
scale and zero point, BatchNorm folded into the scale) and de-quantized on the fly inside the
kernel; the activations stay fp32, so the layer computes the variant's own fake-quantized layer
up to fp32 summation order (max|Δlogit| ~1e-6 relative). A layer that is also pruned can store
only its surviving codes (:func:`to_sparse_codes`): 8- or 4-bit signed values, a one-byte column
index local to a chunk of 256 inputs, a uint16 count per (row, chunk) and an int32 row start.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from workbench.backend.graph import NativeLayer, Site, Workspace
from workbench.errors import ParameterError

SPARSE_CHUNK = 256  # inputs per chunk of the sparse format (one-byte column offsets)


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


def to_sparse_codes(values: torch.Tensor):
    """The nonzero signed codes ``values (O, K)`` (``code - zero point``) in the sparse format.

    Returns ``(rowstart int32 (O,), counts uint16 (O, chunks), idx uint8 (nnz,), packed codes
    (4-bit ones followed by 16 bytes of padding), bits)`` with 4-bit codes (two per byte, low nibble first) when every value lies in
    ``[-8, 7]``, else 8-bit.

    Examples
    --------
    >>> import torch
    >>> v = torch.zeros(2, 300, dtype=torch.int32)
    >>> v[0, 1], v[0, 299], v[1, 0] = 3, -2, 1
    >>> start, counts, idx, packed, bits = to_sparse_codes(v)
    >>> start.tolist(), counts.tolist(), idx.tolist(), bits
    ([0, 2], [[1, 1], [1, 0]], [1, 43, 0], 4)
    >>> [hex(b) for b in packed[:2].tolist()]  # codes 3, -2 (0xe), 1; then 16 bytes of padding
    ['0xe3', '0x1']
    """
    o, k = values.shape
    nchunks = math.ceil(k / SPARSE_CHUNK)
    rows, cols = (values != 0).nonzero(as_tuple=True)  # row-major: sorted by row, then column
    v = values[rows, cols]
    lo, hi = (int(v.min()), int(v.max())) if len(v) else (0, 0)
    if lo < -128 or hi > 127:
        raise ParameterError(f"codes minus zero point span [{lo}, {hi}]: no 8-bit sparse form")
    bits = 4 if -8 <= lo and hi <= 7 else 8
    counts = torch.bincount(rows * nchunks + cols // SPARSE_CHUNK, minlength=o * nchunks)
    rowstart = torch.cat([torch.zeros(1, dtype=torch.int64),
                          counts.reshape(o, nchunks).sum(1).cumsum(0)[:-1]])
    idx = (cols % SPARSE_CHUNK).to(torch.uint8).contiguous()
    if bits == 8:
        packed = v.to(torch.int8).view(torch.uint8).contiguous()
    else:
        nib = (v & 15).to(torch.uint8)
        if len(nib) % 2:
            nib = torch.cat([nib, nib.new_zeros(1)])
        packed = nib[0::2] | (nib[1::2] << 4)
        packed = torch.cat([packed, packed.new_zeros(16)])  # the kernel reads 16 bytes at once
    return (rowstart.to(torch.int32).contiguous(),
            counts.reshape(o, nchunks).to(torch.int16).contiguous(), idx, packed, bits)


def sparse_code_bytes(nnz: int, out: int, k: int, bits: int) -> int:
    """Bytes of :func:`to_sparse_codes` for ``nnz`` codes (values, indices, counts, starts)."""
    return math.ceil(nnz * bits / 8) + nnz + 2 * out * math.ceil(k / SPARSE_CHUNK) + 4 * out


class WeightOnlyLayer(NativeLayer):
    """A Linear/Conv2d with packed low-bit weights and fp32 activations.

    ``sparse=True`` stores only the nonzero codes (:func:`to_sparse_codes`).
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
        if sparse:
            values = d - zw.to(torch.int32)[:, None]
            (self.rowstart, self.counts, self.idx, self.values,
             self.bits) = to_sparse_codes(values)
            self.nnz = len(self.idx)
            self.bytes = sparse_code_bytes(self.nnz, o, d.shape[1], self.bits) + 8 * o
            self.work = Workspace()
        else:
            self.bits = bits
            self.zw = zf.contiguous()
            self.packed = pack_weight_only(fields, bits)
            self.has_zw = bool(zf.abs().max() > 0)
            self.xsum = Workspace()
            self.bytes = self.packed.numel() + 8 * o + (4 * o if self.has_zw else 0)

    def _kernel(self, x, y, B, K, L):
        n = B * L
        if self.sparse:
            work = self.work.get(self.lib.wb_wq_sparse_work(n, K))
            self.lib.wb_wq_sparse(self.rowstart.data_ptr(), self.counts.data_ptr(),
                                  self.idx.data_ptr(), self.values.data_ptr(), self.bits,
                                  self.sw.data_ptr(), self.bias.data_ptr(), x.data_ptr(),
                                  y.data_ptr(), work.data_ptr(), B, L, self.out_features, K,
                                  self.nnz, self.relu, self.nthreads())
            return
        # row sums of x, and for 4 bits the rows scaled per input (= wb_wq_work floats)
        work = n + 16 + n * (-(-K // 8) * 8) if self.bits == 4 else n
        xsum = self.xsum.get(work).data_ptr() if self.has_zw or self.bits == 4 else None
        self.lib.wb_wq_gemm(x.data_ptr(), self.packed.data_ptr(), self.bits, self.sw.data_ptr(),
                            self.zw.data_ptr(), self.bias.data_ptr(), y.data_ptr(), xsum, B, L,
                            self.out_features, K, self.relu, self.nthreads())

    def extra_repr(self) -> str:
        form = f"sparse, nnz={self.nnz}" if self.sparse else "dense"
        return f"{super().extra_repr()}, bits={self.bits}, {form}, activations=fp32"

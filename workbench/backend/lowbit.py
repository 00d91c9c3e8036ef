"""The ``lowbit`` engine: packed int8 / int4 / int2 (ternary) / int1 (binary) weights on our
C kernels, alone or combined with sparsity, per layer on one of two paths (the report says which).

*Weight-only* (``activations="fp32"``, the default for layers whose variant quantizes only
weights; kernels ``int{8,4,2,1}-fp32``): the codes (:class:`~workbench.quantize.QuantizedTensor`,
per-channel scale and zero point, BatchNorm folded into the scale) are packed 8, 4, 2 or 1 bits
per weight and de-quantized inside the kernel against fp32 activations
(:mod:`workbench.backend.weightonly`), so the output is the variant's fake-quantized layer up to
fp32 summation order. A pruned-and-quantized layer whose density of nonzero codes is at most
``max_density`` (default :data:`SPARSE_DENSITY`) stores only its surviving codes (8 or 4 bits
plus Rice-coded column gaps, within a few % of the information-theoretic size; kernel
``int{8,4}-sparse-fp32``, :func:`~workbench.backend.weightonly.to_rice_codes`). Measured on
the 2-core development machine: the sparse form is faster than dense packed from ~70-80 %
sparsity at batch 64, but at batch 1 its decoding and gathers lose to the dense packed kernel,
which streams 4-8 bits per weight, at every sparsity measured (up to 95 %): there it buys
memory, 4-6x less at 90 %, not speed. At batch 64 the weight-only kernels are compute-bound on
fp32 FMAs and not faster than dense MKL; ``activations="int8"`` is the throughput path.

*Int8 activations* (``activations="int8"``, the default for layers whose variant quantizes their
input to 8 bits; kernels ``int{8,4,2,1}-int8``): the layer input is quantized to uint8 inside the
C call, with the variant's calibrated scale (then the engine reproduces the variant's own
fake-quantization) or per column from its min/max (dynamic), and multiplied by the packed codes
with AVX-512 VNNI ``vpdpbusd`` (exact int32 dot products; builds without VNNI run a portable
int32 loop with the same results, see :mod:`workbench.backend.isa`). The compiled model's
``reference`` is the variant with exactly this activation rounding simulated
(:mod:`workbench.backend.simulate`); the accuracy cost against the plain variant is reported
separately by the benchmarks.

On both paths, 8-bit codes of a layer with few outputs (LeNet-5's 6-120) are stored row-major
instead of in blocks of 32 outputs, which would be 30-50 % padding
(:func:`~workbench.backend.weightonly.rows_pay`, ``csrc/rows.c``).

Layers without integer codes (not quantized, k-means codebooks) run on torch.
``binary_activations=True`` runs fully binary layers (1-bit weights) as XNOR + popcount on
sign-binarised activations scaled by their mean magnitude (XNOR-Net); this changes the model's
function and is reported as such.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from workbench.backend import native
from workbench.backend.base import CompiledModel, Report, Tolerance, register_engine
from workbench.backend.chain import chain_runner
from workbench.backend.graph import NativeLayer, Site, Workspace, conv_geometry, rewrite
from workbench.backend.simulate import SimulatedInt8Layer
from workbench.backend.weightonly import WeightOnlyLayer, rows_pay
from workbench.errors import ParameterError

STORAGE_BITS = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
GROUPS_PER_LOAD = {8: 1, 4: 2, 2: 4, 1: 1}  # input groups of 4 decoded from one packed load


def signed_codes(qt, out: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(d (O, K) int32, zw (O,) int32, storage bits)``: codes shifted into the signed range of
    their storage width, ``value = (d - zw) * scale``.

    Examples
    --------
    >>> import torch
    >>> from workbench.quantize import QuantizedTensor
    >>> qt = QuantizedTensor(torch.tensor([[0, 15]], dtype=torch.uint8), torch.tensor([1.0]),
    ...                      torch.tensor([3]), bits=4)
    >>> d, zw, bits = signed_codes(qt, 1)
    >>> d.tolist(), zw.tolist(), bits
    ([[-8, 7]], [-5], 4)
    """
    bits = STORAGE_BITS.get(int(qt.bits))
    if bits is None:
        raise ParameterError(f"no packed format for {qt.bits}-bit codes")
    codes = qt.codes.reshape(out, -1).to(torch.int32)
    zp = qt.zero_point.reshape(-1).to(torch.int32).expand(out) if qt.zero_point.numel() in (1, out) \
        else None
    if zp is None:
        raise ParameterError("zero points must be per tensor or per output channel")
    lo, hi = int(codes.min()), int(codes.max())
    if bits == 1:
        if not set(torch.unique(codes).tolist()) <= {-1, 1} or int(zp.abs().max()) != 0:
            bits = 2  # e.g. a pruned binary layer: codes {-1, 0, 1}
        else:
            return codes, zp.clone(), 1
    half = 2 ** (bits - 1)
    if -half <= lo and hi < half:
        offset = 0
    elif 0 <= lo and hi < 2 * half:
        offset = half
    else:
        raise ParameterError(f"codes in [{lo}, {hi}] do not fit {bits} bits")
    return codes - offset, (zp - offset).contiguous(), bits


def pack_codes(d: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Pack codes ``d (O, K)`` for the VNNI kernels; returns ``(bytes, Kp)`` where ``Kp`` is
    ``K`` padded to whole packed loads. 8-bit codes are signed, 4- and 2-bit codes unsigned
    (``0..15``, ``0..3``), 1-bit codes ``±1``. See ``csrc/lowbit.c`` for the layout.

    Examples
    --------
    >>> import torch
    >>> packed, kp = pack_codes(torch.ones(3, 5, dtype=torch.int32), 8)
    >>> kp, packed.numel()  # 32 outputs x 16 inputs (both padded)
    (16, 512)
    """
    o, k = d.shape
    G = GROUPS_PER_LOAD[bits]
    kp, op = math.ceil(k / 16) * 16, math.ceil(o / 32) * 32  # 16 | 4G for every G
    full = np.zeros((op, kp), dtype=np.int32)
    full[:o, :k] = d.numpy()
    ob, q = op // 32, kp // 4
    # [block, half, lane, group, input] -> [block, load, half, group-in-load, lane*4 + input]
    v = full.reshape(ob, 2, 16, q // G, G, 4).transpose(0, 3, 1, 4, 2, 5).reshape(ob, q // G, 2, G, 64)
    if bits == 8:
        out = v[:, :, :, 0].astype(np.int8).view(np.uint8)
    elif bits == 4:  # unsigned codes (see LowbitLayer)
        nib = v.astype(np.uint8)
        out = nib[:, :, :, 0] | (nib[:, :, :, 1] << 4)
    elif bits == 2:
        c = v.astype(np.uint8)
        out = c[:, :, :, 0] | (c[:, :, :, 1] << 2) | (c[:, :, :, 2] << 4) | (c[:, :, :, 3] << 6)
    else:
        out = np.packbits(v[:, :, :, 0] < 0, axis=-1, bitorder="little")
    # clone: torch's allocator aligns to 64 bytes, as the kernels' aligned loads need
    return torch.from_numpy(np.ascontiguousarray(out).reshape(-1)).clone(), kp


class LowbitLayer(NativeLayer):
    """A Linear/Conv2d with packed integer weights and uint8 activations (VNNI)."""

    consumes_act_quant = True
    rows_layout = True

    def __init__(self, site: Site, lib, qt, threads: int | None):
        super().__init__(site.layer, threads)
        _, b, g = site.folded()
        o = self.out_features
        d, zw, bits = signed_codes(qt, o)
        if bits in (2, 4):  # stored unsigned (no subtraction in the kernel): offset -> zero point
            half = 2 ** (bits - 1)
            d, zw = d + half, zw + half
        self.bits = bits
        scale = qt.scale.reshape(-1).float().expand(o)
        op = math.ceil(o / 32) * 32  # the kernels read per-output vectors in blocks of 32

        def pad(t):
            return torch.cat([t, t.new_zeros(op - o)]).contiguous()

        self.sw, self.bias = pad(scale * g), pad(b)
        self.zw, self.wsum = pad(zw.to(torch.int32)), pad(d.sum(1).to(torch.int32))
        self.rows = bits == 8 and rows_pay(o)  # few outputs: row-major codes (csrc/rows.c)
        self.packed, self.kp = (d.to(torch.int8).contiguous(), -(-self.in_features // 16) * 16) \
            if self.rows else pack_codes(d, bits)  # kp: the quantized input rows' length
        self.lib, self.relu = lib, int(site.relu)
        self.kernel_function = "wb_lowbit_rows" if self.rows else "wb_lowbit_forward"
        hook = site.act_quant()
        self.static = (hook.scale, hook.zero_point) if hook is not None and hook.bits == 8 \
            else (0.0, 0)
        self.work = Workspace(torch.uint8)
        self.bytes = self.packed.numel() + 8 * o

    def _consts(self):
        """The weight arguments of the kernel call (read per call: a deep copy of this module
        owns other tensors)."""
        return (self.packed.data_ptr(), self.bits, self.sw.data_ptr(), self.zw.data_ptr(),
                self.wsum.data_ptr(), self.bias.data_ptr())

    def _kernel(self, x, y, B, K, L):
        work = self.work.get(self.lib.wb_lowbit_work_bytes(B * L, self.kp))
        if self.rows:
            self.lib.wb_lowbit_rows(x.data_ptr(), work.data_ptr(), self.packed.data_ptr(),
                                    self.sw.data_ptr(), self.zw.data_ptr(),
                                    self.wsum.data_ptr(), self.bias.data_ptr(), y.data_ptr(), B,
                                    L, self.out_features, K, self.static[0], self.static[1],
                                    self.relu, int(self.conv is not None), self.nthreads())
            return
        self.lib.wb_lowbit_forward(x.data_ptr(), work.data_ptr(), *self._consts(), y.data_ptr(),
                                   B, L, self.out_features, K, self.kp, self.static[0],
                                   self.static[1], self.relu, int(self.conv is not None),
                                   self.nthreads())

    def extra_repr(self) -> str:
        mode = "static" if self.static[0] else "dynamic"
        layout = ", row-major" if self.rows else ""
        return f"{super().extra_repr()}, bits={self.bits}{layout}, activations=int8-{mode}"


class XnorLayer(NativeLayer):
    """A fully binary layer: sign(weights) · sign(activations) by XNOR + popcount."""

    rows_layout = True

    def __init__(self, site: Site, lib, qt, threads: int | None):
        super().__init__(site.layer, threads)
        _, b, g = site.folded()
        o = self.out_features
        codes = qt.codes.reshape(o, -1)
        k = codes.shape[1]
        self.kw = math.ceil(k / 64)
        ob = math.ceil(o / 8)
        neg = np.zeros((ob * 8, self.kw * 64), dtype=bool)
        neg[:o, :k] = (codes < 0).numpy()
        words = np.packbits(neg, axis=-1, bitorder="little").view(np.uint64)  # (O8, Kw)
        words = words.reshape(ob, 8, self.kw).transpose(0, 2, 1)  # [o / 8][word][8 outputs]
        self.wbits = torch.from_numpy(np.ascontiguousarray(words).view(np.int64).reshape(-1)).clone()
        pad = ob * 8 - o  # the kernel reads scales and biases 8 outputs at a time
        self.sw = torch.cat([qt.scale.reshape(-1).float().expand(o) * g, torch.zeros(pad)])
        self.bias = torch.cat([b, torch.zeros(pad)])
        self.lib, self.relu = lib, int(site.relu)
        self.kernel_function = "wb_xnor_gemm"
        self.xb, self.sx = Workspace(torch.int64), Workspace(torch.float32)
        self.bytes = self.wbits.numel() * 8 + 4 * o

    def _kernel(self, x, y, B, K, L):
        n = B * L
        xb, sx = self.xb.get(n * self.kw), self.sx.get(n)
        nt = self.nthreads()
        rows = self.conv is not None  # conv inputs arrive as (B·L, K) im2col rows
        self.lib.wb_binarize_columns(x.data_ptr(), xb.data_ptr(), sx.data_ptr(),
                                     n if rows else B, K, 1 if rows else L, self.kw, nt)
        self.lib.wb_xnor_gemm(self.wbits.data_ptr(), self.sw.data_ptr(), self.bias.data_ptr(),
                              xb.data_ptr(), sx.data_ptr(), y.data_ptr(), B, L,
                              self.out_features, K, self.kw, self.relu, nt)


def _codes_match(site: Site, qt) -> str | None:
    """``None`` if the layer's weight is the de-quantized codes, else why not."""
    if qt.codebook is not None:
        return "k-means codebook codes have no integer kernel"
    w = site.layer.weight.detach().float()
    if tuple(qt.codes.shape) != tuple(w.shape):
        return f"codes shaped {tuple(qt.codes.shape)} but weight {tuple(w.shape)}"
    err = float((qt.dequantize().float() - w).abs().max())
    if err > 1e-5 * max(float(w.abs().max()), 1e-12) + 1e-7:
        return f"weight differs from its codes by {err:.2e} (modified after quantization?)"
    return None


ACTIVATIONS = ("auto", "fp32", "int8")
# Density (nonzero codes / weights) up to which a weight-only layer stores and runs only its
# surviving codes. Measured with benchmarks/backend.py (1024² layer, Rice-coded gaps): the sparse
# kernel beat the dense packed one from 70-80 % sparsity at batch 64 (1 and 2 threads); at batch
# 1 it lost at every sparsity (see the module docstring), so this is a memory-first default.
SPARSE_DENSITY = 0.3


def _sparse_density(d: torch.Tensor, zw: torch.Tensor) -> float:
    return float((d != zw.to(d.dtype)[:, None]).float().mean())


@register_engine("lowbit", description="our packed int8/int4/int2/int1 kernels: fp32 "
                 "activations with weights de-quantized on the fly (weight-only variants), "
                 "int8 activations (AVX-512 VNNI where the CPU has it) for activation-quantized "
                 "variants, sparse "
                 "packed codes for pruned+quantized layers; unquantized layers stay on torch",
                 # weight-only layers match to ~1e-6 relative; activation-quantized variants
                 # flip rounding ties of the variant's fake-quant (fp32 summation order of
                 # the previous layer): measured up to 1.2e-3 relative on LeNet-5 / MNIST
                 tolerance=Tolerance(atol=1e-4, rtol=5e-3, agreement=0.999))
def compile_lowbit(model: nn.Module, *, masks=None, quant=None, example=None, threads=None,
                   activations: str = "auto", sparse: bool = True,
                   max_density: float | None = None,
                   binary_activations: bool = False, isa: str | None = None) -> CompiledModel:
    """Compile the quantized layers (``quant``) of ``model`` for the low-bit kernels.

    Parameters
    ----------
    activations : {"auto", "fp32", "int8"}
        ``"fp32"``: weight-only kernels (exact up to fp32 summation order; a variant's
        activation fake-quant stays a torch hook before the kernel). ``"int8"``: VNNI kernels
        on uint8 activations (the variant's calibrated scale where it has one, else per-column
        min/max); the compiled model's ``reference`` then simulates that rounding.
        ``"auto"`` (default): int8 for layers whose variant quantizes their input to 8 bits,
        fp32 for the others, so the engine reproduces the variant.
    sparse : bool
        Weight-only layers whose density of nonzero codes is at most ``max_density`` store
        and run only those codes.
    max_density : float, optional
        Default :data:`SPARSE_DENSITY`; ``1.0`` forces the sparse form where it exists.
    binary_activations : bool
        Run fully binary layers as XNOR + popcount on binarised inputs (changes the function).
    isa : str, optional
        The kernels' instruction set (``"avx512"``, ``"avx2"``, ``"neon"``, ``"scalar"``);
        default ``$WORKBENCH_ISA``, else the best one this CPU runs.

    Examples
    --------
    >>> import torch
    >>> from workbench.quantize import QUANTIZERS
    >>> lin = torch.nn.Sequential(torch.nn.Linear(16, 4))
    >>> q = QUANTIZERS["uniform"](lin, 4)
    >>> cm = compile_lowbit(q.model, quant=q.layers)
    >>> cm.report.kernels()
    {'0': 'int4-fp32'}
    >>> x = torch.rand(2, 16)
    >>> bool((cm(x) - q.model(x)).abs().max() < 1e-5)
    True
    """
    if activations not in ACTIVATIONS:
        raise ParameterError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if not isinstance(sparse, bool):
        raise ParameterError(f"sparse must be True or False, got {sparse!r}")
    if max_density is not None and not 0.0 <= float(max_density) <= 1.0:
        raise ParameterError(f"max_density must lie in [0, 1], got {max_density!r}")
    density_limit = SPARSE_DENSITY if max_density is None else float(max_density)
    report = Report("lowbit")
    lib = native.kernels_or_none(report, isa)
    if lib is not None and not lib.wb_has_vnni():
        report.notes.append(f"no AVX-512 VNNI in the {lib.isa} kernels: int8 activations run "
                            "the portable int8 loop")
    if binary_activations:
        report.notes.append("binary_activations=True: 1-bit layers binarise their inputs "
                            "(XNOR-Net); outputs differ from the variant by design")
    total = {"bytes": 0}
    simulated: dict[str, nn.Module] = {}

    def make(site: Site):
        layer = site.layer
        dense = 4 * layer.weight.numel()
        qt = quant.get(site.name)
        hook = site.act_quant()
        why = None
        if lib is None:
            why = "no compiled kernels"
        elif qt is None:
            why = "not quantized"
        elif isinstance(layer, nn.Conv2d) and conv_geometry(layer):
            why = f"unsupported: {conv_geometry(layer)}"
        else:
            why = _codes_match(site, qt)
        if why is not None:
            total["bytes"] += dense
            return None, "torch", why
        if binary_activations and int(qt.bits) == 1:
            module = XnorLayer(site, lib, qt, threads)
            total["bytes"] += module.bytes
            return module, "xnor-popcount", "binarised activations"
        int8 = activations == "int8" or (activations == "auto" and hook is not None
                                         and hook.bits == 8)
        if int8 and hook is not None and hook.bits != 8:
            int8, note = False, f"{hook.bits}-bit activation fake-quant (kernels take 8): fp32 "
        else:
            note = ""
        try:
            if int8:
                module = LowbitLayer(site, lib, qt, threads)
                mode = "static" if module.static[0] else "dynamic"
                _, b, g = site.folded()
                simulated[site.name] = SimulatedInt8Layer(
                    qt.dequantize().float() * g.reshape((-1,) + (1,) * (qt.codes.ndim - 1)),
                    b, module.static if module.static[0] else None, module.conv, bool(site.relu))
                total["bytes"] += module.bytes
                return module, f"int{module.bits}-int8", \
                    f"{qt.bits}-bit codes, int8 activations ({mode}" \
                    + (", VNNI)" if lib.wb_has_vnni() else ")")
            d, zw, bits = signed_codes(qt, layer.weight.shape[0])
            density = _sparse_density(d, zw)
            use_sparse = sparse and density <= density_limit
            if use_sparse:
                try:
                    module = WeightOnlyLayer(site, lib, d, zw, qt.scale.reshape(-1), bits,
                                             threads, sparse=True)
                except ParameterError as err:  # e.g. affine 8-bit codes minus zero point
                    use_sparse, note = False, note + f"no sparse form ({err}); "
            if not use_sparse:
                module = WeightOnlyLayer(site, lib, d, zw, qt.scale.reshape(-1), bits, threads)
        except ParameterError as err:
            total["bytes"] += dense
            return None, "torch", str(err)
        total["bytes"] += module.bytes
        if module.sparse:
            return module, f"int{module.bits}-sparse-fp32", (
                f"{note}{qt.bits}-bit codes, density {density:.3f} <= {density_limit:.2f}: "
                f"{module.nnz} codes stored, Rice-coded gaps (k={module.rice.k}), "
                "fp32 activations")
        return module, f"int{bits}-fp32", f"{note}{qt.bits}-bit codes, density {density:.3f}, " \
            "fp32 activations (weight-only)"

    compiled, layers = rewrite(model, make)
    report.layers = layers
    fast = chain_runner(compiled) if lib is not None else None
    if fast is not None:
        report.notes.append("a chain of Linear layers: one loop of kernel calls, no modules")
    result = CompiledModel(fast or compiled, report, threads, total["bytes"])
    if simulated:
        reference, _ = rewrite(model, lambda site: (simulated.get(site.name), "", ""))
        result.reference = reference
        report.notes.append("int8 activations: the reference is the variant with the kernels' "
                            "activation rounding simulated (compiled.reference)")
    return result


register_engine("lowbit-int8", description="our packed low-bit kernels with int8 activations "
                "(AVX-512 VNNI where the CPU has it) on every quantized layer; checked against "
                "compiled.reference, the variant with the kernels' activation rounding simulated",
                tolerance=Tolerance(atol=1e-4, rtol=5e-3, agreement=0.999, exact_argmax=False),
                activations="int8")(compile_lowbit)

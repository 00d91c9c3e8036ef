"""Rewrite a copy of a model layer by layer: find Linear/Conv2d sites, fold BatchNorm, fuse ReLU.

A *site* is one Conv2d or Linear layer, plus the BatchNorm2d and ReLU that directly follow it in
an ``nn.Sequential`` (those are folded into the layer: BN into its weights and bias, ReLU into the
kernel's epilogue). Layers outside a Sequential (e.g. a ResNet block's ``conv1``) are sites
without fusion. :func:`rewrite` deep-copies the model and asks an engine's ``make`` function for
a replacement module per site; ``None`` keeps the torch layer (with the reason in the report).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from workbench.backend.base import LayerReport
from workbench.backend.native import isa_of
from workbench.errors import ParameterError
from workbench.quantize.activations import ActivationFakeQuant

LAYER_TYPES = (nn.Linear, nn.Conv2d)


@dataclass
class Site:
    """One Linear/Conv2d layer of the copied model and what can be fused into it."""

    name: str
    layer: nn.Module
    parent: nn.Module | None
    key: str
    bn: nn.BatchNorm2d | None = None
    relu: bool = False
    absorbed: list = field(default_factory=list)  # (parent, key) replaced by Identity if fused

    @property
    def kind(self) -> str:
        t = type(self.layer).__name__
        return t + ("+BN" if self.bn is not None else "") + ("+ReLU" if self.relu else "")

    def act_quant(self) -> ActivationFakeQuant | None:
        """The layer's int8 input fake-quant hook (``activations=True`` variants), if any."""
        hooks = [h for h in self.layer._forward_pre_hooks.values()
                 if isinstance(h, ActivationFakeQuant)]
        return hooks[0] if len(hooks) == 1 else None

    def folded(self, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
        """``(weight, bias, bn_scale)`` with BatchNorm folded in (``bn_scale`` is all ones
        without BN); ``weight`` defaults to the layer's own."""
        w = (self.layer.weight if weight is None else weight).detach().float()
        out = w.shape[0]
        b = self.layer.bias.detach().float() if self.layer.bias is not None else torch.zeros(out)
        g = torch.ones(out)
        if self.bn is not None:
            bn = self.bn
            g = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
            b = (b - bn.running_mean.float()) * g + bn.bias.detach().float()
            w = w * g.reshape((-1,) + (1,) * (w.ndim - 1))
        return w.contiguous(), b.contiguous(), g


def _has_hooks(m: nn.Module, pre: bool = True) -> bool:
    return bool(m._forward_hooks) or (pre and bool(m._forward_pre_hooks))


def find_sites(model: nn.Module) -> list[Site]:
    """Every Linear/Conv2d of ``model`` with the BN/ReLU that can be fused into it.

    A model that *is* a single layer is one site named ``""`` without a parent.
    """
    if isinstance(model, LAYER_TYPES):
        return [Site("", model, None, "")]
    sites: dict[str, Site] = {}
    for pname, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (key, child) in enumerate(children):
            if not isinstance(child, LAYER_TYPES):
                continue
            name = f"{pname}.{key}" if pname else key
            site = Site(name, child, parent, key)
            if isinstance(parent, nn.Sequential) and not _has_hooks(child, pre=False):
                j = i + 1
                if (isinstance(child, nn.Conv2d) and j < len(children)
                        and type(children[j][1]) is nn.BatchNorm2d
                        and not children[j][1].training and not _has_hooks(children[j][1])
                        and children[j][1].track_running_stats):
                    site.bn = children[j][1]
                    site.absorbed.append((parent, children[j][0]))
                    j += 1
                if (j < len(children) and type(children[j][1]) is nn.ReLU
                        and not _has_hooks(children[j][1])):
                    site.relu = True
                    site.absorbed.append((parent, children[j][0]))
            sites[name] = site
    return list(sites.values())


Make = Callable[[Site], "tuple[nn.Module | None, str, str]"]


def rewrite(model: nn.Module, make: Make) -> tuple[nn.Module, list[LayerReport]]:
    """A copy of ``model`` whose sites ``make`` replaced; the input model is never touched.

    ``make(site) -> (module, kernel, reason)``: ``module`` replaces the layer (and absorbs the
    site's BN/ReLU); ``None`` keeps the torch layer, and ``reason`` says why.
    """
    out = copy.deepcopy(model).eval()
    reports = []
    for site in find_sites(out):
        module, kernel, reason = make(site)
        if module is None:
            reports.append(LayerReport(site.name, type(site.layer).__name__, "torch", reason))
            continue
        for hook in site.layer._forward_pre_hooks.values():
            if not getattr(module, "consumes_act_quant", False) or \
                    not isinstance(hook, ActivationFakeQuant):
                module.register_forward_pre_hook(hook)
        if site.parent is None:  # the model is this one layer
            out = module
        else:
            setattr(site.parent, site.key, module)
        for parent, key in site.absorbed:
            setattr(parent, key, nn.Identity())
        reports.append(LayerReport(site.name, site.kind, kernel, reason,
                                   getattr(module, "isa", "")))
    return out, reports


def conv_geometry(conv: nn.Conv2d) -> str | None:
    """``None`` if our im2col kernels support ``conv``, else the reason they do not."""
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups})"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    return None


class NativeLayer(nn.Module):
    """Base of the replacement modules: turns a Linear/Conv2d input into the kernels' layout.

    Subclasses set ``lib`` (the kernels) and implement ``_kernel(x, y, B, K, L)`` where ``x``
    is contiguous with ``B`` samples of ``K × L`` values (``L = 1`` for Linear; im2col columns
    for Conv2d, or ``(B·L, K)`` rows if ``rows_layout``) and ``y`` is the preallocated
    ``(B, O, L)`` output.
    """

    consumes_act_quant = False
    rows_layout = False  # True: Conv2d inputs reach _kernel as (B·L, K) im2col rows
    kernel_function = ""  # the C function that does the layer's work (for its ISA)

    @property
    def isa(self) -> str:
        """The instruction set the layer's kernel was built for."""
        return isa_of(self.lib, self.kernel_function) if self.kernel_function else self.lib.isa

    def __init__(self, layer: nn.Module, threads: int | None):
        super().__init__()
        self.out_features = layer.weight.shape[0]
        self.in_features = layer.weight[0].numel()
        self.threads = threads
        self._cols = Workspace()
        self.conv = None
        if isinstance(layer, nn.Conv2d):
            self.conv = (tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding),
                         tuple(layer.dilation))

    def nthreads(self) -> int:
        return self.threads or torch.get_num_threads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            if x.shape[-1] != self.in_features:  # the kernels would read past the input
                raise ParameterError(f"this layer takes {self.in_features} input features, "
                                     f"got a batch of shape {tuple(x.shape)}")
            if x.dim() == 2 and x.is_contiguous():  # a few µs per call at batch 1
                y = torch.empty(x.shape[0], self.out_features)
                self._kernel(x, y, x.shape[0], self.in_features, 1)
                return y
            lead = x.shape[:-1]
            x2 = x.reshape(-1, x.shape[-1]).contiguous()
            y = torch.empty(x2.shape[0], self.out_features)
            self._kernel(x2, y, x2.shape[0], self.in_features, 1)
            return y.reshape(*lead, self.out_features)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.conv
        if x.dim() != 4 or x.shape[1] * kh * kw != self.in_features:
            raise ParameterError(f"this convolution takes {self.in_features // (kh * kw)} "
                                 f"input channels, got a batch of shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        x = x.contiguous()
        k, ell = self.in_features, ho * wo
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and not self.rows_layout:
            cols = x  # (B, C, H·W) is already the column layout
        else:
            cols = self._cols.get(b * k * ell)
            self.lib.wb_im2col(x.data_ptr(), cols.data_ptr(), b, c, h, w, kh, kw, sh, sw, ph, pw,
                               dh, dw, ho, wo, int(self.rows_layout), self.nthreads())
        y = torch.empty(b, self.out_features, ho, wo)
        self._kernel(cols, y, b, k, ell)
        return y

    def _kernel(self, x, y, B, K, L):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def chainable(self) -> bool:
        """Whether :func:`~workbench.backend.chain.chain_runner` may call :meth:`run_linear`."""
        return self.conv is None

    def run_linear(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The kernel on a contiguous ``(B, K)`` batch into ``y (B, O)``, without the checks
        and reshapes of :meth:`forward` (see ``chain.py``)."""
        self._kernel(x, y, x.shape[0], self.in_features, 1)

    def extra_repr(self) -> str:
        kind = "conv" if self.conv is not None else "linear"
        return f"{kind}, in={self.in_features}, out={self.out_features}"


class Workspace:
    """A grow-only scratch buffer (avoids one allocation per call)."""

    def __init__(self, dtype=torch.float32):
        self.dtype = dtype
        self.buf = torch.empty(0, dtype=dtype)

    def get(self, n: int) -> torch.Tensor:
        if self.buf.numel() < n:
            self.buf = torch.empty(max(n, int(self.buf.numel() * 1.5)), dtype=self.dtype)
        return self.buf

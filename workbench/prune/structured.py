"""Filter / neuron pruning that physically removes channels, ranked by the Lp norm of filters.

Which layers depend on which is found by tracing the model with ``torch.fx``: a Conv2d or Linear
layer *produces* channels; BatchNorm, activations, pooling, dropout and flatten carry them on; a
Conv2d/Linear that reads them *consumes* them (a Linear after a flatten reads ``H·W`` features per
channel); the inputs of an ``add`` must keep the same channels, so all producers feeding one
residual sum form one *group* pruned with one index set. Channels that reach the model output or
an operation the tracer does not understand are never pruned (listed in ``info["skipped"]``).

The result is a smaller module whose output equals the original model with the removed channels'
outgoing connections cut (the consumers' input weights of those channels set to zero).
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.prune.base import (Pruned, _excluded, check_sparsity, clone, prunable_layers,
                                  refuse_per_layer, register_pruner)

#: Why the structured methods refuse ``per_layer_sparsity``.
NO_PER_LAYER = ("it removes one fraction of channels from every layer and residual group "
                "together; use exclude to keep layers whole")

PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                      nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout,
                      nn.Dropout1d, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PRESERVING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu,
                        torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.dropout,
                        F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
PRESERVING_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
SCALE_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div"}


@dataclass(frozen=True)
class Chan:
    """Dimension 1 of a tensor holds the channels of group ``gid`` (``spatial``: a (N,C,H,W)
    feature map, else (N,C) features); ``flat``: channel-major flattened (N, C·H·W)."""

    gid: int
    spatial: bool
    flat: bool = False


HARMLESS = "harmless"  # a value that carries no channels (x.size(0))


class _Graph:
    """Producers, consumers and BatchNorms of channel groups, with union-find for residual adds."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.producers: list[tuple[str, int]] = []
        self.consumers: list[tuple[str, int, bool]] = []  # (layer, gid, reads flattened input)
        self.norms: list[tuple[str, int]] = []
        self.frozen: list[tuple[int, str]] = []

    def new(self, producer: str, channels: int) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(channels)
        self.producers.append((producer, gid))
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.size[ra] != self.size[rb]:
                self.frozen.append((ra, "added to a tensor with a different channel count"))
            self.parent[rb] = ra
        return ra

    def freeze(self, value, reason: str) -> None:
        for v in _flat_values(value):
            if isinstance(v, Chan):
                self.frozen.append((v.gid, reason))


def _flat_values(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat_values(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flat_values(v)
    else:
        yield value


def _flattens(node, fn) -> bool:
    """True if a flatten/view/reshape node flattens all dims after the batch dim into one."""
    args, kw = node.args, node.kwargs
    if fn in ("view", "reshape"):
        shape = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
        return len(shape) == 2 and shape[1] == -1
    start = kw.get("start_dim", args[1] if len(args) > 1 else 0)
    end = kw.get("end_dim", args[2] if len(args) > 2 else -1)
    return start == 1 and end == -1


def trace_groups(model: nn.Module) -> _Graph:
    """Trace ``model`` with torch.fx and collect its channel groups (see the module docstring)."""
    from torch import fx

    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001  any tracing failure means "cannot analyse"
        raise UnsupportedLayerError(
            f"structured pruning needs a forward pass that torch.fx can trace; "
            f"{type(model).__name__} cannot be traced: {str(err).splitlines()[0]}"
        ) from None
    modules = dict(traced.named_modules())
    graph, value, attrs = _Graph(), {}, []
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")

    def val(a):
        return fx.node.map_arg(a, lambda n: value.get(n))

    for node in traced.graph.nodes:
        args = val(node.args)
        x = args[0] if args else None
        out = None
        if node.op == "call_module":
            mod = modules[node.target]
            name = str(node.target)
            if calls[node.target] > 1:  # shared weights: leave its inputs and outputs alone
                graph.freeze(args, f"module {name!r} is called more than once")
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    gid = graph.new(name, mod.weight.shape[0])
                    graph.frozen.append((gid, f"module {name!r} is called more than once"))
                    out = Chan(gid, isinstance(mod, nn.Conv2d))
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                conv = isinstance(mod, nn.Conv2d)
                fan_in = mod.in_channels if conv else mod.in_features
                if isinstance(x, Chan):
                    ok = (x.spatial and not x.flat) if conv else (x.flat or not x.spatial)
                    if conv and mod.groups != 1:
                        graph.freeze(x, f"{name!r} is a grouped convolution")
                    elif not ok:
                        graph.freeze(x, f"{name!r} reads its input in an unsupported layout")
                    elif not x.flat and fan_in != graph.size[x.gid]:
                        graph.freeze(x, f"{name!r} expects {fan_in} inputs")
                    else:
                        graph.consumers.append((name, x.gid, x.flat))
                gid = graph.new(name, mod.out_channels if conv else mod.out_features)
                if conv and mod.groups != 1:
                    graph.frozen.append((gid, f"{name!r} is a grouped convolution"))
                out = Chan(gid, conv)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if isinstance(x, Chan) and not x.flat:
                    graph.norms.append((name, x.gid))
                    out = x
                else:
                    graph.freeze(x, f"BatchNorm {name!r} reads flattened features")
            elif isinstance(mod, nn.Flatten):
                if mod.start_dim == 1 and mod.end_dim == -1:
                    out = Chan(x.gid, x.spatial, x.spatial or x.flat) if isinstance(x, Chan) else x
                else:
                    graph.freeze(x, f"{name!r} flattens other dimensions")
            elif isinstance(mod, PRESERVING_MODULES):
                out = x
            else:
                graph.freeze(args, f"module {name!r} ({type(mod).__name__}) is not understood")
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            if fn in ADD_FUNCTIONS or fn in ("add", "add_"):
                tensors = [a for a in args if a is not HARMLESS and not isinstance(a, (int, float))]
                chans = [a for a in tensors if isinstance(a, Chan)]
                layouts = {(c.spatial, c.flat) for c in chans}
                if chans and len(chans) == len(tensors) and len(layouts) == 1:
                    gid = chans[0].gid
                    for c in chans[1:]:
                        gid = graph.union(gid, c.gid)
                    out = Chan(gid, chans[0].spatial, chans[0].flat)
                else:
                    graph.freeze(args, "added to a tensor whose channels cannot be pruned")
            elif fn in SCALE_FUNCTIONS and len(args) == 2 and isinstance(args[1], (int, float)):
                out = x  # x * 0.5: scaling by a number keeps the channels
            elif fn == "size" and len(node.args) == 2 and node.args[1] == 0:
                out = HARMLESS
            elif fn in (torch.flatten, "flatten", "view", "reshape") and _flattens(node, fn):
                out = Chan(x.gid, x.spatial, x.spatial or x.flat) if isinstance(x, Chan) else x
            elif fn in PRESERVING_FUNCTIONS or fn in PRESERVING_METHODS:
                out = x
            else:
                label = getattr(fn, "__name__", str(fn))
                graph.freeze(args, f"operation {label!r} ({node.name}) is not understood")
        elif node.op == "output":
            graph.freeze(args, "its outputs are the model's outputs")
        elif node.op == "get_attr":
            attrs.append(str(node.target))
        value[node] = out
    for target in attrs:  # a layer whose weight is also used directly keeps its shape
        for name, gid in graph.producers:
            if target.startswith(name + "."):
                graph.frozen.append((gid, f"its parameter {target!r} is used directly"))
    return graph


def filter_norms(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Lp norm of every output filter (row) of a Conv2d/Linear weight.

    Examples
    --------
    >>> import torch
    >>> filter_norms(torch.tensor([[3.0, -4.0], [1.0, 0.0]]), 2)
    tensor([5., 1.])
    """
    return torch.linalg.vector_norm(weight.detach().flatten(1).float(), ord=p, dim=1)


def plan_channels(model: nn.Module, sparsity: float, p: float = 1.0, exclude=(),
                  scores=None) -> dict:
    """Which output channels each layer keeps, and which layers read them.

    Channels are ranked by the Lp norm of their filters, or by ``scores(layer_name, module)``
    (one value per output channel, higher = more important) when given; a residual group sums
    the scores of its producers.

    Returns ``{"kept": {producer: [indices]}, "channels": {producer: [before, after]},
    "groups": [[producers pruned together]], "skipped": {producer: reason},
    "inputs": {consumer: [kept input indices]}}``.
    """
    layers = dict(model.named_modules())
    prunable_layers(model, exclude)  # validates the exclude names
    graph = trace_groups(model)
    for name, gid in graph.producers:
        if _excluded(name, exclude):
            graph.frozen.append((gid, "excluded"))
    members = defaultdict(list)
    for name, gid in graph.producers:
        members[graph.find(gid)].append(name)
    frozen = defaultdict(list)
    for gid, reason in graph.frozen:
        frozen[graph.find(gid)].append(reason)
    factors = {}
    for name, gid, flat in graph.consumers:
        root = graph.find(gid)
        fan_in = layers[name].weight.shape[1]
        if flat:
            if fan_in % graph.size[root]:
                frozen[root].append(f"{name!r} reads {fan_in} features from "
                                    f"{graph.size[root]} channels")
            factors[name] = fan_in // graph.size[root]
        else:
            factors[name] = 1
    kept, groups, skipped = {}, [], {}
    for root, names in members.items():
        if frozen[root]:
            for n in names:
                skipped[n] = frozen[root][0]
            continue
        size = graph.size[root]
        importance = sum(filter_norms(layers[n].weight, p) if scores is None
                         else torch.as_tensor(scores(n, layers[n]), dtype=torch.float32)
                         for n in names)
        n_keep = max(1, size - int(round(sparsity * size)))
        keep = torch.sort(torch.argsort(-importance, stable=True)[:n_keep]).values
        for n in names:
            kept[n] = keep.tolist()
        if len(names) > 1:
            groups.append(sorted(names))
    inputs = {}
    for name, gid, flat in graph.consumers:
        root = graph.find(gid)
        first = next(n for n in members[root])
        if first in kept:
            f = factors[name]
            inputs[name] = [c * f + j for c in kept[first] for j in range(f)]
    norms = {name: kept[next(iter(members[graph.find(gid)]))] for name, gid in graph.norms
             if next(iter(members[graph.find(gid)])) in kept}
    channels = {n: [layers[n].weight.shape[0], len(kept.get(n, range(layers[n].weight.shape[0])))]
                for n, _ in graph.producers if n in layers}
    return {"kept": kept, "channels": channels, "groups": groups, "skipped": skipped,
            "inputs": inputs, "norms": norms}


def _slice_(module: nn.Module, out_idx=None, in_idx=None) -> None:
    """Keep only ``out_idx`` outputs / ``in_idx`` inputs of a Conv2d, Linear or BatchNorm."""
    def keep(t, idx, dim):
        return t if idx is None else t.index_select(dim, torch.as_tensor(idx, dtype=torch.long))

    def param(t):
        return nn.Parameter(t.detach().clone(), requires_grad=module.weight.requires_grad)

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.affine:
            module.weight = param(keep(module.weight, out_idx, 0))
            module.bias = param(keep(module.bias, out_idx, 0))
        if module.track_running_stats:
            module.running_mean = keep(module.running_mean, out_idx, 0).clone()
            module.running_var = keep(module.running_var, out_idx, 0).clone()
        module.num_features = len(out_idx)
        return
    module.weight = param(keep(keep(module.weight, out_idx, 0), in_idx, 1))
    if module.bias is not None:
        module.bias = param(keep(module.bias, out_idx, 0))
    out_n, in_n = module.weight.shape[:2]
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = out_n, in_n
    else:
        module.out_features, module.in_features = out_n, in_n


def cut_channels(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` whose consumers ignore the removed channels (their input weights of
    those channels zeroed): the function the slimmed model must compute."""
    out = clone(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for name, idx in plan["inputs"].items():
            w = modules[name].weight
            drop = torch.ones(w.shape[1], dtype=torch.bool)
            drop[torch.as_tensor(idx, dtype=torch.long)] = False
            w[:, drop] = 0
    return out


def slim(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` with the channels not in ``plan["kept"]`` physically removed."""
    out = clone(model)
    modules = dict(out.named_modules())
    for name in set(plan["kept"]) | set(plan["inputs"]):
        _slice_(modules[name], plan["kept"].get(name), plan["inputs"].get(name))
    for name, idx in plan["norms"].items():
        _slice_(modules[name], idx)
    return out


def _sample_input(model, data):
    if data is not None:
        return data.x_train[:4]
    arch = getattr(model, "workbench_arch", None)
    if arch and arch.get("input_shape"):
        return torch.rand(4, *arch["input_shape"], generator=torch.Generator().manual_seed(0))
    return None


def _check(model, slimmed, plan, data) -> None:
    """Run the slimmed model once and compare it with the cut reference (clear error if not)."""
    from workbench.errors import DataError

    x = _sample_input(model, data)
    if x is None:
        return
    try:
        with torch.no_grad():
            want = cut_channels(model, plan)(x)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"the model cannot process inputs shaped {tuple(x.shape[1:])}: "
                        f"{str(err).splitlines()[0]}") from None
    try:
        with torch.no_grad():
            got = slimmed(x)
    except Exception as err:  # noqa: BLE001  a shape error means the analysis missed something
        raise UnsupportedLayerError(
            f"structured pruning of {type(model).__name__} produced a model that does not run "
            f"({str(err).splitlines()[0]}); exclude the layers involved"
        ) from None
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise UnsupportedLayerError(
            f"structured pruning of {type(model).__name__} changed what the kept channels compute; "
            "the model mixes channels in a way the tracer does not understand"
        )


def _structured(model, sparsity, data, scope, exclude, p, method, scores=None) -> Pruned:
    sparsity = check_sparsity(sparsity)
    if scope != "layer":
        raise ParameterError(f"{method} removes the same fraction of channels from every layer; "
                             f"only scope='layer' is supported, got {scope!r}")
    plan = plan_channels(model, sparsity, p, exclude, scores)
    if not plan["kept"]:
        raise UnsupportedLayerError(
            f"{method} found no channel it can remove: "
            + "; ".join(f"layer {n!r}: {r}" for n, r in plan["skipped"].items())
        )
    slimmed = slim(model, plan)
    _check(model, slimmed, plan, data)
    arch = getattr(slimmed, "workbench_arch", None)
    if isinstance(arch, dict):  # the architecture parameters no longer rebuild this model
        channels = {n: c[1] for n, c in plan["channels"].items()}
        slimmed.workbench_arch = {**arch, "channels": channels}
    info = {"p": p, **{k: plan[k] for k in ("kept", "channels", "groups", "skipped")}}
    return Pruned(slimmed, {}, info)


@register_pruner("l1_structured", reference="Li et al. 2017, 'Pruning Filters for Efficient "
                 "ConvNets' (L1 norm of filters; residual channels pruned jointly).",
                 structured=True, per_layer=False)
def l1_structured(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
                  per_layer_sparsity=None) -> Pruned:
    """Remove the ``sparsity`` fraction of output channels (Conv2d filters, hidden Linear
    neurons) with the smallest L1 norm from every layer, physically, along with the inputs of
    the layers that read them. The final classifier keeps all its outputs.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = l1_structured(create_model("lenet5", (1, 8, 8), 10), 0.5)
    >>> p.info["channels"]["features.0"], p.model.features[3].weight.shape[1]
    ([6, 3], 3)
    """
    refuse_per_layer(per_layer_sparsity, "l1_structured", NO_PER_LAYER)
    return _structured(model, sparsity, data, scope, exclude, 1.0, "l1_structured")


@register_pruner("l2_structured", reference="Li et al. 2017, 'Pruning Filters for Efficient "
                 "ConvNets' with the L2 norm (He et al. 2018, 'Soft Filter Pruning').",
                 structured=True, per_layer=False)
def l2_structured(model, sparsity, *, data=None, scope="layer", exclude=(), seed=0,
                  p: float = 2.0, per_layer_sparsity=None) -> Pruned:
    """Like :func:`l1_structured`, ranking filters by their Lp norm (``p=2`` by default).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> p = l2_structured(create_model("mlp", (1, 8, 8), 10), 0.25)
    >>> p.info["channels"]["features.1"]
    [128, 96]
    """
    refuse_per_layer(per_layer_sparsity, "l2_structured", NO_PER_LAYER)
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ParameterError(f"p must be a positive number, got {p!r}") from None
    if not p > 0:
        raise ParameterError(f"p must be a positive number, got {p!r}")
    return _structured(model, sparsity, data, scope, exclude, p, "l2_structured")

"""The contract every registered quantization method keeps (parametrized over the registry).

Registering a method is enough for it to be checked here: the input is never modified, the
codes de-quantize to exactly the returned weights and fit the bit width, results are
deterministic, pruned weights stay zero, no hook is left on the input, and bad parameters
raise clear errors. The last section goes through :class:`workbench.Session`.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import re

import pytest
import torch
from torch import nn

from tests.conftest import hook_count, state_equal, zoo_model
from workbench.errors import ParameterError, UnsupportedLayerError, WorkbenchError
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS, ActivationFakeQuant, activation_quantizers
from workbench.storage import model_storage

MODELS = ("mlp", "lenet5", "vgg_small", "resnet_small")
METHODS = QUANTIZERS.names()
CASES = [(m, b) for m in METHODS for b in QUANTIZERS[m].bits]
CONTRACT_KEYWORDS = ("data", "granularity", "symmetric", "exclude", "seed", "masks")


def weight_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def accepts(method: str, param: str) -> bool:
    return param in inspect.signature(QUANTIZERS[method].fn).parameters


@pytest.fixture(scope="module")
def pruned():
    """Each zoo model pruned to 50% by magnitude (the parent of the masked cases)."""
    return {name: PRUNERS["magnitude"](zoo_model(name), 0.5) for name in MODELS}


def check_result(q, model, method, bits, masks=None):
    """Everything a :class:`Quantized` must satisfy, against the (untouched) input ``model``."""
    assert q.model is not model
    names = weight_layers(model)
    assert set(q.layers) == set(names)
    out, inp = dict(q.model.named_modules()), dict(model.named_modules())
    quantized_keys = {f"{n}.weight" for n in names}
    for key, value in model.state_dict().items():  # biases, BatchNorm: untouched
        if key not in quantized_keys:
            assert torch.equal(q.model.state_dict()[key], value), key
    for name, qt in q.layers.items():
        weight = out[name].weight.detach()
        assert torch.equal(qt.dequantize(), weight), f"{name}: dequantize() != weight"
        assert not qt.codes.is_floating_point() and qt.codes.shape == weight.shape
        mask = None if masks is None else masks.get(name)
        pruned_here = mask is not None and not bool(mask.all())
        expected_bits = 2 if method == "binary" and pruned_here else bits  # documented
        assert qt.bits == expected_bits
        codes = torch.sort(qt.codes.reshape(len(weight), -1).long(), dim=1).values
        distinct_per_channel = 1 + (codes[:, 1:] != codes[:, :-1]).sum(1)
        assert int(distinct_per_channel.max()) <= 2 ** qt.bits
        assert len(qt.codes.unique()) <= 2 ** qt.bits, "the code alphabet does not fit the bits"
        if qt.codebook is not None:
            assert int(qt.codes.max()) < qt.codebook.shape[-1] <= 2 ** qt.bits
        if mask is not None:
            assert not weight[~mask].any(), f"{name}: a pruned weight became nonzero"
        err = q.info["error"][name]
        original = inp[name].weight.detach().double()
        assert err["mse"] == pytest.approx(float((original - weight.double()).pow(2).mean()),
                                           rel=1e-9, abs=1e-15)
        assert err["max_abs"] == pytest.approx(float((original - weight.double()).abs().max()),
                                               rel=1e-9, abs=1e-15)
        assert err["rel"] == pytest.approx(
            float((original - weight.double()).norm() / original.norm()), rel=1e-9)
        assert err["bits"] == qt.bits


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("method,bits", CASES)
def test_contract(method, bits, arch, pruned):
    entry = QUANTIZERS[method]
    model = zoo_model(arch)
    snapshot = copy.deepcopy(model)
    q = entry(model, bits)
    assert state_equal(model, snapshot), "the input model was modified"
    assert hook_count(model) == 0
    check_result(q, model, method, bits)

    parent = pruned[arch]
    parent_snapshot = copy.deepcopy(parent.model)
    qm = entry(parent.model, bits, masks=parent.masks)
    assert state_equal(parent.model, parent_snapshot)
    check_result(qm, parent.model, method, bits, parent.masks)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method, arch):
    entry = QUANTIZERS[method]
    first, again = (entry(zoo_model(arch), entry.bits[0], seed=3) for _ in range(2))
    assert state_equal(first.model, again.model)
    assert all(torch.equal(first.layers[n].codes, again.layers[n].codes) for n in first.layers)
    assert first.info == again.info


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("method", METHODS)
def test_granularity_shapes_the_scales(method, granularity, pruned):
    parent = pruned["lenet5"]
    bits = QUANTIZERS[method].bits[-1]
    q = QUANTIZERS[method](parent.model, bits, granularity=granularity, masks=parent.masks)
    check_result(q, parent.model, method, bits, parent.masks)
    assert q.info["granularity"] == granularity
    for name, qt in q.layers.items():
        channels = len(qt.codes)
        if qt.codebook is not None:
            assert qt.codebook.shape[:-1] == ((channels,) if granularity == "channel" else ())
        else:
            assert qt.scale.numel() == (channels if granularity == "channel" else 1)
            assert qt.zero_point.shape == qt.scale.shape


def test_registry_entries_follow_the_shared_signature():
    assert {"uniform", "ternary", "binary", "kmeans"} <= set(METHODS)
    for method in METHODS:
        entry = QUANTIZERS[method]
        assert entry.reference and entry.bits
        assert all(isinstance(b, int) and 1 <= b <= 8 for b in entry.bits)
        params = inspect.signature(entry.fn).parameters
        first, second = list(params)[:2]
        assert params[second].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # bits
        for kw in CONTRACT_KEYWORDS:
            assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY, (method, kw)


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_bad_bits_name_the_supported_widths(method):
    model = zoo_model("mlp")
    snapshot = copy.deepcopy(model)
    supported = QUANTIZERS[method].bits
    for bits in (0, 9, 16, -1, 3.5, "4"):
        with pytest.raises(ParameterError, match=re.escape(str(list(supported)))):
            QUANTIZERS[method](model, bits)
    for bits in (None, "four"):
        with pytest.raises(ParameterError, match="bits"):
            QUANTIZERS[method](model, bits)
    assert state_equal(model, snapshot)


@pytest.mark.parametrize("method", METHODS)
def test_bad_granularity_and_symmetric(method):
    model = zoo_model("mlp")
    with pytest.raises(ParameterError, match="granularity.*'channel'"):
        QUANTIZERS[method](model, QUANTIZERS[method].bits[0], granularity="row")
    with pytest.raises(ParameterError, match="symmetric"):
        QUANTIZERS[method](model, QUANTIZERS[method].bits[0], symmetric="yes")


@pytest.mark.parametrize("method", METHODS)
def test_unsupported_layers_raise_unless_excluded(method):
    bits = QUANTIZERS[method].bits[0]
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(8, 3))
    snapshot = copy.deepcopy(model)
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(Conv1d\).*exclude"):
        QUANTIZERS[method](model, bits)
    assert state_equal(model, snapshot) and hook_count(model) == 0
    q = QUANTIZERS[method](model, bits, exclude=["0"])
    assert list(q.layers) == ["2"] and q.info["excluded"] == []
    assert torch.equal(q.model[0].weight, model[0].weight)
    with pytest.raises(UnsupportedLayerError, match="no Conv2d or Linear"):
        QUANTIZERS[method](model, bits, exclude=["0", "2"])


@pytest.mark.parametrize("method", METHODS)
def test_exclude(method):
    model = zoo_model("lenet5")
    bits = QUANTIZERS[method].bits[0]
    q = QUANTIZERS[method](model, bits, exclude=["features", "fc"])
    assert set(q.layers) == {"classifier.0", "classifier.2"}
    assert q.info["excluded"] == ["fc", "features.0", "features.3"]
    for name in ("features.0", "features.3", "fc"):
        assert torch.equal(q.model.get_submodule(name).weight, model.get_submodule(name).weight)
    with pytest.raises(ParameterError, match="unknown layers.*'nope'"):
        QUANTIZERS[method](model, bits, exclude=["nope"])


@pytest.mark.parametrize("method", METHODS)
def test_bad_masks_and_missing_data(method):
    model = zoo_model("mlp")
    bits = QUANTIZERS[method].bits[0]
    with pytest.raises(ParameterError, match="mask of 'fc' has shape"):
        QUANTIZERS[method](model, bits, masks={"fc": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ParameterError, match="not a layer"):
        QUANTIZERS[method](model, bits, masks={"ghost": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ParameterError, match="needs data"):
        QUANTIZERS[method](model, bits, activations=True)
    assert hook_count(model) == 0


@pytest.mark.parametrize("method", [m for m in METHODS if accepts(m, "per_layer_bits")])
def test_per_layer_bits(method):
    entry = QUANTIZERS[method]
    model = zoo_model("lenet5")
    low, high = min(entry.bits), max(entry.bits)
    q = entry(model, high, per_layer_bits={"fc": low, "features.0": low})
    assert {n: qt.bits for n, qt in q.layers.items()} == {
        "features.0": low, "features.3": high, "classifier.0": high, "classifier.2": high,
        "fc": low}
    assert q.info["bits"] == {n: qt.bits for n, qt in q.layers.items()}
    assert len(q.layers["fc"].codes.unique()) <= 2 ** low
    with pytest.raises(ParameterError, match="not quantized layers"):
        entry(model, high, per_layer_bits={"features": low})
    with pytest.raises(ParameterError, match="layer 'fc'"):
        entry(model, high, per_layer_bits={"fc": 99})
    with pytest.raises(ParameterError, match="not quantized layers"):
        entry(model, high, per_layer_bits={"fc": low}, exclude=["fc"])


@pytest.mark.parametrize("method", METHODS)
def test_activation_hooks_live_only_on_the_returned_model(method, digits):
    entry = QUANTIZERS[method]
    model = zoo_model("lenet5")
    q = entry(model, entry.bits[0], data=digits, activations=True, calibration_batches=2)
    assert hook_count(model) == 0
    hooks = activation_quantizers(q.model)
    assert set(hooks) == set(q.layers) == set(q.info["activations"])
    assert all(isinstance(h, ActivationFakeQuant) and h.bits == 8 for h in hooks.values())
    assert hook_count(q.model) == len(hooks)
    # the hooks travel with the model: deep copies and pickles keep them
    assert set(activation_quantizers(copy.deepcopy(q.model))) == set(hooks)
    buf = io.BytesIO()
    torch.save(q.model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = digits.x_test[:8]
    assert torch.equal(loaded(x), q.model(x))
    again = entry(q.model, entry.bits[0], data=digits, activations=True, calibration_batches=2)
    assert hook_count(again.model) == len(hooks) and len(activation_quantizers(q.model)) == 5
    with pytest.raises(ParameterError, match="calibration_batches"):
        entry(model, entry.bits[0], data=digits, activations=True, calibration_batches=0)


# --- through a Session -------------------------------------------------------------------------
def test_session_uniform_4bit(fresh_session):
    base = fresh_session.base
    v = fresh_session.quantize("uniform", bits=4)
    assert v.name == "uniform-4b"
    assert set(v.quant) == set(weight_layers(base.model))
    assert v.metrics.bits == {n: 4 for n in v.quant}
    assert v.metrics.bytes_compressed < base.metrics.bytes_compressed / 4
    assert v.metrics.accuracy >= base.metrics.accuracy - 0.05
    assert state_equal(fresh_session.base.model, base.model)
    assert set(v.info["error"]) == set(v.quant)


@pytest.mark.parametrize("method", METHODS)
def test_session_quantizing_a_pruned_parent_keeps_its_masks(fresh_session, method):
    parent = fresh_session.prune("magnitude", sparsity=0.5)
    v = fresh_session.quantize(method, parent=parent.name)  # the method's default bits
    bits = QUANTIZERS[method].bits[0]
    assert v.name == f"magnitude-50+{method}-{bits}b" and v.parent == parent.name
    assert v.metrics.sparsity == parent.metrics.sparsity
    assert v.masks.keys() == parent.masks.keys()
    layers = dict(v.model.named_modules())
    for name, mask in parent.masks.items():
        assert torch.equal(v.masks[name], mask)
        assert not layers[name].weight[~mask].any()
    assert set(v.metrics.bits) == set(parent.masks)
    assert v.metrics.bytes_compressed < parent.metrics.bytes_compressed
    assert v.metrics.accuracy > 0.3


def test_session_rejects_unknown_parameters_and_bits(fresh_session):
    with pytest.raises(ParameterError, match="does not take"):
        fresh_session.quantize("ternary", per_layer_bits={"fc": 2})
    with pytest.raises(ParameterError, match=re.escape("[2]")):
        fresh_session.quantize("ternary", bits=8)
    with pytest.raises(WorkbenchError):
        fresh_session.quantize("uniform", bits=8, per_layer_bits={"fc": 1})
    assert list(fresh_session.variants) == ["base"]


def test_session_recipe_rebuilds_the_same_quantized_variant(fresh_session, default_session):
    import workbench

    v = fresh_session.quantize("kmeans", bits=3, per_layer_bits={"fc": 5})
    text = fresh_session.export_recipes()
    other = workbench.Session(default_session.base.model, default_session.data)
    (rebuilt,) = other.load_recipes(text)
    assert rebuilt.name == v.name and state_equal(rebuilt.model, v.model)


def test_storage_counts_codebooks_instead_of_scales():
    model = zoo_model("mlp")
    q = QUANTIZERS["kmeans"](model, 3)
    storage = model_storage(q.model, None, q.layers)
    for name, qt in q.layers.items():
        numel = qt.codes.numel()
        assert storage[name].packed == math.ceil(numel * 3 / 8) + 4 * qt.codebook.numel()
    u = QUANTIZERS["uniform"](model, 4)
    storage = model_storage(u.model, None, u.layers)
    for name, qt in u.layers.items():
        assert storage[name].packed == math.ceil(qt.codes.numel() * 4 / 8) + 8 * len(qt.codes)

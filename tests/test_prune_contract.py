"""The pruning contract, checked for every registered method on every zoo model."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from workbench.data import Dataset
from workbench.errors import DataError, ParameterError, UnsupportedLayerError
from workbench.prune import PRUNERS
from workbench.prune.base import prunable_layers
from workbench.train import fit
from tests.conftest import hook_count, state_equal, zoo_model

MODELS = ["mlp", "lenet5", "vgg_small", "resnet_small"]
# Small settings so every method runs in well under a second on 2 cores; methods not listed
# run with their defaults.
FAST = {
    "taylor": {"batches": 2, "batch_size": 32},
    "snip": {"batch_size": 32},
    "hessian": {"samples": 2, "batch_size": 16},
    "nm": {"skip_indivisible": True},
    "gradual": {"steps": 2, "epochs_per_step": 1, "batch_size": 32},
    "lottery": {"rounds": 2, "epochs": 1, "batch_size": 32},
    "admm": {"epochs": 1, "retrain_epochs": 1, "batch_size": 32},
}


@pytest.fixture(scope="module")
def small(digits) -> Dataset:
    """Digits with a 64-image training split: enough for gradients, fast to train on."""
    return Dataset("digits-small", digits.x_train[:64], digits.y_train[:64], digits.x_val[:40],
                   digits.y_val[:40], digits.x_test[:40], digits.y_test[:40], digits.classes)


def run(name, model, sparsity, data, **kw):
    return PRUNERS[name](model, sparsity, data=data, **{**FAST.get(name, {}), **kw})


def default_scope(name) -> str:
    return inspect.signature(PRUNERS[name].fn).parameters["scope"].default


def removed_ok(masks, layers, sparsity, scope) -> None:
    """Per layer, or over all layers for global scope, round(s·n) weights go (±1)."""
    if scope == "layer":
        for n, m in masks.items():
            assert abs(int((~m).sum()) - round(sparsity * m.numel())) <= 1, n
    else:
        total = sum(m.weight.numel() for m in layers.values())
        removed = sum(int((~m).sum()) for m in masks.values())
        assert abs(removed - round(sparsity * total)) <= 1


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("name", PRUNERS.names())
def test_contract(name, arch, small):
    entry = PRUNERS[name]
    model = zoo_model(arch)
    before, hooks = copy.deepcopy(model), hook_count(model)
    rng = torch.random.get_rng_state()
    sparsity = 0.5
    p = run(name, model, sparsity, small, seed=3)
    assert state_equal(model, before) and hook_count(model) == hooks  # input untouched
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is not consumed
    assert p.model is not model
    x = small.x_test[:8]
    with torch.no_grad():
        out = p.model(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    again = run(name, model, sparsity, small, seed=3)
    layers = dict(p.model.named_modules())
    original = dict(model.named_modules())
    if entry.structured:
        assert p.masks == {}
        assert again.info["kept"] == p.info["kept"]
        assert p.info["kept"], "nothing was pruned"
        for layer, (n_before, n_after) in p.info["channels"].items():
            assert original[layer].weight.shape[0] == n_before
            assert layers[layer].weight.shape[0] == n_after
            if layer in p.info["kept"]:
                assert n_after == max(1, n_before - round(sparsity * n_before))
        assert layers["fc"].weight.shape[0] == 10  # the classifier keeps its outputs
        assert sum(q.numel() for q in p.model.parameters()) < sum(
            q.numel() for q in model.parameters())
        return
    prunable = prunable_layers(model)
    assert p.masks and set(p.masks) <= set(prunable)
    assert again.masks.keys() == p.masks.keys()
    assert all(torch.equal(again.masks[n], p.masks[n]) for n in p.masks)  # same seed, same masks
    for n, mask in p.masks.items():
        assert mask.dtype == torch.bool and mask.shape == layers[n].weight.shape
        assert torch.all(layers[n].weight[~mask] == 0)  # pruned weights exactly zero
    if name == "nm":
        for n, mask in p.masks.items():
            assert mask.float().mean() == pytest.approx(p.info["n"] / p.info["m"])
        assert set(p.masks) | set(p.info["skipped"]) == set(prunable)
    else:
        assert set(p.masks) == set(prunable)
        removed_ok(p.masks, prunable, sparsity, default_scope(name))
    fit(p.model, small.x_train[:32], small.y_train[:32], epochs=1, masks=p.masks, progress=False)
    for n, mask in p.masks.items():
        assert torch.all(layers[n].weight[~mask] == 0)  # the masks survive training


UNSTRUCTURED = [n for n in PRUNERS.names() if not PRUNERS[n].structured and n != "nm"]


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_both_scopes_reach_the_sparsity(name, small):
    model = zoo_model("mlp" if PRUNERS[name].trains else "lenet5")
    layers = prunable_layers(model)
    for scope in ("layer", "global"):
        p = run(name, model, 0.7, small, scope=scope)
        removed_ok(p.masks, layers, 0.7, scope)


@pytest.mark.parametrize("bad", [-0.1, 1.0, "a", None, float("nan")])
@pytest.mark.parametrize("name", PRUNERS.names())
def test_invalid_sparsity_is_a_parameter_error(name, bad, small):
    model = zoo_model("mlp")
    before = copy.deepcopy(model)
    with pytest.raises(ParameterError, match="sparsity"):
        run(name, model, bad, small)
    assert state_equal(model, before)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_unknown_exclude_is_a_parameter_error(name, small):
    model = zoo_model("mlp")
    with pytest.raises(ParameterError, match="no_such_layer"):
        run(name, model, 0.5, small, exclude=["no_such_layer"])


@pytest.mark.parametrize("name", PRUNERS.names())
def test_exclude_keeps_layers_dense(name, small):
    model = zoo_model("lenet5")
    excluded = "classifier.0" if PRUNERS[name].structured else "features.3"
    p = run(name, model, 0.6, small, exclude=[excluded, "features.0"])
    layers = dict(p.model.named_modules())
    assert "features.0" not in p.masks and excluded not in p.masks
    for n in ("features.0", excluded):
        assert layers[n].weight.shape[0] == dict(model.named_modules())[n].weight.shape[0]
    if PRUNERS[name].structured:
        assert p.info["channels"]["classifier.0"] == [120, 120]
    else:
        assert torch.all(layers[excluded].weight != 0)
        assert any((~m).any() for m in p.masks.values())


@pytest.mark.parametrize("name", PRUNERS.names())
def test_data_requirement_is_honest(name, small):
    model = zoo_model("mlp")
    if PRUNERS[name].needs_data:
        with pytest.raises(ParameterError, match="data"):
            PRUNERS[name](model, 0.5, data=None)
    else:
        PRUNERS[name](model, 0.5, data=None, **FAST.get(name, {}))


@pytest.mark.parametrize("name", [n for n in PRUNERS.names() if PRUNERS[n].needs_data])
def test_data_that_does_not_fit_is_a_data_error(name):
    model = zoo_model("mlp")  # expects 64 features
    before = copy.deepcopy(model)
    wrong = Dataset.from_tensors(torch.rand(60, 1, 4, 4), torch.arange(60) % 3, name="tiny")
    with pytest.raises(DataError, match="cannot process"):
        run(name, model, 0.5, wrong)
    assert state_equal(model, before)


def test_indivisible_fan_in_names_the_layer(small):
    model = zoo_model("lenet5")  # features.0 reads 1·5·5 = 25 inputs per filter, features.3 150
    with pytest.raises(UnsupportedLayerError, match="features.0"):
        PRUNERS["nm"](model, 0.5)
    with pytest.raises(UnsupportedLayerError, match="features.3"):
        PRUNERS["nm"](model, 0.5, exclude=["features.0"])
    p = PRUNERS["nm"](model, 0.5, exclude=["features.0", "features.3"])
    assert set(p.masks) == {"classifier.0", "classifier.2", "fc"} and p.info["skipped"] == []
    p = PRUNERS["nm"](model, 0.5, skip_indivisible=True)
    assert p.info["skipped"] == ["features.0", "features.3"]


def test_train_mode_input_is_untouched(small):
    """BatchNorm statistics of the input must not move, even if it is in training mode."""
    for name in ("taylor", "hessian", "admm", "l1_structured"):
        model = zoo_model("vgg_small").train()
        before = copy.deepcopy(model)
        run(name, model, 0.5, small)
        assert state_equal(model, before) and model.training, name


# one epoch or so of training each, on the session's full digits data
SESSION_FAST = {"gradual": {"steps": 1}, "lottery": {"rounds": 1, "epochs": 1},
                "admm": {"epochs": 1, "retrain_epochs": 0}}


@pytest.mark.parametrize("name", PRUNERS.names())
def test_session_prune_end_to_end(name, fresh_session):
    params = SESSION_FAST.get(name, FAST.get(name, {}))
    v = fresh_session.prune(name, 0.5, **params)
    base = fresh_session.base.metrics
    assert 0.0 <= v.metrics.accuracy <= 1.0
    assert v.recipe.method == name and v.name in fresh_session.variants
    if PRUNERS[name].structured:
        assert v.metrics.params < base.params and v.metrics.macs < base.macs
    else:
        assert v.metrics.sparsity > 0.2
        assert v.metrics.nonzero_params < base.params


# --- per-layer sparsity ------------------------------------------------------------------------
PER_LAYER = [n for n in PRUNERS.names() if PRUNERS[n].per_layer]
NO_PER_LAYER = [n for n in PRUNERS.names() if not PRUNERS[n].per_layer]


def distinct_targets(layers) -> dict:
    """A different sparsity for every layer (0.1, 0.3, 0.5, … cycling), none equal to 0.5 twice."""
    values = [0.1, 0.3, 0.7, 0.9, 0.6, 0.2, 0.8, 0.4]
    return {n: values[i % len(values)] for i, n in enumerate(layers)}


@pytest.mark.parametrize("name", PRUNERS.names())
def test_every_method_takes_the_per_layer_keyword(name):
    param = inspect.signature(PRUNERS[name].fn).parameters.get("per_layer_sparsity")
    assert param is not None and param.kind is param.KEYWORD_ONLY and param.default is None


@pytest.mark.parametrize("name", PER_LAYER)
def test_per_layer_sparsity_reaches_each_layers_target(name, small):
    model = zoo_model("mlp" if PRUNERS[name].trains else "lenet5")
    before = copy.deepcopy(model)
    layers = prunable_layers(model)
    targets = distinct_targets(layers)
    p = run(name, model, 0.5, small, scope="layer", per_layer_sparsity=targets, seed=1)
    assert state_equal(model, before)
    assert set(p.masks) == set(layers)
    for n, mask in p.masks.items():
        assert int((~mask).sum()) == round(targets[n] * mask.numel()), n
        assert torch.all(dict(p.model.named_modules())[n].weight[~mask] == 0)
    # layers the mapping leaves out use ``sparsity``
    first, *rest = list(layers)
    q = run(name, model, 0.5, small, scope="layer", per_layer_sparsity={first: 0.9}, seed=1)
    assert int((~q.masks[first]).sum()) == round(0.9 * q.masks[first].numel())
    for n in rest:
        assert int((~q.masks[n]).sum()) == round(0.5 * q.masks[n].numel()), n


@pytest.mark.parametrize("name", PER_LAYER)
def test_bad_per_layer_sparsity_is_a_clear_parameter_error(name, small):
    model = zoo_model("mlp")
    before = copy.deepcopy(model)
    layer = list(prunable_layers(model))[0]
    with pytest.raises(ParameterError, match="no_such_layer"):
        run(name, model, 0.5, small, scope="layer", per_layer_sparsity={"no_such_layer": 0.5})
    for bad in (1.0, -0.2, "x", float("nan")):
        with pytest.raises(ParameterError, match=f"per_layer_sparsity of layer '{layer}'"):
            run(name, model, 0.5, small, scope="layer", per_layer_sparsity={layer: bad})
    with pytest.raises(ParameterError, match="excluded"):
        run(name, model, 0.5, small, scope="layer", exclude=[layer],
            per_layer_sparsity={layer: 0.5})
    with pytest.raises(ParameterError, match="scope='layer'"):
        run(name, model, 0.5, small, scope="global", per_layer_sparsity={layer: 0.5})
    with pytest.raises(ParameterError, match="must map layer names"):
        run(name, model, 0.5, small, scope="layer", per_layer_sparsity=[0.5])
    assert state_equal(model, before)


@pytest.mark.parametrize("name", NO_PER_LAYER)
def test_methods_without_per_layer_sparsity_refuse_it(name, small):
    model = zoo_model("lenet5")
    layer = list(prunable_layers(model))[1]
    with pytest.raises(ParameterError, match=f"{name} does not take per_layer_sparsity"):
        run(name, model, 0.5, small, per_layer_sparsity={layer: 0.3})
    run(name, model, 0.5, small, per_layer_sparsity={})  # empty: nothing to refuse


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_per_layer_sparsity_round_trips_through_recipes(fmt, fresh_session, default_session):
    import workbench

    targets = {"features.0": 0.2, "features.3": 0.6, "classifier.0": 0.9, "fc": 0.1}
    v = fresh_session.prune("magnitude", 0.5, per_layer_sparsity=targets)
    got = v.metrics.layer_sparsity
    for n, s in targets.items():
        assert got[n] == pytest.approx(s, abs=0.01)
    assert got["classifier.2"] == pytest.approx(0.5, abs=0.01)
    text = fresh_session.export_recipes(fmt=fmt)
    other = workbench.Session(default_session.base.model, default_session.data)
    (rebuilt,) = other.load_recipes(text)
    assert rebuilt.recipe.params["per_layer_sparsity"] == targets
    assert rebuilt.name == v.name
    assert all(torch.equal(rebuilt.masks[n], v.masks[n]) for n in v.masks)

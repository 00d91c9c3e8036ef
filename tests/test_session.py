"""Session, variants, metrics and recipes: the public API of the foundation."""

from __future__ import annotations

import copy
import time

import pytest
import torch

import workbench
from workbench.errors import CheckpointError, DataError, ParameterError, WorkbenchError
from workbench.recipe import RecipeError
from tests.conftest import state_equal, zoo_model


def test_default_session_is_trained_and_cached(default_session):
    base = default_session.base.metrics
    assert base.accuracy > 0.9  # a CNN on digits that trained
    assert base.sparsity == 0.0
    start = time.perf_counter()
    again = workbench.Session.default(progress=False)  # second start: from the disk cache
    assert time.perf_counter() - start < 5
    assert state_equal(again.base.model, default_session.base.model)


def test_evaluation_is_fast_and_consistent(default_session):
    v = default_session.base
    start = time.perf_counter()
    m = workbench.metrics.compute_metrics(v.model, v.data)
    assert time.perf_counter() - start < 1.0
    logits = v.model(v.data.x_test)
    acc = float((logits.argmax(1) == v.data.y_test).float().mean())
    assert m.accuracy == pytest.approx(acc)
    assert len(m.per_class_accuracy) == 10


def test_prune_adds_independent_variant(fresh_session):
    before = copy.deepcopy(fresh_session.base.model)
    v = fresh_session.prune("magnitude", sparsity=0.7)
    assert v.name == "magnitude-70" and v.name in fresh_session.variants
    assert state_equal(fresh_session.base.model, before)  # base untouched
    assert v.model is not fresh_session.base.model
    assert v.metrics.sparsity == pytest.approx(0.7, abs=0.01)
    for name, mask in v.masks.items():
        w = dict(v.model.named_modules())[name].weight
        assert torch.all(w[~mask] == 0)
        assert v.metrics.layer_sparsity[name] == pytest.approx(1 - mask.float().mean().item())
    assert v.metrics.bytes_compressed < v.metrics.bytes_dense
    assert v.metrics.macs_nonzero < v.metrics.macs


def test_user_model_is_never_modified(digits):
    model = zoo_model("mlp")
    snapshot = copy.deepcopy(model)
    s = workbench.Session(model, digits)
    s.prune("magnitude", 0.5, finetune_epochs=1)
    assert state_equal(model, snapshot)
    assert s.base.model is not model


def test_variant_names_are_unique_and_renamable(fresh_session):
    a = fresh_session.prune("random", 0.5)
    b = fresh_session.prune("random", 0.5)
    assert (a.name, b.name) == ("random-50", "random-50-2")
    child = fresh_session.prune("magnitude", 0.8, parent=a.name)
    assert child.name == "random-50+magnitude-80"
    fresh_session.rename(a.name, "coarse")
    assert "coarse" in fresh_session.variants and child.recipe.parent == "coarse"
    with pytest.raises(ParameterError, match="parent"):
        fresh_session.remove("coarse")
    fresh_session.remove(child.name)
    fresh_session.remove("coarse")
    assert list(fresh_session.variants) == ["base", "random-50-2"]


def test_child_pruning_keeps_parent_zeros(fresh_session):
    parent = fresh_session.prune("random", 0.5, seed=3)
    child = fresh_session.prune("magnitude", 0.6, parent=parent.name)
    for name, m in parent.masks.items():
        assert not torch.any(child.masks[name] & ~m)


def test_finetuning_keeps_masks_and_helps(fresh_session):
    plain = fresh_session.prune("magnitude", 0.9)
    tuned = fresh_session.prune("magnitude", 0.9, finetune_epochs=5)
    for name, mask in tuned.masks.items():
        assert torch.equal(mask, plain.masks[name])
        assert torch.all(dict(tuned.model.named_modules())[name].weight[~mask] == 0)
    assert tuned.metrics.accuracy > plain.metrics.accuracy


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_bad_sparsity_is_a_clear_error(fresh_session, bad):
    with pytest.raises(ParameterError, match="sparsity"):
        fresh_session.prune("magnitude", bad)
    assert list(fresh_session.variants) == ["base"]


def test_unknown_method_and_parameter(fresh_session):
    with pytest.raises(workbench.errors.UnknownNameError, match="Did you mean 'magnitude'"):
        fresh_session.prune("magnitud", 0.5)
    with pytest.raises(ParameterError, match="does not take"):
        fresh_session.prune("magnitude", 0.5, bogus=1)
    with pytest.raises(ParameterError, match="no variant named"):
        fresh_session.prune("magnitude", 0.5, parent="nope")


def test_model_data_mismatch_is_reported(digits):
    with pytest.raises(DataError, match="does not accept inputs"):
        workbench.Session(zoo_model("lenet5", input_shape=(1, 28, 28)), digits)
    with pytest.raises(DataError, match="3 classes|10 classes"):
        workbench.Session(zoo_model("mlp", num_classes=3), digits)
    with pytest.raises(CheckpointError, match="nn.Module"):
        workbench.Session("not a model", digits)


def test_nan_weights_are_refused(digits):
    model = zoo_model("mlp")
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf.*fc.weight"):
        workbench.Session(model, digits)


def test_user_tensors_and_loaders_are_accepted():
    x = torch.rand(90, 2)
    y = (x[:, 0] > x[:, 1]).long()
    s = workbench.Session(workbench.models.create_model("mlp", (2,), 2), (x, y))
    assert s.data.input_shape == (2,) and s.data.num_classes == 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    s2 = workbench.Session(workbench.models.create_model("mlp", (2,), 2), loader)
    assert len(s2.data.x_train) + len(s2.data.x_val) + len(s2.data.x_test) == 90
    with pytest.raises(DataError, match="single class"):
        workbench.Session(workbench.models.create_model("mlp", (2,), 2), (x, torch.zeros(90)))


def test_recipe_round_trip_rebuilds_identical_variants(fresh_session, tmp_path):
    s = fresh_session
    a = s.prune("global_magnitude", 0.8, min_keep=0.05, finetune_epochs=2, seed=4)
    s.prune("random", 0.3, parent=a.name, seed=9)
    path = tmp_path / "recipes.yaml"
    s.export_recipes(path)
    rebuilt = workbench.Session(s.base.model, s.data)
    rebuilt.load_recipes(path)
    assert list(rebuilt.variants) == list(s.variants)
    for name, v in s.variants.items():
        w = rebuilt.variants[name]
        assert state_equal(v.model, w.model)
        assert v.masks.keys() == w.masks.keys()
        assert all(torch.equal(v.masks[k], w.masks[k]) for k in v.masks)
        assert v.metrics.accuracy == w.metrics.accuracy
    json_text = s.export_recipes(names=["global_magnitude-80+random-30"], fmt="json")
    assert '"global_magnitude-80"' in json_text  # the parent comes along


@pytest.mark.parametrize("text, message", [
    ("variants: [", "not valid YAML"),
    ("[1, 2]", "mapping with a 'variants' list"),
    ("workbench_recipe: 99\nvariants: []", "format 99"),
    ("workbench_recipe: 1\nvariants: [{name: a, kind: prune}]", "missing field"),
    ("workbench_recipe: 1\nvariants: [{name: a, kind: melt, method: x}]", "kind must be"),
    ("workbench_recipe: 1\nvariants: [{name: a, kind: prune, method: nosuch}]", "unknown pruning method"),
    ("workbench_recipe: 1\nvariants: [{name: a, kind: prune, method: random, parent: ghost}]",
     "parent 'ghost'"),
])
def test_malformed_recipes_are_refused(fresh_session, text, message):
    with pytest.raises(WorkbenchError, match=message):
        fresh_session.load_recipes(text)


def test_methods_lists_the_registries():
    assert {"random", "magnitude", "global_magnitude"} <= set(workbench.methods("prune"))
    with pytest.raises(ParameterError):
        workbench.methods("distill")


def test_recipe_error_is_a_workbench_error():
    assert issubclass(RecipeError, WorkbenchError)

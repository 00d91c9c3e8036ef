"""LRP relevance, captum attributions, relevance preservation and the relevance pruner.

Rules are checked against independent matrix-form oracles (float64 NumPy), LRP against
conservation and against captum's LRP, and every registered attribution method against one
contract (shape, finite, model untouched, no hooks left even after an error, deterministic).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count, state_equal, zoo_model
from workbench.data import Dataset
from workbench.errors import DataError, ParameterError, UnknownNameError, UnsupportedLayerError
from workbench.prune import PRUNERS
from workbench.relevance import (ATTRIBUTIONS, LRP, AlphaBeta, Epsilon, Flat, Gamma, WSquare,
                                 ZBox, ZPlus, canonize, fold_batchnorm, relevance,
                                 relevance_preservation)
from workbench.prune.relevance import channel_relevance

MODELS = ["mlp", "lenet5", "vgg_small", "resnet_small"]


def rand(*shape, seed=0, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g)


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (folding then
    changes weights and creates biases)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model


def bias_free_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(),
                         nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))


def bias_free_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=False))


# --- rules against matrix-form oracles ---------------------------------------------------------
def _oracle(rule, x, w, b, R, low=None, high=None):
    """R_in[i] = sum_j c_ij / z_j R[j] for one sample of a Linear layer, in float64 NumPy."""
    eps = getattr(rule, "epsilon", 0.0)

    def share(contrib, z, sign=None):
        s = np.where(z >= 0, 1.0, -1.0) if sign is None else sign
        return (contrib / (z + s * eps)) @ R

    if isinstance(rule, (AlphaBeta,)):
        c = x[:, None] * w.T
        cp, cn = np.clip(c, 0, None), np.clip(c, None, 0)
        zp, zn = cp.sum(0) + np.clip(b, 0, None), cn.sum(0) + np.clip(b, None, 0)
        return rule.alpha * share(cp, zp, 1.0) - rule.beta * share(cn, zn, -1.0)
    if isinstance(rule, Gamma):
        wg, bg = w + rule.gamma * np.clip(w, 0, None), b + rule.gamma * np.clip(b, 0, None)
        c = x[:, None] * wg.T
        return share(c, c.sum(0) + bg)
    if isinstance(rule, ZBox):
        c = x[:, None] * w.T - low * np.clip(w, 0, None).T - high * np.clip(w, None, 0).T
        return share(c, c.sum(0) + b)
    if isinstance(rule, WSquare):
        c = (w ** 2).T
        return share(c, c.sum(0))
    if isinstance(rule, Flat):
        c = np.ones_like(w.T)
        return share(c, c.sum(0))
    c = x[:, None] * w.T
    return share(c, c.sum(0) + b)


@pytest.mark.parametrize("rule", [Epsilon(0.0), Epsilon(0.5), Gamma(0.25, 1e-9), Gamma(2.0, 0.1),
                                  ZPlus(epsilon=1e-9), AlphaBeta(2.0, 1.0, 1e-9),
                                  AlphaBeta(1.5, 0.5, 0.01), ZBox(-1.0, 2.0, 1e-9), Flat(1e-9),
                                  WSquare(0.0)], ids=repr)
def test_rules_match_matrix_oracle(rule):
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    if isinstance(rule, ZBox):
        x = x.clamp(-1.0, 2.0)
    R = torch.randn(3, 4, dtype=torch.float64)
    (got,) = rule.relevance(lin, (x,), R)
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    for i in range(3):
        want = _oracle(rule, x[i].numpy(), w, b, R[i].numpy(), -1.0, 2.0)
        np.testing.assert_allclose(got[i].detach().numpy(), want, rtol=1e-9, atol=1e-12)


def test_rule_parameters_are_validated():
    with pytest.raises(ParameterError, match="epsilon"):
        Epsilon(-1.0)
    with pytest.raises(ParameterError, match="gamma"):
        Gamma(float("nan"))
    with pytest.raises(ParameterError, match="zplus"):
        ZPlus(alpha=2.0)
    with pytest.raises(UnknownNameError, match="gamma"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), rules={"1": "gamm"})
    with pytest.raises(UnsupportedLayerError, match="needs a layer with weights"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), rules={"2": "zplus"})
    with pytest.raises(ParameterError, match="matches no layer"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), rules={"features.9": "epsilon"})
    with pytest.raises(ParameterError, match="backend"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), backend="zennit")
    with pytest.raises(ParameterError, match="takes"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), composite="epsilon", gamma=0.5)
    with pytest.raises(UnknownNameError, match="epsilon_plus"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), composite="epsilon_plu")
    with pytest.raises(ParameterError, match="target"):
        relevance(bias_free_mlp(), rand(2, 1, 4, 4), target=3)
    with pytest.raises(DataError, match="cannot process"):
        relevance(bias_free_mlp(), rand(2, 1, 5, 5))


# --- conservation and what the rules do to the maps ---------------------------------------------
def test_epsilon_conserves_relevance_without_biases():
    """With epsilon -> 0 the input relevance sums to the target logit; a large epsilon absorbs
    part of it (the stabilizer takes a share of every neuron's relevance)."""
    net, x = bias_free_mlp(), rand(8, 1, 4, 4, low=-1.0)
    a = relevance(net, x, composite="epsilon", epsilon=1e-9, backend="workbench")
    score = a.meta["score"]
    assert torch.allclose(a.totals, score, rtol=1e-4, atol=1e-6)
    assert torch.equal(a.target, net(x).argmax(1))
    absorbed = relevance(net, x, composite="epsilon", epsilon=1.0, backend="workbench")
    assert torch.all(absorbed.totals.abs() < score.abs())
    assert float((absorbed.totals - score).abs().min()) > 1e-3


def test_zplus_is_conservative_and_non_negative_for_positive_inputs():
    net, x = bias_free_cnn(1), rand(6, 1, 8, 8, seed=1)
    logits = net(x)
    target = logits.argmax(1)
    assert torch.all(logits.gather(1, target[:, None]) > 0)
    a = relevance(net, x, target=target, composite="epsilon", rules={"*": "zplus"})
    assert torch.all(a.maps >= 0) and a.maps.sum() > 0
    assert torch.allclose(a.totals, a.meta["score"], rtol=1e-4)
    # epsilon on the same model gives negative evidence too
    assert (relevance(net, x, target=target, composite="epsilon").maps < 0).any()


def test_alphabeta_conserves_when_both_signs_occur():
    """alpha - beta = 1 conserves relevance at a neuron that has both positive and negative
    contributions; one with only positive ones passes on alpha times its relevance."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))
    x = rand(8, 1, 4, 4, seed=20, low=-1.0)  # 16 mixed-sign contributions per output
    rules = {"*": ("alphabeta", {"epsilon": 1e-9})}
    a = relevance(net, x, composite="epsilon", rules=rules)
    assert torch.allclose(a.totals, a.meta["score"], rtol=1e-4, atol=1e-6)
    assert a.meta["rules"]["1"].startswith("AlphaBeta(alpha=2.0, beta=1.0")
    plain = relevance(net, x, composite="epsilon", epsilon=1e-9)
    assert not torch.allclose(a.maps, plain.maps, atol=1e-4)
    one_sided = relevance(net, x.abs(), target=0, composite="epsilon",
                          rules={"1": ("alphabeta", {"epsilon": 1e-9})})
    w = net[1].weight.detach()[0]
    assert not ((w > 0).all() or (w < 0).all()), "the seeded layer must have mixed-sign weights"
    with torch.no_grad():
        net[1].weight[0] = w.abs()  # only positive contributions to output 0
    doubled = relevance(net, x.abs(), target=0, composite="epsilon",
                        rules={"1": ("alphabeta", {"epsilon": 1e-9})})
    assert torch.allclose(doubled.totals, 2 * doubled.meta["score"], rtol=1e-4)
    assert one_sided.maps.shape == doubled.maps.shape


def test_gamma_to_zero_is_epsilon_and_gamma_changes_the_map():
    net, x = zoo_model("lenet5"), rand(4, 1, 8, 8, seed=3)
    eps = relevance(net, x, target=2, composite="epsilon", epsilon=1e-6, backend="workbench")
    g0 = relevance(net, x, target=2, composite="epsilon", rules={"*": ("gamma", {"gamma": 0.0})})
    assert torch.allclose(g0.maps, eps.maps, rtol=1e-5, atol=1e-8)
    g1 = relevance(net, x, target=2, composite="epsilon", rules={"*": ("gamma", {"gamma": 1.0})})
    assert not torch.allclose(g1.maps, eps.maps, rtol=1e-2, atol=1e-6)


def test_zbox_uses_the_bounds_and_composites_pick_layers():
    net, x = zoo_model("lenet5"), rand(3, 1, 8, 8, seed=4)
    a = relevance(net, x, composite="epsilon_gamma_box", low=0.0, high=1.0)
    rules = a.meta["rules"]
    assert rules["features.0"].startswith("ZBox(low=0.0, high=1.0")
    assert rules["features.3"].startswith("Gamma(") and rules["fc"].startswith("Epsilon(")
    assert rules["features.1"] == "Identity()" and "features.2" not in rules  # max-pool: gradient
    default_bounds = relevance(net, x, composite="epsilon_gamma_box")
    assert not torch.allclose(a.maps, default_bounds.maps)  # batch range is not [0, 1] exactly
    plus = relevance(net, x, composite="epsilon_plus").meta["rules"]
    assert plus["features.0"].startswith("ZPlus(") and plus["classifier.0"].startswith("Epsilon(")
    ab = relevance(net, x, composite="epsilon_alpha2_beta1").meta["rules"]
    assert ab["features.3"].startswith("AlphaBeta(alpha=2.0, beta=1.0")
    flat = relevance(net, x, composite="epsilon", rules={"features.0": "flat"})
    assert flat.meta["rules"]["features.0"].startswith("Flat(")


# --- canonizing: BatchNorm folding, residual sums ----------------------------------------------
@pytest.mark.parametrize("arch", ["vgg_small", "resnet_small"])
def test_folded_batchnorm_gives_identical_outputs(arch):
    model = randomize_batchnorm_(zoo_model(arch)).train()
    before = copy.deepcopy(model)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = rand(5, 1, 8, 8, seed=5)
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
        assert torch.allclose(folded(x), want, rtol=1e-5, atol=1e-5)
    assert state_equal(model, before) and model.training  # the input model is untouched
    c = canonize(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(c.folded) == n_bn and c.traced and c.unhandled == ()
    if arch == "resnet_small":
        assert c.folded["layers.1.shortcut.1"] == "layers.1.shortcut.0"
        assert c.sums == ("layers.0.add", "layers.1.add", "layers.2.add")


def test_resnet_relevance_is_conserved_across_residual_sums():
    model = zoo_model("resnet_small", seed=1)
    nn.init.zeros_(model.fc.bias)  # default BatchNorm statistics fold to zero biases
    x = rand(4, 1, 8, 8, seed=6)
    a = relevance(model, x, composite="epsilon", epsilon=1e-9)
    assert a.meta["backend"] == "workbench" and "BatchNorm" in a.meta["captum_skipped"]
    assert torch.allclose(a.totals, a.meta["score"], rtol=1e-3)
    # with real BatchNorm shifts the whole network absorbs relevance, but every sum conserves it
    randomize_batchnorm_(model, seed=2)
    lrp = LRP("epsilon_plus")
    with torch.enable_grad(), lrp.context(model, record=True) as ex:
        inp = x.clone().requires_grad_(True)
        out = ex.module(inp)
        torch.autograd.grad(out, inp, torch.nn.functional.one_hot(out.argmax(1), 10) * out)
        sums = [(n, r, rin) for n, r, rin in ex.records if n.endswith(".add")]
    assert len(sums) == 3
    for name, r_out, (r_a, r_b) in sums:
        total = r_out.flatten(1).sum(1)
        assert torch.allclose(r_a.flatten(1).sum(1) + r_b.flatten(1).sum(1), total,
                              rtol=1e-4, atol=1e-7), name
        assert r_a.abs().sum() > 0 and r_b.abs().sum() > 0  # both branches get a share


# --- captum cross-check and backend choice ----------------------------------------------------
@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
def test_captum_and_workbench_agree_on_epsilon(arch):
    model, x = zoo_model(arch, seed=2), rand(6, 1, 8, 8, seed=7)
    a = relevance(model, x, composite="epsilon", backend="captum")
    b = relevance(model, x, composite="epsilon", backend="workbench")
    assert a.meta["backend"] == "captum" and b.meta["backend"] == "workbench"
    assert torch.equal(a.target, b.target)
    scale = float(b.maps.abs().max())
    assert torch.allclose(a.maps, b.maps, rtol=0, atol=1e-4 * scale)
    assert relevance(model, x, composite="epsilon").meta["backend"] == "captum"  # auto


def test_auto_backend_falls_back_and_captum_refuses_what_it_cannot_do():
    x = rand(2, 1, 8, 8)
    a = relevance(zoo_model("lenet5"), x)  # epsilon_plus: zplus on convolutions
    assert a.meta["backend"] == "workbench" and "zplus" in a.meta["captum_skipped"]
    with pytest.raises(UnsupportedLayerError, match="BatchNorm"):
        relevance(zoo_model("vgg_small"), x, composite="epsilon", backend="captum")


def test_reused_modules_are_explained():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5, bias=False)
            self.relu = nn.ReLU()
            self.out = nn.Linear(5, 2, bias=False)

        def forward(self, x):
            return self.out(self.relu(self.lin(self.relu(self.lin(x)))))

    torch.manual_seed(0)
    net, x = Twice(), rand(4, 5, seed=8, low=-1.0)
    a = relevance(net, x, composite="epsilon", epsilon=1e-9)
    assert a.meta["backend"] == "workbench" and a.meta["reused"] == ["lin", "relu"]
    assert torch.allclose(a.totals, a.meta["score"], rtol=1e-4, atol=1e-6)


# --- the contract of every registered attribution method --------------------------------------
FAST = {"integrated_gradients": {"steps": 8}, "occlusion": {"window": 3, "stride": 2}}


def run(name, model, x, target=None, **kw):
    return ATTRIBUTIONS[name](model, x, target, **{**FAST.get(name, {}), **kw})


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "resnet_small"])
@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_attribution_contract(name, arch):
    model = randomize_batchnorm_(zoo_model(arch)).train()
    before, hooks = copy.deepcopy(model), hook_count(model)
    x = rand(3, 1, 8, 8, seed=9)
    x_before = x.clone()
    a = run(name, model, x)
    assert state_equal(model, before) and hook_count(model) == hooks and model.training
    assert torch.equal(x, x_before) and not x.requires_grad
    assert a.method == name and a.maps.shape == x.shape and torch.isfinite(a.maps).all()
    assert not a.maps.requires_grad and a.maps.abs().sum() > 0
    with torch.no_grad():
        pred = copy.deepcopy(model).eval()(x).argmax(1)
    assert torch.equal(a.target, pred)
    assert torch.equal(run(name, model, x).maps, a.maps)  # deterministic
    with torch.inference_mode():  # works inside a notebook's no-grad / inference block
        assert torch.equal(run(name, model, x.clone()).maps, a.maps)
    b = run(name, model, x, target=[1, 2, 3])
    assert b.target.tolist() == [1, 2, 3] and not torch.equal(b.maps, a.maps)
    assert b.meta["score"].shape == (3,)


class _BackwardBomb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom in backward")


class Bomb(nn.Module):
    """Fails in every backward pass, and in the forward pass after ``limit`` calls (counted
    over all copies), so every method fails half-way through."""

    calls = 0
    limit = 2

    def forward(self, x):
        Bomb.calls += 1
        if Bomb.calls > Bomb.limit:
            raise RuntimeError("boom in forward")
        if torch.isfinite(x).all():  # data-dependent: torch.fx cannot trace it, LRP runs it too
            return _BackwardBomb.apply(x)
        return x


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_no_hooks_left_after_an_error(name):
    model = zoo_model("lenet5")
    model.classifier.insert(1, Bomb())
    before, hooks = copy.deepcopy(model), hook_count(model)
    Bomb.calls = 0
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(name, model, rand(2, 1, 8, 8))
    assert Bomb.calls >= 2  # it failed after the method had started
    assert state_equal(model, before) and hook_count(model) == hooks


class FailingRule(Epsilon):
    def relevance(self, module, inputs, R):
        raise RuntimeError("boom in a rule")


def test_no_hooks_left_after_a_rule_fails():
    model = zoo_model("resnet_small")
    before = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="boom in a rule"):
        relevance(model, rand(2, 1, 8, 8), rules={"layers.1.conv1": FailingRule()})
    assert state_equal(model, before) and hook_count(model) == 0
    lrp = LRP("epsilon", rules={"layers.1.add": FailingRule()})
    with pytest.raises(RuntimeError, match="boom in a rule"):
        with torch.enable_grad(), lrp.context(model) as ex:
            x = rand(2, 1, 8, 8).requires_grad_(True)
            ex.module(x).sum().backward()
    assert hook_count(ex.module) == 0


def test_untraceable_models_fall_back_to_sequential_folding():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > -1e9 else -x  # data-dependent: torch.fx cannot trace it

    model = randomize_batchnorm_(zoo_model("vgg_small"))
    model.features.insert(0, Gate())
    x = rand(3, 1, 8, 8)
    c = canonize(model)
    assert not c.traced and len(c.folded) == 6 and c.folded["features.2"] == "features.1"
    with torch.no_grad():
        assert torch.allclose(c.module(x), model.eval()(x), atol=1e-5)
    with pytest.warns(UserWarning, match="no rule for"):
        a = relevance(model, x, composite="epsilon_plus")
    assert a.meta["traced"] is False and a.meta["unhandled"] == ["features.0 (Gate)"]
    assert torch.isfinite(a.maps).all() and a.maps.abs().sum() > 0


def test_lrp_context_removes_its_hooks_after_an_error():
    model = zoo_model("resnet_small")
    lrp = LRP("epsilon_gamma_box")
    with pytest.raises(RuntimeError, match="inside"):
        with lrp.context(model) as ex:
            inside = hook_count(ex.module)
            raise RuntimeError("inside the context")
    assert inside == len(ex.rules) > 10
    assert hook_count(ex.module) == 0 and hook_count(model) == 0
    assert ex.module is not model


def test_gradient_methods_match_their_definitions():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    x = rand(2, 4, seed=10, low=-1.0)
    w = lin.weight.detach()
    sal = ATTRIBUTIONS["saliency"](lin, x, 1)
    assert torch.allclose(sal.maps, w[1].abs().expand(2, 4))
    ig = ATTRIBUTIONS["integrated_gradients"](lin, x, 1, steps=4)
    assert torch.allclose(ig.maps, x * w[1], atol=1e-6)  # exact for a linear model
    occ = ATTRIBUTIONS["occlusion"](lin, x, 1, window=1)
    assert torch.allclose(occ.maps, x * w[1], atol=1e-6)  # the logit drop of each feature
    net = zoo_model("lenet5")
    xi = rand(2, 1, 8, 8, seed=11)
    ig = ATTRIBUTIONS["integrated_gradients"](net, xi, steps=64)
    assert float(ig.meta["delta"].abs().max()) < 1e-3 * float(ig.meta["score"].abs().max()) + 1e-5


# --- relevance preservation ----------------------------------------------------------------------
def test_preservation_of_a_map_with_itself_and_with_a_variant(fresh_session):
    x = fresh_session.data.x_test[:6]
    base = fresh_session.base.model
    a = relevance(base, x, composite="epsilon_plus")
    same = relevance_preservation(a, a, k=0.1)
    assert same.k == round(0.1 * 64) and np.all(same.spearman == 1.0)
    assert np.all(same.topk_overlap == 1.0) and same.mean == {"spearman": 1.0, "topk_overlap": 1.0}
    assert relevance_preservation(a, -a.maps, k=3).mean_spearman == pytest.approx(-1.0)
    v = fresh_session.prune("magnitude", sparsity=0.5)
    b = relevance(v.model, x, target=a.target, composite="epsilon_plus")
    p = relevance_preservation(a, b, k=10)
    assert np.all(p.targets_match) and p.k == 10
    assert 0.2 < p.mean_spearman < 1.0 and 0.0 < p.mean_topk_overlap <= 1.0
    with pytest.raises(ParameterError, match="shapes"):
        relevance_preservation(a, a.maps[:, :, :4])
    with pytest.raises(ParameterError, match="k"):
        relevance_preservation(a, a, k=0)


# --- the relevance pruner ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(digits) -> Dataset:
    return Dataset("digits-small", digits.x_train[:96], digits.y_train[:96], digits.x_val[:40],
                   digits.y_val[:40], digits.x_test[:40], digits.y_test[:40], digits.classes)


@pytest.mark.parametrize("arch", MODELS)
def test_relevance_pruner_reaches_the_channel_counts(arch, small):
    model = randomize_batchnorm_(zoo_model(arch))
    before = copy.deepcopy(model)
    p = PRUNERS["relevance"](model, 0.5, data=small, samples=48, seed=1)
    assert state_equal(model, before) and hook_count(model) == 0
    layers, original = dict(p.model.named_modules()), dict(model.named_modules())
    for name, (n_before, n_after) in p.info["channels"].items():
        assert original[name].weight.shape[0] == n_before == layers[name].weight.shape[0] + (
            n_before - n_after)
        if name in p.info["kept"]:
            assert n_after == n_before - round(0.5 * n_before)
            assert len(p.info["relevance"][name]) == n_before
    assert p.info["channels"]["fc"] == [10, 10]
    with torch.no_grad():
        out = p.model(small.x_test[:8])
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert sum(q.numel() for q in p.model.parameters()) < sum(
        q.numel() for q in model.parameters())
    again = PRUNERS["relevance"](model, 0.5, data=small, samples=48, seed=1)
    assert again.info["kept"] == p.info["kept"]  # same seed, same result
    assert again.info["relevance"] == p.info["relevance"]


def test_relevance_pruner_removes_the_least_relevant_neurons(small):
    torch.manual_seed(0)
    model = zoo_model("mlp")
    dead = [3, 17, 40]
    with torch.no_grad():
        model.features[3].weight[:, dead] = 0.0  # hidden neurons of features.1 nobody reads
    p = PRUNERS["relevance"](model, 0.25, data=small, samples=32, exclude=["features.3"])
    scores = torch.tensor(p.info["relevance"]["features.1"])
    assert torch.all(scores[dead] == 0)
    kept = set(p.info["kept"]["features.1"])
    assert not kept & set(dead) and len(kept) == 96
    ranked = torch.argsort(-scores, stable=True)[:96].tolist()
    assert kept == set(ranked)


def test_channel_relevance_sums_to_the_layer_relevance():
    net, x = bias_free_mlp(), rand(5, 1, 4, 4, seed=12, low=-1.0)
    r = channel_relevance(net, x, target=0, composite="epsilon", epsilon=1e-9, absolute=False)
    with torch.no_grad():
        logit = net(x)[:, 0].sum()
    for name in ("1", "3"):  # bias-free: every layer carries the whole relevance
        assert r[name].sum() == pytest.approx(float(logit), rel=1e-4)
    assert r["5"].tolist()[1:] == [0.0, 0.0] and r["5"][0] == pytest.approx(float(logit), rel=1e-5)


def test_relevance_pruner_parameters(small):
    model = zoo_model("lenet5")
    with pytest.raises(ParameterError, match="data"):
        PRUNERS["relevance"](model, 0.5)
    with pytest.raises(ParameterError, match="target"):
        PRUNERS["relevance"](model, 0.5, data=small, target="truth")
    with pytest.raises(ParameterError, match="samples"):
        PRUNERS["relevance"](model, 0.5, data=small, samples=0)
    with pytest.raises(UnknownNameError):
        PRUNERS["relevance"](model, 0.5, data=small, composite="nope")
    p = PRUNERS["relevance"](model, 0.5, data=small, samples=16, target="predicted",
                             composite="epsilon_plus")
    assert p.info["target"] == "predicted" and p.info["composite"] == "epsilon_plus"

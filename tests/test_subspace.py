"""Active subspaces, ASNet, the universal active-subspace attack and the pruning criterion.

Every value is checked against an independent computation: closed-form covariances of linear
models, per-sample gradients taken one sample at a time, NumPy eigen-decompositions and least
squares.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.analysis.asnet import HermiteFeatures, asnet, multi_indices, truncate
from workbench.analysis.attack import attack_curve
from workbench.analysis.subspace import (active_dimension, active_subspace, all_layers,
                                         layer_gradients, subspace_from_gradients)
from workbench.errors import DataError, ParameterError, UnsupportedLayerError
from workbench.prune import PRUNERS
from workbench.prune.active import active_neuron_counts, channel_counts
from workbench.prune.structured import cut_channels
from tests.conftest import hook_count, state_equal, zoo_model


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _inputs_with_second_moment(n: int, lam: torch.Tensor, seed: int) -> torch.Tensor:
    """``X`` (n × d) with ``XᵀX / n = diag(lam)`` exactly."""
    z = torch.randn(n, len(lam), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    q, _ = torch.linalg.qr(z)  # orthonormal columns: qᵀq = I
    return q * math.sqrt(n) * lam.sqrt()


def _half_squared_norm(out, y):
    return 0.5 * (out ** 2).sum(1)


def _match_up_to_sign(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a * b).sum(0))


# --- analytic covariances -------------------------------------------------------------------

def test_quadratic_target_recovers_the_analytic_spectrum():
    """f(x) = ½‖Wx‖² with W orthogonal: the gradient at the layer is h = Wx, so
    C = W diag(λ) Wᵀ when XᵀX/n = diag(λ): eigenvalues λ, eigenvectors the columns of W.
    At the input the gradient is WᵀWx = x, so C = diag(λ)."""
    lam = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    W = _orthogonal(6, seed=1)
    net = nn.Sequential(nn.Linear(6, 6, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(W)
    x = _inputs_with_second_moment(300, lam, seed=2)
    y = torch.zeros(300, dtype=torch.long)
    sp = active_subspace(net, x, y, "0", target=_half_squared_norm, batch_size=64)
    assert sp.method == "exact" and sp.neuron_shape == (6,) and sp.n_samples == 300
    np.testing.assert_allclose(sp.eigenvalues, lam.numpy(), rtol=1e-10)
    assert sp.total_variance == pytest.approx(float(lam.sum()), rel=1e-12)
    assert np.all(_match_up_to_sign(sp.eigenvectors, W.numpy()) > 1 - 1e-10)
    # cumulative fractions 8/15.75 = .508, 12/15.75 = .762, 14/15.75 = .889, 15/15.75 = .952
    assert sp.active_dim == 4
    assert active_subspace(net, x, y, "0", target=_half_squared_norm, threshold=0.88).active_dim == 3
    assert active_subspace(net, x, y, "0", target=_half_squared_norm, threshold=0.5).active_dim == 1
    inp = active_subspace(net, x, y, "input", target=_half_squared_norm)
    np.testing.assert_allclose(inp.eigenvalues, lam.numpy(), rtol=1e-10)
    assert np.all(_match_up_to_sign(inp.eigenvectors, np.eye(6)) > 1 - 1e-10)


def test_logit_target_of_a_linear_model_has_rank_two():
    """f(x) = a_y·(Wx + b): the gradient at the first layer is the row a_y of the head, so with
    balanced labels C = ½ a₀a₀ᵀ + ½ a₁a₁ᵀ; orthogonal a₀ = 3e₀, a₁ = e₁ give λ = (4.5, 0.5, 0, 0)."""
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[3.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.arange(40) % 2
    sp = active_subspace(net, x, y, "0", target="logit", threshold=0.9)
    np.testing.assert_allclose(sp.eigenvalues, [4.5, 0.5, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(sp.eigenvectors[:, :2], np.eye(4)[:, :2], atol=1e-12)
    assert sp.active_dim == 1
    assert active_subspace(net, x, y, "0", target="logit").active_dim == 2
    # a fixed class: C = a₁a₁ᵀ
    assert active_subspace(net, x, y, "0", target=1).eigenvalues[:2].tolist() == \
        pytest.approx([1.0, 0.0], abs=1e-12)


def test_loss_gradients_match_the_closed_form_and_per_sample_autograd():
    model = zoo_model("lenet5").eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    # at the logits: ∂CE/∂z = softmax(z) - onehot(y)
    with torch.no_grad():
        z = model(x)
    G = layer_gradients(model, x, y, "fc")
    torch.testing.assert_close(G, F.softmax(z, 1) - F.one_hot(y, 10).float(), atol=1e-6,
                               rtol=1e-5)
    # a conv layer, one sample at a time: channel pooling is the gradient of the conv bias
    conv = model.features[3]
    full = layer_gradients(model, x, y, "features.3")
    pooled = layer_gradients(model, x, y, "features.3", pool="channel")
    assert full.shape == (6, 16 * 4 * 4) and pooled.shape == (6, 16)
    for i in range(6):
        gb, = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), conv.bias)
        torch.testing.assert_close(pooled[i], gb, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(full[i].view(16, 16).sum(1), gb, atol=1e-6, rtol=1e-5)
    # at the input, against per-sample autograd
    G_in = layer_gradients(model, x, y, "input")
    for i in range(6):
        xi = x[i:i + 1].clone().requires_grad_(True)
        gx, = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        torch.testing.assert_close(G_in[i], gx.flatten(), atol=1e-6, rtol=1e-5)
    assert model.features[3].bias.grad is None  # nothing accumulated into the model


def test_active_dimension_counts_leading_eigenvalues():
    assert active_dimension([4.0, 3.0, 2.0, 1.0], 0.7) == 2
    assert active_dimension([4.0, 3.0, 2.0, 1.0], 0.71) == 3
    assert active_dimension([4.0, 3.0, 2.0, 1.0], 1.0) == 4
    assert active_dimension([4.0, 3.0], 0.5, total=20.0) == 2  # truncated spectrum: capped
    assert active_dimension([1.0, -1e-17], 1.0) == 1  # round-off below zero is zero
    assert active_dimension([0.0, 0.0]) == 0
    for bad in (0.0, 1.5, "x", True):
        with pytest.raises(ParameterError, match="threshold"):
            active_dimension([1.0], bad)


# --- sketches -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conv_gradients(default_session):
    d = default_session.data
    return layer_gradients(default_session.base.model, d.x_train[:600], d.y_train[:600],
                           "features.0")


def test_randomized_and_frequent_directions_agree_with_exact(conv_gradients):
    G = conv_gradients  # 600 × 384
    exact = subspace_from_gradients(G, method="exact")
    assert exact.eigenvectors.shape == (384, 384)
    np.testing.assert_allclose(exact.eigenvalues,
                               np.linalg.eigvalsh((G.double().T @ G.double()).numpy() / 600)[::-1],
                               rtol=1e-8, atol=1e-14)
    rand = subspace_from_gradients(G, method="randomized", rank=10, seed=0)
    fd = subspace_from_gradients(G, method="fd", rank=10)
    assert rand.eigenvalues.shape == fd.eigenvalues.shape == (10,)
    np.testing.assert_allclose(rand.eigenvalues[:5], exact.eigenvalues[:5], rtol=1e-6)
    # Frequent Directions with ℓ = 20 rows: 0 ≤ λ_i − λ̂_i ≤ min_k Σ_{j>k} λ_j / (ℓ − k)
    # (Ghashami et al. 2016), and the leading eigenvalue is within 2 %
    lam = exact.eigenvalues
    bound = min(lam[k:].sum() / (20 - k) for k in range(20))
    err = lam[:10] - fd.eigenvalues
    assert np.all(err >= -1e-12) and np.all(err <= bound)
    assert fd.eigenvalues[0] == pytest.approx(lam[0], rel=0.02)
    assert np.all(_match_up_to_sign(rand.eigenvectors[:, :5], exact.eigenvectors[:, :5]) > 0.999)
    assert np.all(_match_up_to_sign(fd.eigenvectors[:, :3], exact.eigenvectors[:, :3]) > 0.99)
    # the trace is exact whatever the method, so active dimensions are measured against it
    assert rand.total_variance == pytest.approx(exact.total_variance, rel=1e-9)
    assert fd.active_dim == min(10, exact.active_dim)


def test_streaming_methods_match_the_matrix_path(default_session):
    d = default_session.data
    kw = dict(n_samples=300, seed=4)
    exact = active_subspace(default_session.base, layer="features.5", method="exact", **kw)
    fd = active_subspace(default_session.base, layer="features.5", method="fd", rank=8, **kw)
    assert fd.method == "fd" and exact.neuron_shape == (16, 2, 2)
    np.testing.assert_allclose(fd.eigenvalues[:3], exact.eigenvalues[:3], rtol=0.05)
    # the Variant brought its training split: the same as passing it explicitly
    again = active_subspace(default_session.base.model, d.x_train, d.y_train, "features.5",
                            method="exact", **kw)
    np.testing.assert_array_equal(again.eigenvalues, exact.eigenvalues)


def test_all_layers_covers_every_layer_in_one_pass(default_session):
    spaces = all_layers(default_session.base, n_samples=200, pool="channel")
    assert list(spaces) == ["features.0", "features.3", "classifier.0", "classifier.2", "fc"]
    counts = channel_counts(default_session.base.model)
    for name, sp in spaces.items():
        assert sp.neuron_shape == (counts[name],) and len(sp.eigenvalues) == counts[name]
        assert np.all(np.diff(sp.eigenvalues) <= 1e-12)
        assert sp.explained[-1] == pytest.approx(1.0)
        np.testing.assert_allclose(sp.channel_importance(len(sp.eigenvalues)).sum(),
                                   sp.total_variance, rtol=1e-9)
        single = active_subspace(default_session.base, layer=name, n_samples=200, pool="channel")
        np.testing.assert_allclose(single.eigenvalues, sp.eigenvalues, rtol=1e-9, atol=1e-15)


def test_bad_arguments_are_clear_errors(default_session):
    m = default_session.base.model
    x, y = default_session.data.x_test[:8], default_session.data.y_test[:8]
    with pytest.raises(ParameterError, match="no_layer"):
        active_subspace(m, x, y, "no_layer")
    with pytest.raises(ParameterError, match="pool"):
        active_subspace(m, x, y, "fc", pool="max")
    with pytest.raises(ParameterError, match="method"):
        active_subspace(m, x, y, "fc", method="svd")
    with pytest.raises(ParameterError, match="target"):
        active_subspace(m, x, y, "fc", target="margin")
    with pytest.raises(DataError, match="cannot process"):
        active_subspace(m, torch.rand(4, 3, 5, 5), y[:4], "fc")
    with pytest.raises(DataError, match="match"):
        active_subspace(m, x, y[:3], "fc")
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(UnsupportedLayerError, match="more than once"):
        active_subspace(twice, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), "0")
    assert hook_count(twice) == 0


def test_model_is_untouched_and_hooks_removed_even_on_failure():
    model = zoo_model("vgg_small").train()
    model.features[1].eval()  # mixed train/eval flags must come back as they were
    flags = [m.training for m in model.modules()]
    before = copy.deepcopy(model)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    all_layers(model, x, y, pool="channel")
    active_subspace(model, x, y, "features.3", method="fd", rank=4)

    def boom(out, y):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        all_layers(model, x, y, target=boom)
    assert state_equal(model, before) and hook_count(model) == 0
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


# --- universal attack -----------------------------------------------------------------------

def test_attack_beats_a_random_direction_of_equal_norm(default_session):
    model = default_session.base.model
    before = copy.deepcopy(model)
    curve = attack_curve(default_session.base, norms=[0.0, 1.0, 1.5, 2.0], seed=0)
    assert state_equal(model, before) and hook_count(model) == 0
    assert curve.success_as[0] == curve.success_random[0] == curve.success_sign[0] == 0.0
    assert curve.perturbation.shape == (1, 8, 8)
    assert np.linalg.norm(curve.perturbation) == pytest.approx(1.0, abs=1e-5)
    assert curve.n_eval > 150 and curve.meta["n_fit"] == 180
    at = {n: i for i, n in enumerate(curve.norms)}
    assert curve.success_as[at[1.5]] > curve.success_random[at[1.5]] + 0.2
    assert curve.success_as[at[2.0]] > 2 * curve.success_random[at[2.0]]
    assert np.all(np.diff(curve.success_random) >= 0)

    # the direction is the top eigenvector of the input-gradient covariance of the fit half,
    # recomputed one sample at a time with NumPy
    x, y = default_session.data.x_test, default_session.data.y_test
    fit = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:180]
    rows = []
    for i in fit.tolist():
        xi = x[i:i + 1].clone().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        rows.append(g.flatten().double().numpy())
    G = np.array(rows)
    lam, vecs = np.linalg.eigh(G.T @ G / len(G))
    assert abs(float(vecs[:, -1] @ curve.perturbation.ravel())) > 0.999
    assert curve.meta["eigenvalues"][0] == pytest.approx(lam[-1], rel=1e-5)
    sign = np.sign(np.sign(G).sum(0))
    np.testing.assert_allclose(curve.directions["sign"].ravel(), sign / np.linalg.norm(sign),
                               atol=1e-6)


def test_attack_arguments_are_checked(default_session):
    for bad in ([], [-1.0], "x", [float("nan")]):
        with pytest.raises(ParameterError, match="norms"):
            attack_curve(default_session.base, norms=bad)
    with pytest.raises(ParameterError, match="holdout"):
        attack_curve(default_session.base, norms=[1.0], holdout=1.0)
    with pytest.raises(ParameterError, match="clip"):
        attack_curve(default_session.base, norms=[1.0], clip=(1.0, 0.0))


# --- ASNet ----------------------------------------------------------------------------------

def test_truncate_returns_the_layer_output(default_session):
    model = default_session.base.model
    pre = truncate(model, "features.5")
    x = default_session.data.x_test[:5]
    seen = {}
    h = model.features[5].register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(pre(x), seen["out"])
    assert not any(n.startswith("classifier") or n == "fc" for n, _ in pre.named_modules())
    with pytest.raises(ParameterError, match="nope"):
        truncate(model, "nope")


def test_hermite_basis_has_the_pce_size_and_values():
    assert len(multi_indices(5, 2)) == math.comb(7, 2)
    assert len(multi_indices(3, 3)) == math.comb(6, 3)
    f = HermiteFeatures(torch.tensor([1.0, -1.0, 0.0]), torch.tensor([2.0, 1.0, 0.5]), degree=3)
    z = torch.tensor([[3.0, 1.0, 0.5]])  # standardised: u = (1, 2, 1)
    u = {0: 1.0, 1: 2.0, 2: 1.0}
    he = [lambda t: 1.0, lambda t: t, lambda t: t * t - 1, lambda t: t ** 3 - 3 * t]
    expected = [math.prod(he[k](u[j]) for j, k in enumerate(a))
                for a in multi_indices(3, 3).tolist()]
    torch.testing.assert_close(f(z)[0], torch.tensor(expected))


def test_asnet_is_smaller_and_reports_its_accuracy(default_session):
    model = default_session.base.model
    before = copy.deepcopy(model)
    res = asnet(default_session.base, layer="features.5", r=6, epochs=10)
    assert state_equal(model, before) and hook_count(model) == 0
    assert res.r == 6 and res.layer == "features.5" and res.meta["n_basis"] == math.comb(8, 2)
    assert res.params < res.base_params and res.macs < res.base_macs
    assert res.params == sum(p.numel() for p in res.model.parameters())
    # pre-model: conv1 + conv2 (2572), projection 64×6, head 28 basis functions × 10 classes
    assert res.params == 156 + 2416 + 64 * 6 + 28 * 10
    assert res.base_params == sum(p.numel() for p in model.parameters())
    assert res.base_accuracy == pytest.approx(default_session.base.metrics.accuracy)
    assert res.accuracy > 0.5  # chance is 0.1
    with torch.no_grad():
        out = res.model(default_session.data.x_test[:4])
    assert out.shape == (4, 10)
    mlp = asnet(default_session.base, layer="features.5", r=6, head="mlp", hidden=16, epochs=10)
    assert mlp.params == 2572 + 64 * 6 + 6 * 16 + 16 + 16 * 10 + 10 and mlp.accuracy > 0.5


def test_least_squares_pce_equals_a_quadratic_fit_of_the_logits(default_session):
    """Without training, the PCE head is the least-squares degree-2 polynomial fit of the
    original logits on the projected features (the reference's PCEModel.Training); the Hermite
    basis spans the same space as plain monomials, so NumPy's lstsq on [1, z, z_i z_j] agrees."""
    d = default_session.data
    res = asnet(default_session.base, layer="features.5", r=4, epochs=0)
    with torch.no_grad():
        z = res.model.projection(torch.flatten(res.model.pre(d.x_train), 1)).double().numpy()
        got = res.model(d.x_train).double().numpy()
        logits = default_session.base.model(d.x_train).double().numpy()
    cols = [np.ones(len(z))] + [z[:, i] for i in range(4)] + \
        [z[:, i] * z[:, j] for i in range(4) for j in range(i, 4)]
    phi = np.stack(cols, 1)
    coef, *_ = np.linalg.lstsq(phi, logits, rcond=None)
    np.testing.assert_allclose(got, phi @ coef, atol=2e-3 * np.abs(logits).max())
    assert res.meta["fit_accuracy"] == pytest.approx(
        float((np.argmax(phi @ coef, 1) == d.y_train.numpy()).mean()), abs=0.01)


def test_asnet_arguments_are_checked(default_session):
    with pytest.raises(ParameterError, match="head"):
        asnet(default_session.base, layer="features.5", head="tree")
    with pytest.raises(ParameterError, match="layer"):
        asnet(default_session.base)
    with pytest.raises(ParameterError, match="r=100"):
        asnet(default_session.base, layer="features.5", r=100)
    with pytest.raises(DataError, match="Dataset"):
        asnet(default_session.base.model, layer="features.5")


# --- the pruning criterion ------------------------------------------------------------------

def test_active_subspace_pruner_slims_the_lowest_active_energy_channels(default_session):
    model, data = default_session.base.model, default_session.data
    before = copy.deepcopy(model)
    p = PRUNERS["active_subspace"](model, 0.5, data=data, seed=0, samples=400)
    assert PRUNERS["active_subspace"].structured and PRUNERS["active_subspace"].needs_data
    assert state_equal(model, before) and hook_count(model) == 0 and p.masks == {}
    assert p.info["channels"]["features.0"] == [6, 3]
    assert p.info["channels"]["features.3"] == [16, 8]
    assert p.info["channels"]["classifier.0"] == [120, 60]
    assert p.info["channels"]["fc"] == [10, 10]
    slim_params = sum(q.numel() for q in p.model.parameters())
    assert slim_params < sum(q.numel() for q in model.parameters())
    # the slimmed model computes the original with the removed channels cut
    ref = cut_channels(model, _inputs_of(p.info["kept"]))
    with torch.no_grad():
        torch.testing.assert_close(p.model(data.x_test), ref(data.x_test), atol=1e-4, rtol=1e-4)

    # kept channels of features.0 = top half of Σ_{k ≤ active} λ_k v_k[c]², recomputed with NumPy
    from workbench.data.dataset import stratified_indices

    idx = stratified_indices(data.y_train, 400, 0)
    G = layer_gradients(model, data.x_train[idx], data.y_train[idx], "features.0",
                        pool="channel").double().numpy()
    lam, vecs = np.linalg.eigh(G.T @ G / len(G))
    lam, vecs = lam[::-1], vecs[:, ::-1]
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.95) + 1)
    assert p.info["active_dims"]["features.0"] == k
    score = (vecs[:, :k] ** 2 * lam[:k]).sum(1)
    assert p.info["kept"]["features.0"] == sorted(np.argsort(-score, kind="stable")[:3].tolist())


def _inputs_of(kept):
    """The ``plan`` that :func:`cut_channels` needs, from the kept channels of lenet5."""
    return {"inputs": {
        "features.3": kept["features.0"],
        "classifier.0": [c * 4 + j for c in kept["features.3"] for j in range(4)],
        "classifier.2": kept["classifier.0"],
        "fc": kept["classifier.2"],
    }}


def test_active_neuron_counts_sit_next_to_channel_counts(default_session):
    counts = active_neuron_counts(default_session.base, n_samples=300)
    channels = channel_counts(default_session.base.model)
    assert list(counts) == list(channels)
    assert all(1 <= counts[n] <= channels[n] for n in counts)
    spaces = all_layers(default_session.base, n_samples=300, pool="channel")
    assert counts == {n: sp.active_dim for n, sp in spaces.items()}
    slim = PRUNERS["l1_structured"](default_session.base.model, 0.5).model
    assert channel_counts(slim)["features.3"] == 8

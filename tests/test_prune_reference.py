"""Each pruning criterion against an independent computation of its definition."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from workbench.data import Dataset
from workbench.evaluate import evaluate
from workbench.prune import PRUNERS
from workbench.prune.admm import project
from workbench.prune.base import masks_from_scores, prunable_layers
from workbench.prune.gradual import cubic_schedule
from workbench.prune.lamp import lamp_scores
from workbench.prune.lottery import round_sparsities
from workbench.prune.saliency import hutchinson_diagonal, sample_batches, taylor_scores
from workbench.train import fit
from tests.conftest import zoo_model


@pytest.fixture(scope="module")
def small(digits) -> Dataset:
    return Dataset("digits-small", digits.x_train[:128], digits.y_train[:128], digits.x_val[:20],
                   digits.y_val[:20], digits.x_test[:20], digits.y_test[:20], digits.classes)


def smallest_k_removed(scores: dict, k: int) -> dict:
    """Masks removing the k smallest scores over all layers (numpy, stable ties)."""
    names = list(scores)
    flat = np.concatenate([scores[n].detach().numpy().ravel() for n in names])
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = torch.from_numpy(keep[start:start + size].reshape(scores[n].shape))
        start += size
    return out


def assert_masks_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_global_magnitude_removes_the_k_smallest_weights():
    model = zoo_model("lenet5")
    weights = {n: m.weight.abs() for n, m in prunable_layers(model).items()}
    k = round(0.8 * sum(w.numel() for w in weights.values()))
    got = PRUNERS["global_magnitude"](model, 0.8).masks
    assert_masks_equal(got, smallest_k_removed(weights, k))


def test_layer_magnitude_equals_torch_l1_unstructured():
    model = zoo_model("vgg_small")
    masks = PRUNERS["magnitude"](model, 0.37).masks
    for name, layer in prunable_layers(model).items():
        ref = copy.deepcopy(layer)
        torch_prune.l1_unstructured(ref, "weight", amount=0.37)
        assert torch.equal(masks[name], ref.weight_mask.bool()), name


def test_lamp_scores_by_hand():
    w = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
    # ascending squares 0.25, 1, 4, 9 with tail sums 14.25, 14, 13, 9
    expected = torch.tensor([[1 / 14, 9 / 9], [4 / 13, 0.25 / 14.25]])
    assert torch.allclose(lamp_scores(w), expected)


def test_lamp_keeps_a_small_layer_that_global_magnitude_empties():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -3.0], [2.0, 0.5]]))
        model[1].weight.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    # layer 1 scores 0.01/0.30, 0.04/0.29, 0.09/0.25, 1: the four lowest of both layers are
    # 0.5/14.25 (layer 0), 0.0333, 1/14 (layer 0), 0.1379
    masks = PRUNERS["lamp"](model, 0.5).masks
    assert masks["0"].tolist() == [[False, True], [True, False]]
    assert masks["1"].tolist() == [[False, False], [True, True]]
    assert not PRUNERS["global_magnitude"](model, 0.5).masks["1"].any()


def test_taylor_score_is_w_times_grad(small):
    model = zoo_model("mlp")
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(small.x_train), small.y_train).backward()
    n = len(small.x_train)
    scores = taylor_scores(model, small, batches=1, batch_size=n)  # one batch = all the data
    for name, layer in prunable_layers(ref).items():
        hand = (layer.weight * layer.weight.grad).abs().detach()
        assert torch.allclose(scores[name], hand, rtol=1e-4, atol=1e-7), name
    # several batches: the mean of the per-batch scores
    many = taylor_scores(model, small, batches=3, batch_size=32, seed=5)
    per_batch = []
    for x, y in sample_batches(small, 3, 32, seed=5):
        m = copy.deepcopy(model)
        F.cross_entropy(m(x), y).backward()
        per_batch.append((m.fc.weight * m.fc.weight.grad).abs().detach())
    assert torch.allclose(many["fc"], sum(per_batch) / 3, rtol=1e-4, atol=1e-7)
    # the pruner removes the lowest scores per layer
    masks = PRUNERS["taylor"](model, 0.6, data=small, batches=1, batch_size=n).masks
    for name, s in scores.items():
        want = smallest_k_removed({name: s}, round(0.6 * s.numel()))[name]
        assert (masks[name] == want).float().mean() > 0.99, name  # near-ties may swap


def test_snip_ranks_g_times_w_over_all_layers(small):
    model = zoo_model("lenet5")
    ref = copy.deepcopy(model)
    (x, y), = sample_batches(small, 1, 64, seed=2)
    F.cross_entropy(ref(x), y).backward()
    sens = {n: (m.weight * m.weight.grad).abs().detach() for n, m in prunable_layers(ref).items()}
    k = round(0.7 * sum(s.numel() for s in sens.values()))
    masks = PRUNERS["snip"](model, 0.7, data=small, batch_size=64, seed=2).masks
    want = smallest_k_removed(sens, k)
    total = sum(m.numel() for m in want.values())
    agree = sum(int((masks[n] == want[n]).sum()) for n in want) / total
    assert agree > 0.999


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).eval()


def exact_hessian(model, x, y) -> torch.Tensor:
    """Full Hessian of the loss w.r.t. both weight matrices (flattened together)."""
    params = dict(model.named_parameters())
    shapes = [params["0.weight"].shape, params["2.weight"].shape]
    sizes = [s.numel() for s in shapes]

    def loss(v):
        w0, w2 = v.split(sizes)
        p = {**{k: t.detach() for k, t in params.items()},
             "0.weight": w0.view(shapes[0]), "2.weight": w2.view(shapes[1])}
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    v = torch.cat([params["0.weight"].detach().flatten(), params["2.weight"].detach().flatten()])
    return torch.autograd.functional.hessian(loss, v), sizes


def test_hutchinson_diagonal_matches_the_exact_hessian():
    model = tiny_net()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 3
    H, sizes = exact_hessian(model, x, y)
    samples = 4000
    est = hutchinson_diagonal(model, x, y, ["0", "2"], samples=samples, seed=0, chunk=samples)
    got = torch.cat([est["0"].flatten(), est["2"].flatten()])
    exact = H.diagonal()
    # Var(z_i (Hz)_i) = sum_{j != i} H_ij^2: allow five standard errors
    off = (H ** 2).sum(1) - exact ** 2
    tol = 5 * (off / samples).sqrt() + 1e-6
    assert torch.all((got - exact).abs() <= tol), (got - exact).abs().max()
    assert (exact.abs() > 2 * tol).float().mean() > 0.5  # zeros would not pass


def test_obd_saliency_ranks_like_the_exact_diagonal():
    model = tiny_net()
    gen = torch.Generator().manual_seed(1)
    data = Dataset("pts", torch.randn(32, 3, generator=gen), torch.arange(32) % 3,
                   torch.randn(3, 3), torch.arange(3), torch.randn(3, 3), torch.arange(3),
                   ("a", "b", "c"))
    H, sizes = exact_hessian(model, data.x_train, data.y_train)
    diag = H.diagonal().split(sizes)
    sal = {n: 0.5 * d.view_as(model[int(n)].weight) * model[int(n)].weight.detach() ** 2
           for n, d in zip(["0", "2"], diag)}
    want = masks_from_scores(sal, 0.5)
    got = PRUNERS["hessian"](model, 0.5, data=data, samples=4000, batch_size=32, chunk=4000).masks
    agree = sum(int((got[n] == want[n]).sum()) for n in want)
    assert agree >= 22  # of 24 weights; only near-ties may swap


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_the_n_largest_of_every_group(n, m):
    model = zoo_model("mlp")
    p = PRUNERS["nm"](model, 0.5, n=n, m=m)
    assert p.info["sparsity"] == 1 - n / m
    for name, layer in prunable_layers(model).items():
        w = layer.weight.detach().numpy().reshape(layer.weight.shape[0], -1, m)
        kept = dict(p.model.named_modules())[name].weight.detach().numpy().reshape(w.shape)
        assert np.all((kept != 0).sum(-1) == n)  # exactly n nonzeros per group of m
        mag = np.abs(w)
        kept_min = np.where(kept != 0, mag, np.inf).min(-1)
        dropped_max = np.where(kept == 0, mag, -np.inf).max(-1)
        assert np.all(kept_min >= dropped_max)
        assert np.array_equal(kept[kept != 0], w[kept != 0])  # kept weights unchanged


def test_cubic_schedule_matches_the_formula():
    s_f, s_i, n = 0.9, 0.1, 5
    expected = [s_f + (s_i - s_f) * (1 - t / n) ** 3 for t in (1, 2, 3, 4, 5)]
    assert cubic_schedule(s_f, n, s_i) == pytest.approx(expected)
    assert cubic_schedule(0.8, 4) == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    assert cubic_schedule(0.8, 4)[-1] == 0.8


def test_gradual_without_training_is_one_shot_magnitude(small):
    model = zoo_model("lenet5")
    p = PRUNERS["gradual"](model, 0.8, data=small, steps=4, epochs_per_step=0)
    assert p.info["schedule"] == pytest.approx(cubic_schedule(0.8, 4))
    assert_masks_equal(p.masks, PRUNERS["magnitude"](model, 0.8).masks)


def test_gradual_pruned_weights_stay_pruned(small):
    model = zoo_model("mlp")
    p = PRUNERS["gradual"](model, 0.9, data=small, steps=3, epochs_per_step=1, scope="global")
    total = sum(m.numel() for m in p.masks.values())
    assert sum(int((~m).sum()) for m in p.masks.values()) == round(0.9 * total)


def test_lottery_round_sparsities():
    s, rounds = 0.9, 4
    p = 1 - (1 - s) ** (1 / rounds)
    alive, expected = 1.0, []
    for _ in range(rounds):
        alive *= 1 - p  # each round removes p of the weights still alive
        expected.append(1 - alive)
    assert round_sparsities(s, rounds) == pytest.approx(expected)
    assert round_sparsities(s, rounds)[-1] == s


def test_lottery_without_training_is_one_shot_magnitude(small):
    model = zoo_model("lenet5")
    p = PRUNERS["lottery"](model, 0.75, data=small, rounds=3, epochs=0)
    assert_masks_equal(p.masks, PRUNERS["magnitude"](model, 0.75).masks)


def test_lottery_rewinds_survivors_to_the_initial_weights(small):
    """Reference loop: train, prune a fraction of the survivors, reset to init, repeat."""
    model, seed, rounds, s = zoo_model("mlp"), 4, 2, 0.75
    got = PRUNERS["lottery"](model, s, data=small, rounds=rounds, epochs=1, seed=seed)
    init = copy.deepcopy(model.state_dict())
    work, masks = copy.deepcopy(model), None
    for r in range(rounds):
        fit(work, small.x_train, small.y_train, epochs=1, seed=seed + r + 1, masks=masks,
            progress=False)
        new = {}
        for name, layer in prunable_layers(work).items():
            w = layer.weight.detach().abs().flatten()
            alive = torch.ones_like(w, dtype=torch.bool) if masks is None else masks[name].flatten()
            remove = round((1 - (1 - s) ** ((r + 1) / rounds)) * w.numel()) - int((~alive).sum())
            order = [i for i in torch.argsort(w, stable=True).tolist() if alive[i]]
            keep = alive.clone()
            keep[order[:remove]] = False
            new[name] = keep.view_as(layer.weight)
        masks = new
        work.load_state_dict(init)
        for name, layer in prunable_layers(work).items():
            layer.weight.data *= masks[name]
    fit(work, small.x_train, small.y_train, epochs=1, seed=seed + rounds + 1, masks=masks,
        progress=False)
    assert_masks_equal(got.masks, masks)
    for a, b in zip(got.model.state_dict().values(), work.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_admm_projection_keeps_the_largest_magnitudes():
    v = {"a": torch.tensor([[0.5, -2.0, 0.1, 1.0]]), "b": torch.tensor([3.0, 0.2])}
    z, masks = project(v, 0.5, "layer")
    assert z["a"].tolist() == [[0.0, -2.0, 0.0, 1.0]] and z["b"].tolist() == [3.0, 0.0]
    z, masks = project(v, 0.5, "global")  # the three smallest of all six go
    assert z["a"].tolist() == [[0.0, -2.0, 0.0, 1.0]] and z["b"].tolist() == [3.0, 0.0]
    assert masks["b"].tolist() == [True, False]
    z, masks = project(v, 2 / 3, "global")
    assert z["a"].tolist() == [[0.0, -2.0, 0.0, 0.0]] and z["b"].tolist() == [3.0, 0.0]


def test_admm_beats_one_shot_magnitude(default_session):
    model, data = default_session.base.model, default_session.data
    admm = PRUNERS["admm"](model, 0.9, data=data, epochs=4, retrain_epochs=0)
    one_shot = PRUNERS["magnitude"](model, 0.9)
    assert admm.info["residual"][-1] < admm.info["residual"][0]  # W approaches the sparse Z
    acc = evaluate(admm.model, data.x_test, data.y_test).accuracy
    assert acc > evaluate(one_shot.model, data.x_test, data.y_test).accuracy + 0.1

"""Loss landscapes: directions, grid values against slow references, interpolation, projection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import hook_count, state_equal, zoo_model
from workbench.analysis import (interpolate, landscape_1d, landscape_2d, project_onto,
                                random_directions)
from workbench.analysis.grid import evaluate_points
from workbench.errors import DataError, ParameterError


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are small: threads gain nothing and lose a lot on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_loss(model, x, y, state_changes=None):
    """Independent loss/accuracy: deep copy, load a state_dict, plain forward (loss-landscapes)."""
    m = copy.deepcopy(model).eval()
    if state_changes:
        sd = m.state_dict()
        sd.update(state_changes)
        m.load_state_dict(sd)
    with torch.no_grad():
        out = m(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def bn_model():
    """An untrained vgg_small with non-trivial BatchNorm running statistics."""
    m = zoo_model("vgg_small", (1, 8, 8), 10, seed=1)
    gen = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=gen))
    return m.eval()


@pytest.fixture(scope="module")
def base(default_session):
    return default_session.base


@pytest.fixture(scope="module")
def small_data(default_session):
    d = default_session.data
    return d.x_test[:96], d.y_test[:96]


def test_center_equals_model_loss(base):
    x, y = base.data.x_test, base.data.y_test
    ls = landscape_2d(base.model, x, y, steps=5, progress=False)
    with torch.no_grad():
        expect = float(F.cross_entropy(base.model.eval()(x), y))
    assert ls.center_loss == pytest.approx(expect, rel=1e-5)
    assert ls.loss[2, 2] == pytest.approx(expect, rel=1e-5)
    assert ls.loss.shape == ls.accuracy.shape == (5, 5)
    np.testing.assert_allclose(ls.alphas, [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(ls.betas, ls.alphas)
    assert ls.meta["center_accuracy"] == pytest.approx(base.metrics.accuracy)
    # the trained model is a minimum of its neighbourhood on this plane
    assert ls.loss.min() >= ls.center_loss - 0.05 and ls.loss.max() > 2 * ls.center_loss


def test_directions_have_the_weights_filter_norms(base):
    model = base.model
    d1, d2 = random_directions(model, seed=3, count=2)
    params = dict(model.named_parameters())
    assert set(d1) == set(params)
    for n, p in params.items():
        if p.ndim > 1:
            torch.testing.assert_close(filter_norms(d1[n]), filter_norms(p.detach()), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(filter_norms(d2[n]), filter_norms(p.detach()), rtol=1e-5, atol=1e-7)
            assert not torch.allclose(d1[n], d2[n])
        else:
            assert float(d1[n].abs().sum()) == 0.0  # ignore="biasbn"
    # the first of two directions is the single direction of the same seed
    (only,) = random_directions(model, seed=3)
    assert all(torch.equal(only[n], d1[n]) for n in params)
    # ignore=None keeps 1-D parameters as the reference does (d = w)
    (keep,) = random_directions(model, seed=3, ignore=None)
    assert torch.equal(keep["fc.bias"], params["fc.bias"].detach())
    # Gaussian (zero-mean) draws, not U[0, 1]
    assert abs(float(d1["classifier.0.weight"].mean())) < 0.1 * float(d1["classifier.0.weight"].abs().mean())


def test_masked_directions(fresh_session):
    v = fresh_session.prune("magnitude", sparsity=0.6)
    d1, d2 = random_directions(v, seed=0, count=2)  # a Variant brings its masks
    params = dict(v.model.named_parameters())
    assert v.masks
    for layer, mask in v.masks.items():
        name = f"{layer}.weight"
        for d in (d1, d2):
            assert float(d[name][~mask].abs().max()) == 0.0
            w = params[name].detach() * mask
            torch.testing.assert_close(filter_norms(d[name]), filter_norms(w), rtol=1e-5, atol=1e-7)
    # the landscape of the pruned model keeps pruned weights at zero: equal to a masked reference
    x, y = v.data.x_test[:64], v.data.y_test[:64]
    ls = landscape_2d(v, x, y, steps=3, progress=False)
    assert ls.meta["masked"]
    ref, _ = reference_loss(v.model, x, y, {n: params[n].detach() + d1[n] - d2[n] for n in d1})
    assert ls.loss[0, 2] == pytest.approx(ref, rel=1e-5)  # alpha=+1, beta=-1
    with pytest.raises(ParameterError, match="mask"):
        random_directions(v.model, masks={"features.0": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ParameterError, match="no weight"):
        random_directions(v.model, masks={"nope": torch.ones(3, dtype=torch.bool)})


def test_seeds(base, small_data):
    x, y = small_data
    a = landscape_2d(base.model, x, y, steps=4, seed=5, progress=False)
    b = landscape_2d(base.model, x, y, steps=4, seed=5, progress=False)
    c = landscape_2d(base.model, x, y, steps=4, seed=6, progress=False)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)  # identical up to float rounding
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert np.abs(a.loss - c.loss).max() > 1e-3
    assert a.meta["seed"] == 5


def test_input_model_untouched(base, small_data):
    model = base.model
    x, y = small_data
    before = copy.deepcopy(model)
    model.train()
    try:
        landscape_2d(model, x, y, steps=3, progress=False)
        landscape_1d(model, x, y, steps=3, progress=False, mode="loop")
        interpolate(model, before, x, y, steps=3, progress=False)
        assert model.training
        assert state_equal(model, before)
        assert hook_count(model) == 0
        assert all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_batched_equals_state_dict_reference(mode):
    model = bn_model()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 1, 8, 8, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    ls = landscape_2d(model, x, y, steps=3, span=0.5, seed=2, batch_size=16, chunk=4, mode=mode,
                      progress=False)
    assert ls.meta["mode"] == mode
    d1, d2 = ls.directions
    params = dict(model.named_parameters())
    for j, b in enumerate(ls.betas):
        for i, a in enumerate(ls.alphas):
            state = {n: params[n].detach() + a * d1[n] + b * d2[n] for n in params}
            loss, acc = reference_loss(model, x, y, state)
            assert ls.loss[j, i] == pytest.approx(loss, rel=1e-5, abs=1e-6)
            assert ls.accuracy[j, i] == pytest.approx(acc)


def test_line_is_the_first_axis_of_the_plane(base, small_data):
    x, y = small_data
    plane = landscape_2d(base.model, x, y, steps=5, seed=4, progress=False)
    line = landscape_1d(base.model, x, y, steps=5, seed=4, progress=False)
    np.testing.assert_allclose(line.loss, plane.loss[2], rtol=1e-5)
    np.testing.assert_allclose(line.alphas, plane.alphas)


def test_interpolation_endpoints_and_buffers():
    a, b = bn_model(), bn_model()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for mod in b.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.add_(0.2)
                mod.running_var.mul_(1.5)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(30, 1, 8, 8, generator=gen), torch.randint(0, 10, (30,), generator=gen)
    c = interpolate(a, b, x, y, steps=5, extrapolate=0.5, progress=False)
    np.testing.assert_allclose(c.alphas, np.arange(-2, 7) * 0.25)
    i0, i1 = 2, 6
    assert c.loss[i0] == pytest.approx(reference_loss(a, x, y)[0], rel=1e-5)
    assert c.loss[i1] == pytest.approx(reference_loss(b, x, y)[0], rel=1e-5)
    # the midpoint is the model whose every float state entry (BN statistics included) is averaged
    sa, sb = a.state_dict(), b.state_dict()
    mid = {k: (sa[k] + sb[k]) / 2 if sa[k].is_floating_point() else sa[k] for k in sa}
    assert c.loss[4] == pytest.approx(reference_loss(a, x, y, mid)[0], rel=1e-5)
    # without the buffers it would differ
    params_only = {k: mid[k] if k in dict(a.named_parameters()) else sa[k] for k in sa}
    assert abs(c.loss[4] - reference_loss(a, x, y, params_only)[0]) > 1e-4
    with pytest.raises(ParameterError, match="same architecture"):
        interpolate(a, zoo_model("lenet5", (1, 8, 8)), x, y, progress=False)


def test_projection(base, fresh_session):
    model = base.model
    d1, d2 = random_directions(model, seed=0, count=2)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(0.3 * d1[n] - 0.2 * d2[n])
    p = project_onto(model, moved, (d1, d2))
    assert p.alpha == pytest.approx(0.3, abs=1e-5)
    assert p.beta == pytest.approx(-0.2, abs=1e-5)
    assert p.residual_norm < 1e-4 * p.offset_norm
    # a pruned variant: compare with an explicit least-squares solve
    v = fresh_session.prune("magnitude", sparsity=0.5)
    q = project_onto(model, v, (d1, d2))
    names = [n for n, _ in model.named_parameters()]
    D = torch.stack([torch.cat([d[n].flatten() for n in names]) for d in (d1, d2)], 1).double()
    off = torch.cat([(dict(v.model.named_parameters())[n] - dict(model.named_parameters())[n])
                     .detach().flatten() for n in names]).double()
    coef, *_ = np.linalg.lstsq(D.numpy(), off.numpy(), rcond=None)
    assert (q.alpha, q.beta) == pytest.approx(tuple(coef), rel=1e-6, abs=1e-9)
    assert q.residual_norm == pytest.approx(float(np.linalg.norm(D.numpy() @ coef - off.numpy())), rel=1e-6)
    assert q.offset_norm == pytest.approx(float(off.norm()), rel=1e-9)


def test_vmap_fallback_and_given_directions():
    class Scalar(nn.Module):  # float() of a parameter cannot be batched by vmap
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) * float(self.lin.weight.abs().sum())

    torch.manual_seed(0)
    m = Scalar().eval()
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    d = {"lin.weight": torch.ones(3, 4)}
    zero = {"lin.weight": torch.zeros(3, 4)}
    ls = landscape_2d(m, x, y, steps=3, directions=[d, zero], progress=False)
    assert ls.meta["mode"] == "loop" and ls.meta["kind"] == "given"
    ref, _ = reference_loss(m, x, y, {"lin.weight": m.lin.weight.detach() + 1.0})
    assert ls.loss[1, 2] == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ParameterError, match="vmap"):
        landscape_2d(m, x, y, steps=3, directions=[d, zero], mode="vmap", progress=False)


def test_memory_refusal_and_bad_parameters(base, small_data):
    x, y = small_data
    with pytest.raises(ParameterError, match=r"about \d+ MB"):
        landscape_2d(base.model, x, y, steps=3, chunk=9, max_memory_mb=0.01, progress=False)
    with pytest.raises(ParameterError, match="steps"):
        landscape_2d(base.model, x, y, steps=0, progress=False)
    with pytest.raises(ParameterError, match="span"):
        landscape_2d(base.model, x, y, span=-1, progress=False)
    with pytest.raises(ParameterError, match="ignore"):
        landscape_2d(base.model, x, y, ignore="bn", progress=False)
    with pytest.raises(ParameterError, match="shaped"):
        landscape_2d(base.model, x, y, directions=[{"fc.weight": torch.zeros(2, 2)}] * 2,
                     progress=False)
    with pytest.raises(ParameterError, match="2 direction"):
        landscape_2d(base.model, x, y, directions=[{}], progress=False)
    with pytest.raises(DataError):
        landscape_2d(base.model, x, y[:5], progress=False)
    with pytest.raises(DataError):
        landscape_2d(base.model, progress=False)
    with pytest.raises(DataError, match="cannot process inputs"):
        landscape_2d(base.model, torch.rand(4, 3, 5, 5), torch.zeros(4, dtype=torch.long),
                     progress=False)


def test_variant_defaults_to_its_test_split(base):
    ls = landscape_2d(base, steps=3, span=(-0.5, 0.5), progress=False)
    assert ls.center_loss == pytest.approx(base.metrics.loss, rel=1e-5)
    assert ls.meta["samples"] == len(base.data.y_test)
    np.testing.assert_allclose(ls.alphas, [-0.5, 0, 0.5])


def test_evaluate_points_accumulates_batches(small_data, base):
    x, y = small_data
    (d,) = random_directions(base.model, seed=1)
    coords = [[0.0], [0.25], [-0.7]]
    full = evaluate_points(base.model, x, y, coords, [d], progress=False)
    parts = evaluate_points(base.model, x, y, coords, [d], batch_size=10, chunk=2, progress=False)
    np.testing.assert_allclose(full[0], parts[0], rtol=1e-5)
    np.testing.assert_allclose(full[1], parts[1])
    assert parts[2]["batch_size"] == 10 and parts[2]["chunk"] == 2

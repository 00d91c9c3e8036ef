"""Hessian analyses against the explicit Hessian of a tiny float64 network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from conftest import hook_count, state_equal
from workbench.analysis import (HessianOperator, density, eigen_landscape, hvp, top_eigenvalues,
                                trace)
from workbench.errors import ParameterError


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are small: threads gain nothing and lose a lot on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed: int = 3):
    """Linear(4,3)-tanh-Linear(3,2) in float64 on 20 samples (23 parameters)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    return net, x, y


def explicit_hessian(net, x, y) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy over the flattened parameters (autograd)."""
    params = dict(net.named_parameters())
    names = list(params)
    flat0 = torch.cat([p.detach().flatten() for p in params.values()])

    def loss(flat):
        d, i = {}, 0
        for n in names:
            k = params[n].numel()
            d[n] = flat[i:i + k].view(params[n].shape)
            i += k
        return F.cross_entropy(functional_call(net, d, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0)


def flat(d: dict, net) -> torch.Tensor:
    return torch.cat([d[n].flatten() if n in d else torch.zeros_like(p).flatten()
                      for n, p in net.named_parameters()])


def by_magnitude(values: np.ndarray) -> np.ndarray:
    return values[np.argsort(-np.abs(values), kind="stable")]


@pytest.fixture(scope="module")
def problem():
    net, x, y = tiny()
    return net, x, y, explicit_hessian(net, x, y)


def test_hvp_equals_explicit_product(problem):
    net, x, y, H = problem
    gen = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in net.named_parameters()}
    hv = hvp(net, x, y, v)
    torch.testing.assert_close(flat(hv, net), H @ flat(v, net), rtol=1e-10, atol=1e-12)
    # batched accumulation gives the same product
    hv_b = hvp(net, x, y, v, batch_size=7)
    torch.testing.assert_close(flat(hv_b, net), H @ flat(v, net), rtol=1e-10, atol=1e-12)


def test_exact_trace_from_basis_vectors(problem):
    net, x, y, H = problem
    op = HessianOperator(net, x, y)
    assert op.dim == 23
    basis = torch.eye(op.dim, dtype=torch.float64)
    total = sum(float(op.matvec(e) @ e) for e in basis)
    assert total == pytest.approx(float(H.trace()), rel=1e-10)


def test_top_three_eigenvalues_and_vectors(problem):
    net, x, y, H = problem
    vals, vecs = torch.linalg.eigh(H)
    order = np.argsort(-np.abs(vals.numpy()), kind="stable")
    e = top_eigenvalues(net, x, y, k=3, iters=2000, tol=1e-10, seed=0, progress=False)
    np.testing.assert_allclose(e.values, vals.numpy()[order[:3]], rtol=1e-7)
    assert all(e.meta["converged"])
    for i in range(3):
        u = flat(e.vectors[i], net)
        assert float(u.norm()) == pytest.approx(1.0, abs=1e-10)
        assert abs(float(u @ vecs[:, order[i]])) == pytest.approx(1.0, abs=1e-5)
    # seeded: the same seed reproduces the same eigenvectors exactly
    again = top_eigenvalues(net, x, y, k=1, iters=2000, tol=1e-10, seed=0, progress=False)
    torch.testing.assert_close(flat(again.vectors[0], net), flat(e.vectors[0], net), rtol=0, atol=0)


def test_hutchinson_trace(problem):
    net, x, y, H = problem
    exact = float(H.trace())
    t = trace(net, x, y, samples=2000, seed=0, progress=False)
    assert abs(t.mean - exact) < 4 * t.stderr
    assert t.stderr / exact < 0.05  # 2000 samples pin the trace down to a few percent
    # Rademacher variance is 2 * sum of squared off-diagonal entries
    var = 2 * float((H ** 2).sum() - (H.diag() ** 2).sum())
    assert t.stderr == pytest.approx(np.sqrt(var / 2000), rel=0.15)
    assert t.samples.shape == (2000,)


def test_layer_restriction_equals_hessian_block(problem):
    net, x, y, H = problem
    block = H[:15, :15]  # "0.weight" (12) and "0.bias" (3)
    expect = by_magnitude(torch.linalg.eigvalsh(block).numpy())
    e = top_eigenvalues(net, x, y, k=2, iters=2000, tol=1e-10, layer="0", progress=False)
    np.testing.assert_allclose(e.values, expect[:2], rtol=1e-7)
    assert set(e.vectors[0]) == {"0.weight", "0.bias"}
    assert e.meta["dim"] == 15
    sd = density(net, x, y, layer="2", iters=50, progress=False)
    assert sd.meta["dim"] == 8
    t = trace(net, x, y, layer="2.weight", samples=3, progress=False)
    assert t.meta["dim"] == 6


def test_masked_operator_equals_restricted_hessian(problem):
    net, x, y, H = problem
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    keep = torch.cat([mask.flatten(), torch.ones(11, dtype=torch.bool)])
    sub = H[keep][:, keep]
    expect = by_magnitude(torch.linalg.eigvalsh(sub).numpy())
    e = top_eigenvalues(net, x, y, k=3, iters=2000, tol=1e-10, masks={"0": mask}, progress=False)
    np.testing.assert_allclose(e.values, expect[:3], rtol=1e-7)
    assert e.meta["dim"] == int(keep.sum()) == 19
    for v in e.vectors:
        assert float(v["0.weight"][~mask].abs().max()) == 0.0
    # the masked hvp is P H P v
    gen = torch.Generator().manual_seed(2)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in net.named_parameters()}
    P = keep.double()
    torch.testing.assert_close(flat(hvp(net, x, y, v, masks={"0": mask}), net),
                               P * (H @ (P * flat(v, net))), rtol=1e-10, atol=1e-12)
    t = trace(net, x, y, samples=2000, masks={"0": mask}, progress=False)
    assert abs(t.mean - float(sub.trace())) < 4 * t.stderr


def test_slq_density(problem):
    net, x, y, H = problem
    ev = torch.linalg.eigvalsh(H).numpy()
    sd = density(net, x, y, iters=100, runs=1, seed=0, progress=False)
    dx = sd.grid[1] - sd.grid[0]
    assert float(sd.density.sum() * dx) == pytest.approx(1.0, abs=1e-9)
    assert float(sd.weights[0].sum()) == pytest.approx(1.0, abs=1e-9)
    # full Lanczos: the Krylov space is exhausted, its nodes are exact eigenvalues of H
    lam = sd.nodes[0][sd.weights[0] > 1e-10]
    assert all(np.min(np.abs(ev - v)) < 1e-8 for v in lam)
    nonzero = ev[np.abs(ev) > 1e-8]
    assert all(np.min(np.abs(lam - v)) < 1e-8 for v in nonzero)
    # Gauss quadrature of f(λ) = λ is exactly vᵀHv for the (normalised) Rademacher start vector
    gen = torch.Generator().manual_seed(0)
    v = torch.cat([(torch.randint(0, 2, p.shape, generator=gen).double() * 2 - 1).flatten()
                   for p in net.parameters()])
    assert sd.mean == pytest.approx(float(v @ H @ v) / len(v), rel=1e-9)
    # the smoothed density has that mean too (up to the kernel cut at the grid edges)
    assert float((sd.grid * sd.density).sum() * dx) == pytest.approx(sd.mean, abs=2e-3)
    # averaged over runs, the mean estimates tr(H) / n
    many = density(net, x, y, iters=5, runs=200, seed=1, bins=200, progress=False)
    per_run = np.nansum(many.nodes * many.weights, axis=1)
    se = per_run.std(ddof=1) / np.sqrt(len(per_run))
    assert abs(many.mean - float(H.trace()) / 23) < 4 * se
    assert many.nodes.shape == (200, 5)


def test_eigen_landscape_curvature(problem):
    net, x, y, _ = problem
    e = top_eigenvalues(net, x, y, k=2, iters=2000, tol=1e-10, progress=False)
    h = 1e-3
    ls = eigen_landscape(net, x, y, steps=3, span=h, iters=2000, tol=1e-10, progress=False)
    np.testing.assert_allclose(ls.meta["eigenvalues"], e.values)
    L = ls.loss
    # second differences along the unit eigenvectors are the eigenvalues
    assert (L[1, 0] + L[1, 2] - 2 * L[1, 1]) / h ** 2 == pytest.approx(e.values[0], rel=1e-4)
    assert (L[0, 1] + L[2, 1] - 2 * L[1, 1]) / h ** 2 == pytest.approx(e.values[1], rel=1e-4)
    with torch.no_grad():
        assert ls.center_loss == pytest.approx(float(F.cross_entropy(net(x), y)), rel=1e-12)


def test_default_model_untouched_and_symmetric(default_session):
    model = default_session.base.model
    data = default_session.data
    x, y = data.x_test[:120], data.y_test[:120]
    before = copy.deepcopy(model)
    model.train()  # a training-mode model must stay in training mode
    flags = [p.requires_grad for p in model.parameters()]
    try:
        e = top_eigenvalues(model, x, y, k=1, iters=30, seed=0, progress=False)
        op = HessianOperator(model, x, y)
        gen = torch.Generator().manual_seed(0)
        u, v = op.random_vector(gen), op.random_vector(gen)
        uhv, vhu = float(u @ op.matvec(v)), float(v @ op.matvec(u))
        assert uhv == pytest.approx(vhu, rel=1e-3)
        assert e.values[0] > 0  # a trained model sits near a minimum
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert state_equal(model, before)
        assert hook_count(model) == 0
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_parameter_errors(problem):
    net, x, y, _ = problem
    with pytest.raises(ParameterError, match="exceeds"):
        top_eigenvalues(net, x, y, k=24, progress=False)
    with pytest.raises(ParameterError, match="names no module"):
        trace(net, x, y, layer="features.9", progress=False)
    with pytest.raises(ParameterError, match="iters"):
        top_eigenvalues(net, x, y, iters=0, progress=False)
    with pytest.raises(ParameterError, match="samples"):
        trace(net, x, y, samples=0, progress=False)
    with pytest.raises(ParameterError, match="shaped"):
        hvp(net, x, y, {"0.weight": torch.zeros(2, 2, dtype=torch.float64)})
    with pytest.raises(ParameterError, match="mask"):
        trace(net, x, y, masks={"0": torch.ones(2, 2, dtype=torch.bool)}, progress=False)

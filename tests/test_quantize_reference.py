"""Each quantization method against an independent computation of its definition.

Uniform: the half-step error bound, scales from the textbook formulas and torch's own
fake-quantization kernels as the rounding oracle. Ternary and binary: hand computations.
K-means: nearest-centroid assignment, a plain NumPy Lloyd, losslessness with enough clusters.
Activations: calibrated ranges against our own forward hooks, torch's fake-quant kernel, and
accuracy on the default model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count, zoo_model
from workbench.quantize import QUANTIZERS, activation_quantizers
from workbench.quantize.activations import CALIBRATION_BATCH_SIZE, ActivationFakeQuant
from workbench.quantize.binary import binary_quantize
from workbench.quantize.kmeans import kmeans_quantize
from workbench.quantize.ternary import ternary_quantize
from workbench.quantize.uniform import UNIFORM_BITS, uniform_quantize


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """A conv-shaped weight whose channels differ in scale by 1000x and are not zero-centred."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 3, 3, generator=gen) * torch.logspace(-2, 1, 8)[:, None, None, None]
    return w + 0.3 * w.std(dim=(1, 2, 3), keepdim=True)


def per_row(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (ndim - 1))


# --- uniform -----------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", UNIFORM_BITS)
def test_uniform_matches_the_textbook_definition(weight, bits, symmetric, granularity):
    qt = uniform_quantize(weight, bits, granularity, symmetric)
    rows = weight.reshape(len(weight) if granularity == "channel" else 1, -1).double()
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale = rows.abs().amax(1) / qmax
        assert not qt.zero_point.any()
    else:
        qmin, qmax = 0, 2 ** bits - 1
        scale = (rows.amax(1).clamp(min=0) - rows.amin(1).clamp(max=0)) / qmax
    torch.testing.assert_close(qt.scale.double(), scale, rtol=1e-6, atol=0)
    assert qmin <= int(qt.codes.min()) and int(qt.codes.max()) <= qmax

    deq = qt.dequantize()
    step = per_row(qt.scale, weight.ndim)
    assert ((weight - deq).abs() <= step / 2 * (1 + 1e-5)).all(), "error above half a step"

    # torch's fake-quantization kernels round and clamp independently of our code
    if granularity == "channel":
        ref = torch.fake_quantize_per_channel_affine(weight, qt.scale, qt.zero_point, 0, qmin, qmax)
    else:
        ref = torch.fake_quantize_per_tensor_affine(weight, float(qt.scale), int(qt.zero_point),
                                                    qmin, qmax)
    torch.testing.assert_close(deq, ref, rtol=0, atol=1e-6 * float(qt.scale.max()))


def test_uniform_affine_represents_zero_exactly(weight):
    positive = weight.abs() + 0.5  # min > 0: the range is widened to include 0
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    for w in (positive, weight):
        qt = uniform_quantize(w * mask, 3, "channel", symmetric=False, mask=mask)
        deq = qt.dequantize()
        assert not deq[~mask].any()
        assert torch.equal(qt.codes.long()[~mask],
                           qt.zero_point.long()[:, None, None, None].expand_as(qt.codes)[~mask])


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_error_is_at_most_per_tensor_error(weight, symmetric, default_session):
    tensors = [weight] + [m.weight.detach() for m in default_session.base.model.modules()
                          if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w in tensors:
        for bits in UNIFORM_BITS:
            mse = {g: float((uniform_quantize(w, bits, g, symmetric).dequantize() - w)
                            .pow(2).mean()) for g in ("channel", "tensor")}
            assert mse["channel"] <= mse["tensor"], (tuple(w.shape), bits, mse)
    # channels 1000x apart: a per-tensor step swamps the smallest channel
    small = {g: float((uniform_quantize(weight, 4, g, symmetric).dequantize() - weight)[0]
                      .pow(2).mean()) for g in ("channel", "tensor")}
    assert small["tensor"] > 20 * small["channel"]


def test_uniform_model_level_equals_the_tensor_function():
    model = zoo_model("lenet5")
    q = QUANTIZERS["uniform"](model, 5, symmetric=False, granularity="tensor")
    for name, qt in q.layers.items():
        ref = uniform_quantize(model.get_submodule(name).weight, 5, "tensor", False)
        assert torch.equal(qt.codes, ref.codes) and torch.equal(qt.scale, ref.scale)


# --- ternary and binary: hand computations -------------------------------------------------------
# 0.3 sits just below row 0's threshold and 0.9 just above row 1's: they pin the 0.7 factor
W = torch.tensor([[0.3, -0.9, 0.5, 0.05], [2.0, -2.0, 0.9, 0.0]])


def test_ternary_by_hand():
    # row 0: mean|w| = 0.4375, Δ = 0.30625 -> {-0.9, 0.5} kept,    α = 0.7
    # row 1: mean|w| = 1.225,  Δ = 0.8575  -> {2, -2, 0.9} kept,   α = 4.9 / 3
    qt = ternary_quantize(W, "channel")
    assert qt.codes.tolist() == [[0, -1, 1, 0], [1, -1, 1, 0]]
    torch.testing.assert_close(qt.scale, torch.tensor([0.7, 4.9 / 3]))
    # whole tensor: mean|w| = 0.83125, Δ = 0.581875 -> {-0.9, 2, -2, 0.9} kept, α = 1.45
    qt = ternary_quantize(W, "tensor")
    assert qt.codes.tolist() == [[0, -1, 0, 0], [1, -1, 1, 0]]
    torch.testing.assert_close(qt.scale, torch.tensor([1.45]))
    # masked: row 1 keeps (-2, 0.9, 0): mean = 0.96667, Δ = 0.67667 -> {-2, 0.9}, α = 1.45
    mask = torch.tensor([[True, True, True, True], [False, True, True, True]])
    qt = ternary_quantize(W * mask, "channel", mask)
    assert qt.codes.tolist() == [[0, -1, 1, 0], [0, -1, 1, 0]]
    torch.testing.assert_close(qt.scale, torch.tensor([0.7, 1.45]))

    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(W)
    q = QUANTIZERS["ternary"](lin, 2)
    a = 4.9 / 3
    torch.testing.assert_close(q.model.weight, torch.tensor([[0, -0.7, 0.7, 0], [a, -a, a, 0]]))


def test_binary_by_hand():
    qt = binary_quantize(W, "channel")  # sign(0) counts as +1
    assert qt.codes.tolist() == [[1, -1, 1, 1], [1, -1, 1, 1]] and qt.bits == 1
    torch.testing.assert_close(qt.scale, torch.tensor([0.4375, 1.225]))
    qt = binary_quantize(W, "tensor")
    torch.testing.assert_close(qt.scale, torch.tensor([0.83125]))
    mask = torch.tensor([[True, True, True, True], [False, True, True, True]])
    qt = binary_quantize(W * mask, "channel", mask)
    assert qt.codes.tolist() == [[1, -1, 1, 1], [0, -1, 1, 1]] and qt.bits == 2
    torch.testing.assert_close(qt.scale, torch.tensor([0.4375, 2.9 / 3]))


def test_binary_scale_is_the_least_squares_optimum(weight):
    qt = binary_quantize(weight, "channel")
    signs = qt.codes.float()
    for alpha, w, s in zip(qt.scale, weight, signs):
        err = lambda a: float((w - a * s).pow(2).sum())  # noqa: E731
        assert err(alpha) <= min(err(alpha * 0.99), err(alpha * 1.01))


# --- k-means -------------------------------------------------------------------------------------
def numpy_lloyd(values: np.ndarray, k: int, iterations: int = 200) -> np.ndarray:
    """Textbook Lloyd with a distance matrix and linear initialisation (no empty clusters)."""
    c = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        idx = np.abs(values[:, None] - c[None, :]).argmin(1)
        new = np.array([values[idx == j].mean() for j in range(k)])
        if np.array_equal(new, c):
            break
        c = new
    return c


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_kmeans_assigns_each_weight_its_nearest_centroid(weight, granularity):
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    for m in (None, mask):
        w = weight if m is None else weight * m
        qt = kmeans_quantize(w, 3, granularity, m)
        book = qt.codebook if qt.codebook.ndim == 2 else qt.codebook.expand(len(w), -1)
        flat = w.reshape(len(w), -1)
        dist = (flat[:, :, None] - book[:, None, :]).abs()
        if m is not None:  # pruned weights take the reserved zero code, the rest a cluster
            dist[:, :, 0] = torch.where(m.reshape(len(w), -1), torch.inf, -1.0)
        chosen = dist.gather(2, qt.codes.reshape(len(w), -1, 1).long())[..., 0]
        assert torch.equal(chosen, dist.min(2).values)


def test_kmeans_matches_a_numpy_lloyd():
    values = torch.randn(1, 300, generator=torch.Generator().manual_seed(3))
    for bits in (1, 2):
        qt = kmeans_quantize(values, bits, "tensor", iterations=200)
        ref = numpy_lloyd(values[0].double().numpy(), 2 ** bits)
        np.testing.assert_allclose(qt.codebook.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_kmeans_never_does_worse_than_its_linear_initialisation(weight):
    for bits in (1, 2, 3, 4):
        qt = kmeans_quantize(weight, bits, "tensor")
        grid = torch.linspace(float(weight.min()), float(weight.max()), 2 ** bits)
        init = grid[(weight[..., None] - grid).abs().argmin(-1)]
        assert (qt.dequantize() - weight).pow(2).mean() <= (init - weight).pow(2).mean()


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_kmeans_is_lossless_with_enough_clusters(granularity):
    gen = torch.Generator().manual_seed(4)
    levels = torch.tensor([-1.5, -0.25, 0.125, 0.3, 0.7, 2.0])
    w = levels[torch.randint(0, 6, (6, 40), generator=gen)]
    for bits in (3, 4, 8):
        assert torch.equal(kmeans_quantize(w, bits, granularity).dequantize(), w)
    mask = torch.rand(w.shape, generator=gen) > 0.4  # 7 clusters + the zero code
    assert torch.equal(kmeans_quantize(w * mask, 3, granularity, mask).dequantize(), w * mask)
    assert not torch.equal(kmeans_quantize(w, 2, granularity).dequantize(), w)


def test_kmeans_reserves_code_zero_for_pruned_weights(weight):
    mask = weight.abs() > weight.abs().median()
    for granularity in ("tensor", "channel"):
        qt = kmeans_quantize(weight * mask, 2, granularity, mask)
        assert torch.equal(qt.codes == 0, ~mask)
        assert not qt.codebook[..., 0].any() and qt.codebook.shape[-1] == 4


# --- activations ---------------------------------------------------------------------------------
def test_activation_fake_quant_matches_torch():
    x = torch.randn(500) * 3
    hook = ActivationFakeQuant.from_range(float(x.min()), float(x.max()))
    ours = hook(None, (x,))[0]
    ref = torch.fake_quantize_per_tensor_affine(x, hook.scale, hook.zero_point, 0, 255)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours - x).abs().max() <= hook.scale / 2 * (1 + 1e-5)
    relu = ActivationFakeQuant.from_range(0.5, 4.0)  # inputs after ReLU: 0 must stay exact
    assert relu.zero_point == 0 and float(relu(None, (torch.zeros(3),))[0].abs().max()) == 0.0


@pytest.mark.parametrize("batches", [1, 3])
def test_calibrated_ranges_equal_the_layer_inputs(digits, batches):
    model = zoo_model("lenet5")
    q = QUANTIZERS["uniform"](model, 8, data=digits, activations=True,
                              calibration_batches=batches)
    assert hook_count(model) == 0 and len(activation_quantizers(q.model)) == 5
    # independently: the same weight quantization without activations, our own forward hooks,
    # all calibration samples in one pass
    plain = QUANTIZERS["uniform"](model, 8).model
    seen, handles = {}, []
    for name in q.layers:
        def record(module, inputs, output, name=name):
            seen[name] = (float(inputs[0].min()), float(inputs[0].max()))
        handles.append(plain.get_submodule(name).register_forward_hook(record))
    with torch.no_grad():
        plain(digits.x_train[: batches * CALIBRATION_BATCH_SIZE])
    for h in handles:
        h.remove()
    for name, (lo, hi) in seen.items():
        got = q.info["activations"][name]
        assert got["min"] == pytest.approx(lo, rel=1e-5, abs=1e-6)
        assert got["max"] == pytest.approx(hi, rel=1e-5, abs=1e-6)
        hook = activation_quantizers(q.model)[name]
        assert hook.scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-5)
        assert hook.zero_point == round(-min(lo, 0) / hook.scale)
    assert q.info["activations"]["features.0"]["min"] == pytest.approx(0.0)  # images in [0, 1]


def test_int8_activations_and_weights_keep_accuracy(fresh_session):
    base = fresh_session.base
    weights_only = fresh_session.quantize("uniform", bits=8)
    both = fresh_session.quantize("uniform", bits=8, activations=True)
    x = fresh_session.data.x_test[:64]
    with torch.no_grad():
        assert not torch.equal(both.model(x), weights_only.model(x)), "the hooks do nothing"
    assert abs(both.metrics.accuracy - base.metrics.accuracy) <= 0.02
    assert set(activation_quantizers(both.model)) == set(both.quant)
    assert hook_count(base.model) == 0 and hook_count(weights_only.model) == 0

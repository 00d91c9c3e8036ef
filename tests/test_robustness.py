"""Corruption errors, mCE, per-sample flags, layer sensitivity and galleries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from workbench.analysis.robustness import (CorruptionResult, corruption_errors, flips, gallery,
                                           layer_sensitivity, mce, sample_flags)
from workbench.corruptions import CORRUPTIONS, corruption_names
from workbench.errors import DataError, ParameterError, UnknownNameError
from workbench.evaluate import evaluate

FEW = ["rotate", "shot_noise", "fog", "stripe"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def full(default_session):
    """The full gray sweep of the default model (every corruption, severities 1..5)."""
    return corruption_errors(default_session.base, progress=False)


@pytest.fixture(scope="module")
def pruned(default_session):
    """The same sweep for a 70 % magnitude-pruned copy of the default model."""
    from workbench.prune import PRUNERS

    model = PRUNERS["magnitude"](default_session.base.model, 0.7).model
    return model, corruption_errors(model, default_session.data, progress=False)


def _result(error, clean, corruptions=("a",), severities=(1, 2)):
    error = np.asarray(error, dtype=float)
    n = 1
    return CorruptionResult(tuple(corruptions), tuple(severities), error, clean,
                            np.zeros(error.shape + (n,), np.int16), np.zeros(n, np.int64),
                            np.zeros(n, np.int16))


# --- corruption_errors -------------------------------------------------------------------------
def test_full_sweep_shapes_and_clean_error(full, default_session):
    data = default_session.data
    names = corruption_names("gray")
    assert full.corruptions == tuple(names) and full.severities == (1, 2, 3, 4, 5)
    assert full.error.shape == (15, 5) and full.predictions.shape == (15, 5, len(data.y_test))
    assert full.predictions.dtype == np.int16
    ev = evaluate(default_session.base.model, data.x_test, data.y_test)
    assert full.clean_error == pytest.approx(1 - ev.accuracy, abs=1e-6)  # float32 mean
    # each error is the fraction of wrong predictions in its cell
    labels = data.y_test.numpy()
    assert np.allclose(full.error, (full.predictions != labels).mean(-1))
    assert np.array_equal(full.labels, labels)
    # a strong corruption hurts: severity 5 rotation is far worse than clean
    i = full.corruptions.index("rotate")
    assert full.error[i, 4] > full.clean_error + 0.3
    assert set(full.meta["seconds"]) == set(names)
    assert not full.error.flags.writeable


def test_each_cell_is_the_model_on_the_corrupted_images(full, default_session):
    data = default_session.data
    for name, s in [("shear", 2), ("spatter", 4)]:
        x = CORRUPTIONS[name](data.x_test, s, seed=0)
        pred = default_session.base.model(x).argmax(1).numpy()
        i, j = full.corruptions.index(name), full.severities.index(s)
        assert np.array_equal(full.predictions[i, j], pred)


def test_sweep_is_deterministic_and_leaves_the_model_alone(default_session):
    model = default_session.base.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    a = corruption_errors(model, default_session.data, corruptions=FEW, severities=(2, 4),
                          progress=False)
    b = corruption_errors(default_session.base, corruptions=FEW, severities=(2, 4),
                          progress=False)
    assert np.array_equal(a.predictions, b.predictions)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training == training and hook_count(model) == 0
    c = corruption_errors(model, default_session.data, corruptions=["shot_noise"], seed=5,
                          severities=(4,), progress=False)
    i = FEW.index("shot_noise")
    assert c.seed == 5 and not np.array_equal(c.predictions[0, 0], a.predictions[i, 1])


def test_a_model_that_ignores_its_input_has_the_clean_error_everywhere():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 1.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(len(x), 3)

    x = torch.rand(30, 1, 8, 8)
    y = torch.arange(30) % 3
    r = corruption_errors(Constant(), x, y, corruptions=FEW, progress=False)
    assert np.allclose(r.error, 2 / 3) and r.clean_error == pytest.approx(2 / 3)
    assert (r.predictions == 1).all()


def test_bad_inputs(default_session):
    model, data = default_session.base.model, default_session.data
    with pytest.raises(UnknownNameError):
        corruption_errors(model, data, corruptions=["rotat"], progress=False)
    with pytest.raises(DataError, match="gray"):
        corruption_errors(model, data, corruptions=["contrast"], progress=False)
    with pytest.raises(ParameterError, match="severit"):
        corruption_errors(model, data, corruptions=FEW, severities=(0, 1), progress=False)
    with pytest.raises(ParameterError):
        corruption_errors(model, data, corruptions=FEW, severities=(1, 1), progress=False)
    with pytest.raises(DataError, match="label"):
        corruption_errors(model, data.x_test, data.y_test[:5], progress=False)
    with pytest.raises(DataError):
        corruption_errors(model, data.x_test[:, 0], data.y_test, progress=False)
    with pytest.raises(DataError):
        corruption_errors(model, progress=False)
    with pytest.raises(ParameterError):
        corruption_errors("not a model", data, progress=False)
    with pytest.raises(ParameterError, match="threads"):
        corruption_errors(model, data, corruptions=FEW, threads=0, progress=False)


# --- mCE ---------------------------------------------------------------------------------------
def test_mce_against_itself_is_one(full):
    out = mce(full, full)
    defined = [c for c in full.corruptions if full.error[full.corruptions.index(c)].sum() > 0]
    assert len(defined) >= 14
    for c in defined:
        assert out["ce"][c] == pytest.approx(1.0)
    assert out["mce"] == pytest.approx(1.0)
    rel = [v for v in out["relative_ce"].values() if np.isfinite(v)]
    assert rel and np.allclose(rel, 1.0) and out["relative_mce"] == pytest.approx(1.0)


def test_mce_hand_example():
    a = _result([[0.2, 0.4], [0.1, 0.3]], 0.1, corruptions=("a", "b"))
    base = _result([[0.3, 0.5], [0.2, 0.2]], 0.05, corruptions=("a", "b"))
    out = mce(a, base)
    assert out["ce"] == pytest.approx({"a": 0.6 / 0.8, "b": 0.4 / 0.4})
    assert out["mce"] == pytest.approx((0.75 + 1.0) / 2)
    # relative: Σ (E - clean) / Σ (E_base - clean_base)
    assert out["relative_ce"]["a"] == pytest.approx((0.1 + 0.3) / (0.25 + 0.45))
    assert out["relative_ce"]["b"] == pytest.approx((0.0 + 0.2) / (0.15 + 0.15))
    assert out["relative_mce"] == pytest.approx((0.4 / 0.7 + 0.2 / 0.3) / 2)
    assert out["notes"] == []


def test_mce_subsets_and_zero_denominators():
    base = _result([[0.3, 0.5, 0.7], [0.0, 0.0, 0.0]], 0.0, corruptions=("a", "b"),
                   severities=(1, 3, 5))
    r = _result([[0.2], [0.1]], 0.1, corruptions=("a", "b"), severities=(3,))
    out = mce(r, base)  # only severity 3 of the baseline is used
    assert out["ce"]["a"] == pytest.approx(0.2 / 0.5)
    assert np.isnan(out["ce"]["b"]) and np.isnan(out["relative_ce"]["b"])
    assert out["mce"] == pytest.approx(0.4)  # the defined one only
    assert any("b:" in n and "undefined" in n for n in out["notes"])
    assert any("averages 1 of 2" in n for n in out["notes"])
    neg = mce(_result([[0.2, 0.3]], 0.1), _result([[0.05, 0.05]], 0.1))
    assert neg["relative_ce"]["a"] < 0 and any("not meaningful" in n for n in neg["notes"])
    with pytest.raises(ParameterError, match="corruptions"):
        mce(_result([[0.1, 0.1]], 0.0, corruptions=("z",)), base)
    with pytest.raises(ParameterError, match="severities"):
        mce(_result([[0.1, 0.1]], 0.0, severities=(2, 4)), base)


# --- flags and flips ---------------------------------------------------------------------------
def test_flags_match_the_predictions(full):
    f = sample_flags(full)
    labels = full.labels
    clean = full.clean_predictions == labels
    assert np.array_equal(f.clean_correct, clean)
    for i in range(len(full.corruptions)):
        for j, s in enumerate(full.severities):
            wrong = full.predictions[i, j] != labels
            assert np.array_equal(f.flipped[i, j], clean & wrong)
            assert np.array_equal(f.recovered[i, j], ~clean & ~wrong)
    for k in range(0, len(labels), 37):  # brute force on a few samples
        cells = [(i, s) for i in range(len(full.corruptions))
                 for j, s in enumerate(full.severities)
                 if clean[k] and full.predictions[i, j, k] != labels[k]]
        assert f.flip_count[k] == len(cells)
        assert f.fragile[k] == bool(cells)
        assert f.robust[k] == (clean[k] and not cells)
        for i in range(len(full.corruptions)):
            sev = [s for c, s in cells if c == i]
            assert f.first_flip[i, k] == (min(sev) if sev else 0)
    assert f.robust.sum() + f.fragile.sum() == clean.sum()


def test_flips_between_dense_and_pruned(full, pruned):
    _, p = pruned
    f = flips(full, p)
    n = len(full.labels)
    assert np.allclose(f.delta_error, (f.broken_count - f.fixed_count) / n)
    assert np.allclose(f.delta_error, p.error - full.error)
    assert (f.broken & f.fixed).sum() == 0
    assert np.array_equal(f.changed, full.predictions != p.predictions)
    same = flips(full, full)
    assert same.broken.sum() == 0 and same.fixed.sum() == 0 and same.changed.sum() == 0


def test_flips_refuses_incomparable_results(full, default_session):
    r = corruption_errors(default_session.base, corruptions=FEW, severities=(1,), seed=1,
                          progress=False)
    with pytest.raises(ParameterError, match="corruptions or severities"):
        flips(full, r)
    r0 = corruption_errors(default_session.base, corruptions=FEW, severities=(1,), seed=0,
                           progress=False)
    with pytest.raises(ParameterError, match="seed"):
        flips(r0, r)


# --- layer sensitivity ---------------------------------------------------------------------------
def test_layer_sensitivity_matches_pruning_by_hand(default_session):
    from workbench.prune import PRUNERS

    model = default_session.base.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = layer_sensitivity(default_session, corruptions=FEW, severity=3, progress=False)
    assert m.layers == ("features.0", "features.3", "classifier.0", "classifier.2", "fc")
    assert m.delta_error.shape == (5, len(FEW)) and m.transform == "magnitude-50%"
    assert np.allclose(m.delta_error, m.error - m.base_error)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    data = default_session.data
    y = data.y_test.numpy()
    layer = "classifier.0"
    others = [n for n in m.layers if n != layer]
    hand = PRUNERS["magnitude"](model, 0.5, exclude=others).model
    assert (hand.classifier[0].weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(hand.fc.weight, model.fc.weight)
    for c, name in enumerate(FEW):
        x = CORRUPTIONS[name](data.x_test, 3, seed=0)
        err = float((hand(x).argmax(1).numpy() != y).mean())
        base = float((model(x).argmax(1).numpy() != y).mean())
        assert m.error[2, c] == pytest.approx(err) and m.base_error[c] == pytest.approx(base)


def test_layer_sensitivity_identity_and_quantization(default_session):
    ident = layer_sensitivity(default_session, transform=lambda model, layer: model,
                              corruptions=FEW[:2], layers=["fc", "features.0"], progress=False)
    assert ident.layers == ("fc", "features.0") and np.all(ident.delta_error == 0)
    assert np.all(ident.delta_clean_error == 0)
    q = layer_sensitivity(default_session, transform="uniform", bits=2, corruptions=FEW[:2],
                          layers=["features.3"], progress=False)
    assert q.transform == "uniform-2bit" and q.delta_error.shape == (1, 2)
    assert q.delta_clean_error[0] > 0.1  # 2-bit weights in the second conv hurt
    with pytest.raises(ParameterError, match="transform"):
        layer_sensitivity(default_session, transform="nope", corruptions=FEW, progress=False)
    with pytest.raises(ParameterError, match="layers"):
        layer_sensitivity(default_session, layers=["nope"], corruptions=FEW, progress=False)
    with pytest.raises(ParameterError, match="severity"):
        layer_sensitivity(default_session, severity=9, corruptions=FEW, progress=False)


# --- gallery -----------------------------------------------------------------------------------
def test_gallery_shows_the_evaluated_images(default_session):
    x = default_session.data.x_test
    g = gallery(x[:4], ["zigzag", "rotate"], severities=(1, 5), seed=3)
    assert g.images.shape == (2, 2, 4, 1, 8, 8) and g.clean.shape == (4, 1, 8, 8)
    full = CORRUPTIONS["zigzag"](x, 5, seed=3)  # same sample position → same corruption
    assert np.allclose(g.images[0, 1], full[:4].numpy(), atol=1e-6)
    assert g.corruptions == ("zigzag", "rotate") and g.severities == (1, 5)
    assert len(gallery(x[:2]).corruptions) == 15
    with pytest.raises(ParameterError, match="few"):
        gallery(torch.rand(300, 1, 8, 8))

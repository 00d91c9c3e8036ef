"""Feature geometry (angle, length, margin), embeddings, CKA, model maps and neural collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count, state_equal, zoo_model
from workbench.analysis.geometry import (drift, embed, feature_geometry, features_and_logits,
                                         geometry_from_features, per_class)
from workbench.analysis.similarity import (geometry_vector, geometry_vector_labels, linear_cka,
                                           minimum_spanning_tree, model_similarity,
                                           neural_collapse)
from workbench.errors import DataError, ParameterError, UnsupportedLayerError

W = [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]
B = [0.0, 0.5, 0.0]


class Head(nn.Module):
    """Inputs are the features: ``body`` is the identity, ``fc`` a hand-set 2 → 3 layer."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.body = nn.Identity()
        self.fc = nn.Linear(2, 3)
        self.fail = fail
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))
            self.fc.bias.copy_(torch.tensor(B))

    def forward(self, x):
        out = self.fc(self.body(x))
        if self.fail:
            raise RuntimeError("boom after the classifier")
        return out


def _oracle(h, y):
    """Angle (degrees), length and margin by explicit loops over pairs."""
    w, b = np.array(W), np.array(B)
    ang, ln, mar = [], [], []
    for hi, yi in zip(h, y):
        ln.append(math.sqrt(sum(v * v for v in hi)))
        wy = w[yi]
        cos = sum(p * q for p, q in zip(hi, wy)) / (ln[-1] * math.sqrt(sum(q * q for q in wy)))
        ang.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
        best = math.inf
        for j in range(3):
            if j != yi:
                d = wy - w[j]
                best = min(best, (d @ hi + b[yi] - b[j]) / math.sqrt(d @ d))
        mar.append(best)
    return np.array(ang), np.array(ln), np.array(mar)


# --- geometry ----------------------------------------------------------------------------------
def test_hand_built_geometry_is_exact():
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -2.0], [0.5, 0.2], [1.0, 0.2]])
    y = torch.tensor([0, 1, 0, 2, 1, 1])
    g = feature_geometry(Head(), h, y)
    ang, ln, mar = _oracle(h.numpy(), y.numpy())
    assert np.allclose(g.angle, ang) and np.allclose(g.length, ln) and np.allclose(g.margin, mar)
    # sample 0 by hand: angle 0°, length 2; boundary with class 1: ((1,-1)·(2,0) - 0.5)/√2
    assert g.angle[0] == pytest.approx(0.0, abs=1e-6) and g.length[0] == 2.0
    assert g.margin[0] == pytest.approx(1.5 / math.sqrt(2)) and g.nearest[0] == 1
    # sample 2: h = (1, 1) vs w_0 = (1, 0): 45°
    assert g.angle[2] == pytest.approx(45.0)
    # sample 4: logits (0.5, 0.7, -0.7), right; nearest boundary with class 0 at 0.2/√2
    assert g.predictions[4] == 1 and g.nearest[4] == 0
    assert g.margin[4] == pytest.approx(0.2 / math.sqrt(2))
    # sample 5: logits (1, 0.7, -1.2), wrong: (-1, 1)·(1, 0.2) + 0.5 = -0.3 → -0.3/√2
    assert g.predictions[5] == 0 and g.margin[5] == pytest.approx(-0.3 / math.sqrt(2))
    assert np.array_equal((g.margin < 0), g.predictions != g.labels)
    assert np.allclose(g.logits, h.numpy() @ np.array(W).T + np.array(B), atol=1e-6)
    assert g.layer == "fc" and g.meta["fc_is_output"]
    assert np.allclose(g.features, h.numpy()) and g.weight.shape == (3, 2)


def test_margin_is_negative_exactly_when_misclassified():
    model = zoo_model("mlp", (6,), 5, seed=1)
    x = torch.randn(500, 6)
    y = torch.randint(0, 5, (500,))
    g = feature_geometry(model, x, y)
    wrong = g.predictions != g.labels
    assert 0.5 < wrong.mean() < 0.95  # random labels: mostly wrong, some right
    assert np.array_equal(g.margin < 0, wrong)
    # the margin is a distance: moving h by |margin| along the boundary normal reaches it
    i = int(np.argmax(~wrong))
    j = g.nearest[i]
    w, b = g.weight, g.bias
    normal = (w[y[i]] - w[j]) / np.linalg.norm(w[y[i]] - w[j])
    on_boundary = g.features[i] - g.margin[i] * normal
    assert (w[y[i]] - w[j]) @ on_boundary + b[y[i]] - b[j] == pytest.approx(0.0, abs=1e-6)


def test_hooks_are_removed_even_when_the_forward_fails():
    model = Head(fail=True)
    with pytest.raises(DataError, match="boom"):
        feature_geometry(model, torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    assert hook_count(model) == 0

    class Bad(Head):
        def forward(self, x):
            self.fc(x)
            raise ValueError("not a runtime error")

    bad = Bad()
    with pytest.raises(ValueError):
        features_and_logits(bad, torch.randn(3, 2))
    assert hook_count(bad) == 0


def test_default_model_geometry_and_no_side_effects(default_session):
    model = default_session.base.model
    ref = zoo_model("lenet5")
    ref.load_state_dict(model.state_dict())
    model.train()
    try:
        g = feature_geometry(default_session)
        assert model.training  # mode restored
    finally:
        model.eval()
    assert state_equal(model, ref) and hook_count(model) == 0
    data = default_session.data
    assert g.features.shape == (len(data.y_test), 84)
    acc = default_session.base.metrics.accuracy
    assert g.correct.mean() == pytest.approx(acc, abs=1e-6)
    assert np.array_equal(g.margin < 0, ~g.correct)
    assert np.all(g.length >= 0) and np.all((g.angle >= 0) & (g.angle <= 180))
    # a bigger logit for the true class comes with a smaller angle on average
    assert np.corrcoef(g.angle, g.logits[np.arange(len(g.labels)), g.labels])[0, 1] < 0


def test_layer_choice_and_errors():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    g = feature_geometry(net, torch.randn(10, 4), torch.randint(0, 2, (10,)))
    assert g.layer == "2" and g.features.shape == (10, 3)
    g0 = feature_geometry(net, torch.randn(10, 4), torch.randint(0, 3, (10,)), layer="0")
    assert g0.layer == "0" and g0.features.shape == (10, 4) and not g0.meta["fc_is_output"]
    with pytest.raises(UnsupportedLayerError):
        feature_geometry(net, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), layer="1")
    with pytest.raises(ParameterError):
        feature_geometry(net, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), layer="nope")
    with pytest.raises(UnsupportedLayerError):
        feature_geometry(nn.Sequential(nn.Flatten()), torch.randn(3, 4),
                         torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError):
        feature_geometry(net, torch.randn(3, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError):
        geometry_from_features(np.ones((2, 2)), np.eye(2), np.zeros(2), np.array([0, 5]))


def test_per_class_and_drift(default_session):
    from workbench.prune import PRUNERS

    g = feature_geometry(default_session)
    pc = per_class(g)
    y = g.labels
    for c in (0, 4, 9):
        m = y == c
        assert pc.count[c] == m.sum()
        assert pc.angle_mean[c] == pytest.approx(g.angle[m].mean())
        assert pc.margin_std[c] == pytest.approx(g.margin[m].std())
        assert pc.accuracy[c] == pytest.approx(g.correct[m].mean())
    zero = drift(g, g)
    assert np.all(zero.angle == 0) and np.all(zero.margin == 0) and not zero.changed.any()
    assert np.allclose(zero.feature_cosine, 1.0)
    pruned = PRUNERS["magnitude"](default_session.base.model, 0.8).model
    gp = feature_geometry(pruned, default_session.data)
    d = drift(g, gp)
    assert np.allclose(d.length, gp.length - g.length)
    assert np.array_equal(d.broken, g.correct & ~gp.correct)
    assert d.class_margin[3] == pytest.approx((gp.margin - g.margin)[y == 3].mean())
    assert np.all(d.feature_cosine <= 1 + 1e-9)
    with pytest.raises(DataError):
        drift(g, geometry_from_features(np.ones((2, 84)), g.weight, g.bias, np.array([0, 1])))


# --- embeddings ---------------------------------------------------------------------------------
def test_pca_and_tsne_embeddings(default_session):
    from sklearn.decomposition import PCA

    g = feature_geometry(default_session)
    e = embed(g, "pca")
    assert e.coords.shape == (len(g.labels), 2) and e.method == "pca"
    ref = PCA(n_components=2, svd_solver="full").fit_transform(g.features)
    assert np.allclose(e.coords, ref, atol=1e-6)
    assert np.array_equal(embed(g.features, "pca", n_components=3).coords.shape, (360, 3))
    x = g.features[:40]
    t1, t2 = embed(x, "tsne", seed=1, max_iter=250), embed(x, "tsne", seed=1, max_iter=250)
    assert t1.coords.shape == (40, 2) and np.array_equal(t1.coords, t2.coords)
    with pytest.raises(ParameterError):
        embed(x, "isomap")
    with pytest.raises(ParameterError):
        embed(x, "pca", n_components=0)
    with pytest.raises(DataError):
        embed(np.array([[np.nan, 1.0], [0.0, 1.0]]))


@pytest.mark.slow
def test_umap_embedding_and_map_are_seeded():
    """UMAP's first call compiles with numba (~10-30 s); both UMAP uses are in this test."""
    x = np.random.default_rng(0).normal(size=(60, 8))
    a, b = embed(x, "umap", seed=3), embed(x, "umap", seed=3)
    assert a.coords.shape == (60, 2) and np.array_equal(a.coords, b.coords)
    vectors = {f"m{i}": v for i, v in enumerate(np.random.default_rng(1).normal(size=(6, 5)))}
    s1, s2 = model_similarity(vectors, "umap", seed=2), model_similarity(vectors, "umap", seed=2)
    assert s1.coords.shape == (6, 2) and np.array_equal(s1.coords, s2.coords)
    assert len(s1.mst_edges) == 5
    with pytest.raises(ParameterError, match="at least 4"):
        model_similarity({"a": [1.0], "b": [2.0], "c": [3.0]}, "umap")


# --- similarity --------------------------------------------------------------------------------
def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0)
    noise = rng.normal(size=(400, 5))
    assert linear_cka(x, noise) < 0.05
    # against the definition with explicit centring matrix and Gram matrices
    h = np.eye(400) - 1 / 400
    kx, ky = h @ x @ x.T @ h, h @ noise @ noise.T @ h
    hsic = np.trace(kx @ ky)
    assert linear_cka(x, noise) == pytest.approx(
        hsic / math.sqrt(np.trace(kx @ kx) * np.trace(ky @ ky)))
    wide = rng.normal(size=(10, 50))  # n < d: computed from Gram matrices, same definition
    h = np.eye(10) - 1 / 10
    ka, kb = h @ wide @ wide.T @ h, h @ wide[:, :30] @ wide[:, :30].T @ h
    assert linear_cka(wide, wide[:, :30]) == pytest.approx(
        np.trace(ka @ kb) / math.sqrt(np.trace(ka @ ka) * np.trace(kb @ kb)))
    assert 0 < linear_cka(wide, wide[:, :30]) < 1
    with pytest.raises(DataError):
        linear_cka(x, x[:10])
    with pytest.raises(DataError, match="constant"):
        linear_cka(x, np.ones((400, 2)))


def test_geometry_vector_and_mds_map(default_session):
    from workbench.prune import PRUNERS

    g = feature_geometry(default_session)
    v = geometry_vector(g)
    labels = geometry_vector_labels(10)
    assert v.shape == (74,) and len(labels) == 74 and labels[0] == "0/angle_mean"
    assert v[labels.index("3/margin_mean")] == pytest.approx(g.margin[g.labels == 3].mean())
    assert v[-1] == pytest.approx(g.correct.mean())
    vectors = {"dense": v}
    for s in (0.5, 0.8, 0.9):
        model = PRUNERS["magnitude"](default_session.base.model, s).model
        vectors[f"mag-{s}"] = geometry_vector(feature_geometry(model, default_session.data))
    sim = model_similarity(vectors, "mds", seed=0)
    assert sim.names == ("dense", "mag-0.5", "mag-0.8", "mag-0.9")
    assert sim.coords.shape == (4, 2) and len(sim.mst_edges) == 3
    assert np.array_equal(sim.coords, model_similarity(vectors, "mds", seed=0).coords)
    # the MST is a tree of minimal total weight: compare with brute force over all trees
    from itertools import combinations

    d = sim.distances
    best = math.inf
    for edges in combinations(list(combinations(range(4), 2)), 3):
        parent = list(range(4))

        def find(a):
            while parent[a] != a:
                a = parent[a]
            return a

        ok = True
        for i, j in edges:
            ri, rj = find(i), find(j)
            if ri == rj:
                ok = False
                break
            parent[ri] = rj
        if ok:
            best = min(best, sum(d[i, j] for i, j in edges))
    assert sum(w for _, _, w in sim.mst_edges) == pytest.approx(best)
    # MDS preserves the distances reasonably in 2-D
    from scipy.spatial.distance import pdist, squareform

    assert np.corrcoef(squareform(pdist(sim.coords))[np.triu_indices(4, 1)],
                       d[np.triu_indices(4, 1)])[0, 1] > 0.9


def test_mst_edge_cases():
    tree = minimum_spanning_tree(np.zeros((3, 3)))  # identical models: 0 is still an edge
    assert len(tree) == 2 and all(w == 0 for _, _, w in tree)
    assert minimum_spanning_tree(np.zeros((1, 1))) == ()
    two = model_similarity({"a": [0.0, 0.0], "b": [3.0, 4.0]}, standardize=False)
    assert two.mst_edges == ((0, 1, 5.0),)
    assert np.linalg.norm(two.coords[0] - two.coords[1]) == pytest.approx(5.0)
    with pytest.raises(DataError, match="NaN"):
        model_similarity({"a": [np.nan], "b": [1.0]})
    with pytest.raises(ParameterError):
        model_similarity({"a": [1.0]})
    with pytest.raises(ParameterError):
        model_similarity({"a": [1.0], "b": [2.0]}, "tsne")


def test_neural_collapse_hand_math(default_session):
    h = np.array([[-1.1], [-0.9], [0.9], [1.1]])
    nc = neural_collapse(h, np.array([0, 0, 1, 1]))
    assert nc.within[0, 0] == pytest.approx(0.01) and nc.between[0, 0] == pytest.approx(1.0)
    assert nc.nc1 == pytest.approx(0.005)
    assert np.allclose(nc.class_means, [[-1.0], [1.0]]) and np.allclose(nc.global_mean, [0.0])
    collapsed = np.repeat(np.eye(3), 5, axis=0) * 4.0  # every sample at its class mean
    assert neural_collapse(collapsed, np.repeat(np.arange(3), 5)).nc1 == pytest.approx(0.0)
    rng = np.random.default_rng(0)  # 2-D, 3 classes: against the formula with numpy's pinv
    y = np.repeat(np.arange(3), 20)
    h = rng.normal(size=(60, 2)) + np.array([[0, 0], [3, 0], [0, 3]])[y]
    nc = neural_collapse(h, y)
    means = np.stack([h[y == c].mean(0) for c in range(3)])
    sw = sum(np.outer(r - means[c], r - means[c]) for r, c in zip(h, y)) / 60
    sb = sum(np.outer(m - h.mean(0), m - h.mean(0)) for m in means) / 3
    assert nc.nc1 == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / 3)
    g = feature_geometry(default_session)
    assert neural_collapse(g).nc1 > 0
    with pytest.raises(DataError):
        neural_collapse(h, np.zeros(60))

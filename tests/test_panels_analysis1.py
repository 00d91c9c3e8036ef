"""Landscape, Hessian and Subspace panels and their plot functions, without a browser."""

from __future__ import annotations

import time

import numpy as np
import panel as pn
import pytest
import torch
from torch.nn import functional as F

from workbench.analysis import (Curve, Eigen, Landscape, SpectralDensity, Trace, landscape_2d,
                                project_onto)
from workbench.analysis.subspace import subspace_from_gradients
from workbench.panels import dashboard as dashboard_module
from workbench.panels.dashboard import Dashboard
from workbench.panels.hessian import PER_LAYER, WHOLE, HessianPanel, parameter_modules
from workbench.panels.landscape import MAX_EVALUATIONS, LandscapePanel, plane_through
from workbench.panels.state import SessionState
from workbench.panels.subspace import SubspacePanel, default_cut, parse_norms
from workbench.plots.hessian import (DENSITY_FLOOR, density_figure, eigenvalues_figure,
                                     trace_figure)
from workbench.plots.landscape import contour_figure, curves_figure, surface_figure
from workbench.plots.subspace import (active_counts_figure, asnet_figure, asnet_rows,
                                      attack_figure, decay_figure, decay_fractions,
                                      perturbation_figure)
from workbench.prune.active import channel_counts
from workbench.errors import ParameterError


def visible_alerts(view) -> list[str]:
    return [str(a.object) for a in view.select(pn.pane.Alert) if a.visible and a.object]


@pytest.fixture
def state(fresh_session):
    return SessionState(session=fresh_session)


@pytest.fixture
def pruned_state(state):
    state.add("prune", "magnitude", sparsity=0.5)
    return state


def subset_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


# --- Landscape panel ---------------------------------------------------------------------------
def test_landscape_plane_figures_are_the_results(pruned_state):
    panel = LandscapePanel(state=pruned_state, steps=5, samples=48)
    panel.variants = ["base", "magnitude-50"]
    results = panel.run_now()
    assert panel.error == "" and set(results) == {("plane", "base"), ("plane", "magnitude-50")}
    ls = results[("plane", "magnitude-50")]
    assert ls.loss.shape == (5, 5) and ls.meta["masked"] is True
    assert results[("plane", "base")].meta["masked"] is False
    x, y = panel.test_subset("magnitude-50", 48)
    assert len(y) == 48
    assert ls.center_loss == pytest.approx(subset_loss(pruned_state.variant("magnitude-50").model,
                                                       x, y), abs=1e-5)
    fig = panel.figures()["magnitude-50"]
    assert [t.type for t in fig.data] == ["contour", "scatter"]
    np.testing.assert_array_equal(fig.data[0].z, ls.loss)
    np.testing.assert_array_equal(fig.data[0].x, ls.alphas)
    np.testing.assert_array_equal(fig.data[0].y, ls.betas)
    panel.param.update(surface=True, metric="accuracy")
    fig = panel.figures()["magnitude-50"]
    assert fig.data[0].type == "surface"
    np.testing.assert_allclose(fig.data[0].z, 100 * ls.accuracy)
    # the rendered view shows one Plotly pane per figure and no error
    view = panel.__panel__()
    assert len(view.select(pn.pane.Plotly)) == 2 and visible_alerts(view) == []


def test_landscape_dense_mode_puts_the_variant_on_the_plane(pruned_state):
    pruned_state.add("prune", "l1_structured", sparsity=0.5)
    panel = LandscapePanel(state=pruned_state, steps=5, samples=48, on_dense=True,
                           variants=["base", "magnitude-50", "l1_structured-50"])
    results = panel.run_now()
    assert panel.error == ""
    assert set(results) == {("dense", "base"), ("point", "magnitude-50")}
    assert "**l1_structured-50** is physically slimmed" in panel.notes()
    ls, point = results[("dense", "base")], results[("point", "magnitude-50")]
    assert (point.alpha, point.beta) == (pytest.approx(1.0, abs=1e-5), pytest.approx(0.0, abs=1e-5))
    assert point.residual_norm < 1e-4 * point.offset_norm
    assert ls.alphas[0] == pytest.approx(-0.5) and ls.alphas[-1] == pytest.approx(1.5)
    x, y = panel.test_subset("base", 48)
    assert ls.center_loss == pytest.approx(subset_loss(pruned_state.variant("base").model, x, y),
                                           abs=1e-5)
    fig = panel.figures()["base (dense)"]
    assert [t.name for t in fig.data] == ["loss", "centre", "magnitude-50"]
    assert list(fig.data[2].x) == [pytest.approx(1.0, abs=1e-5)]
    np.testing.assert_array_equal(fig.data[0].z, ls.loss)
    assert "magnitude-50" in panel.notes() and "on the plane" in panel.notes()


def test_plane_through_two_models_places_both_exactly(pruned_state):
    state = pruned_state
    state.add("prune", "random", sparsity=0.3)
    base, a, b = (state.variant(n) for n in ("base", "magnitude-50", "random-30"))
    dirs = plane_through(base, [a, b])
    pa, pb = project_onto(base, a, dirs), project_onto(base, b, dirs)
    assert (pa.alpha, pa.beta, pa.residual_norm) == pytest.approx((1.0, 0.0, 0.0), abs=1e-5)
    assert pb.beta == pytest.approx(1.0, abs=1e-5) and pb.residual_norm < 1e-4
    with pytest.raises(ParameterError, match="identical"):
        plane_through(base, [base])


def test_landscape_lines_and_interpolation_match_the_models(pruned_state):
    panel = LandscapePanel(state=pruned_state, kind="line", steps=7, samples=40,
                           variants=["base", "magnitude-50"])
    results = panel.run_now()
    fig = panel.figures()["lines"]
    assert [t.name for t in fig.data] == ["base", "magnitude-50"]
    np.testing.assert_array_equal(fig.data[1].y, results[("line", "magnitude-50")].loss)

    panel.param.update(kind="interpolation", extrapolate=0.0, steps=5)
    results = panel.run_now()
    assert set(results) == {("interpolation", "magnitude-50")}  # base → base is skipped
    curve = results[("interpolation", "magnitude-50")]
    assert curve.alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    x, y = panel.test_subset("base", 40)
    assert curve.loss[0] == pytest.approx(subset_loss(pruned_state.variant("base").model, x, y),
                                          abs=1e-5)
    assert curve.loss[-1] == pytest.approx(
        subset_loss(pruned_state.variant("magnitude-50").model, x, y), abs=1e-5)
    fig = panel.figures()["interpolation"]
    assert len(fig.data) == 1 and fig.data[0].name == "base → magnitude-50"
    np.testing.assert_array_equal(fig.data[0].y, curve.loss)
    panel.variants = ["base"]
    assert panel.run_now() is panel.results and "another variant" in panel.error


def test_landscape_rerun_is_answered_from_the_cache(pruned_state):
    panel = LandscapePanel(state=pruned_state, steps=5, samples=32, variants=["magnitude-50"])
    first = panel.run_now()[("plane", "magnitude-50")]
    assert panel.cache_hits == 0
    t = time.perf_counter()
    again = panel.run_now()[("plane", "magnitude-50")]
    assert time.perf_counter() - t < 0.2
    assert again is first and panel.cache_hits == 1 and "from the cache" in panel.status
    panel.seed = 1  # a new setting is a new key
    other = panel.run_now()[("plane", "magnitude-50")]
    assert other is not first and not np.allclose(other.loss, first.loss)
    panel.seed = 0
    assert panel.run_now()[("plane", "magnitude-50")] is first


def test_landscape_too_large_grid_shows_an_alert_and_the_panel_recovers(pruned_state):
    panel = LandscapePanel(state=pruned_state, steps=5, samples=32, variants=["base"])
    view = panel.__panel__()
    ok = panel.run_now()
    panel.param.update(steps=501, samples=360)
    assert 501 ** 2 * 360 > MAX_EVALUATIONS
    panel.run_now()
    assert "evaluations" in panel.error and panel.busy is False
    assert any("evaluations" in a for a in visible_alerts(view))
    assert panel.results is ok  # the previous figures stay
    panel.param.update(steps=3, samples=16)
    res = panel.run_now()
    assert panel.error == "" and res[("plane", "base")].loss.shape == (3, 3)
    assert visible_alerts(view) == []


def test_landscape_run_button_path_completes(pruned_state):
    panel = LandscapePanel(state=pruned_state, kind="line", steps=3, samples=16,
                           variants=["base"])
    panel.param.trigger("run")  # the button's async path, run to completion here
    assert panel.busy is False and panel.progress == 100 and panel.error == ""
    assert panel.results[("line", "base")].loss.shape == (3,)


def test_variants_added_to_the_state_appear_in_every_selector(state):
    panels = [LandscapePanel(state=state), HessianPanel(state=state), SubspacePanel(state=state)]
    views = [p.__panel__() for p in panels]
    assert all(p.param.variants.objects == ["base"] and p.variants == ["base"] for p in panels)
    state.add("prune", "magnitude", sparsity=0.6)
    for p, view in zip(panels, views):
        assert p.param.variants.objects == ["base", "magnitude-60"]
        choice = view.select(pn.widgets.MultiChoice)[0]
        assert list(choice.options) == ["base", "magnitude-60"]
        assert p.variants == ["base"]  # the selection is kept
    assert panels[0].param.reference.objects == ["base", "magnitude-60"]
    state.remove("magnitude-60")
    assert all(p.param.variants.objects == ["base"] for p in panels)


def test_a_removed_variant_leaves_the_selection_and_the_cache(pruned_state):
    panel = LandscapePanel(state=pruned_state, kind="line", steps=3, samples=16,
                           variants=["magnitude-50"])
    panel.run_now()
    assert len(panel._cache) == 1
    pruned_state.remove("magnitude-50")
    assert panel.variants == ["base"] and len(panel._cache) == 0


# --- Hessian panel -----------------------------------------------------------------------------
def test_hessian_panel_figures_are_the_results(pruned_state):
    panel = HessianPanel(state=pruned_state, k=2, iters=8, trace_samples=4, density_iters=6,
                         samples=32, variants=["base", "magnitude-50"])
    results = panel.run_now()
    assert panel.error == ""
    assert set(results) == {(kind, n) for kind in ("eigen", "trace", "density")
                            for n in ("base", "magnitude-50")}
    figs = panel.figures()
    assert list(figs) == ["eigenvalues", "trace", "density"]
    eig = figs["eigenvalues"]
    assert [t.name for t in eig.data] == ["base", "magnitude-50"]
    np.testing.assert_array_equal(eig.data[1].y, results[("eigen", "magnitude-50")].values)
    tr = figs["trace"]
    assert list(tr.data[0].x) == ["base", "magnitude-50"]
    assert list(tr.data[0].y) == [results[("trace", n)].mean for n in ("base", "magnitude-50")]
    assert list(tr.data[0].error_y.array) == [results[("trace", n)].stderr
                                              for n in ("base", "magnitude-50")]
    dens = figs["density"]
    np.testing.assert_allclose(dens.data[0].y, results[("density", "base")].density + DENSITY_FLOOR)
    assert dens.layout.yaxis.type == "log"
    # the pruned variant's Hessian lives on its surviving weights
    v = pruned_state.variant("magnitude-50")
    total = sum(p.numel() for p in v.model.parameters())
    pruned = sum(int((~m).sum()) for m in v.masks.values())
    assert results[("eigen", "magnitude-50")].meta["dim"] == total - pruned
    assert results[("eigen", "base")].meta["dim"] == total
    assert "| magnitude-50 |" in panel.summary()


def test_hessian_per_layer_and_one_layer(state):
    layers = parameter_modules(state.session.base.model)
    assert layers == ["features.0", "features.3", "classifier.0", "classifier.2", "fc"]
    panel = HessianPanel(state=state, layer=PER_LAYER, k=1, iters=4, trace_samples=2,
                         density=False, samples=24)
    results = panel.run_now()
    assert set(results) == {(kind, ("base", layer)) for kind in ("eigen", "trace")
                            for layer in layers}
    fig = panel.figures()["eigenvalues"]
    assert list(fig.data[0].x) == layers
    assert list(fig.data[0].y) == [results[("eigen", ("base", n))].values[0] for n in layers]
    assert results[("eigen", ("base", "fc"))].meta["dim"] == 84 * 10 + 10
    panel.param.update(layer="fc", trace_samples=0)
    results = panel.run_now()
    assert set(results) == {("eigen", "base")}
    assert results[("eigen", "base")].meta["parameters"] == ["fc.weight", "fc.bias"]


def test_hessian_impossible_layer_shows_an_alert_and_recovers(state):
    panel = HessianPanel(state=state, k=1, iters=3, trace_samples=2, density_iters=3, samples=16)
    view = panel.__panel__()
    panel.layer = "no.such.layer"
    assert panel.run_now() == {}
    assert "no.such.layer" in panel.error and "names no module" in panel.error
    assert any("no.such.layer" in a for a in visible_alerts(view))
    assert panel.busy is False
    panel.layer = WHOLE
    results = panel.run_now()
    assert panel.error == "" and set(results) == {("eigen", "base"), ("trace", "base"),
                                                  ("density", "base")}
    assert visible_alerts(view) == []


# --- Subspace panel ----------------------------------------------------------------------------
def test_subspace_panel_spectra_counts_and_attack(state):
    state.add("prune", "l1_structured", sparsity=0.5)
    panel = SubspacePanel(state=state, analyses=["spectra", "attack"], samples=96,
                          norms="0, 1, 3", n_random=2, variants=["base"])
    results = panel.run_now()
    assert panel.error == ""
    assert set(results) == {("spectra", "base"), ("counts", "base"), ("attack", "base")}
    # same settings: the dense model's channel spectra are computed once
    assert results[("counts", "base")] is results[("spectra", "base")]
    spaces = results[("spectra", "base")]
    figs = panel.figures()
    decay = figs["decay"]
    assert len(decay.data) == len(spaces) == 5
    idx, frac = decay_fractions(spaces["features.3"])
    np.testing.assert_array_equal(decay.data[1].x, idx)
    np.testing.assert_allclose(decay.data[1].y, frac)
    assert [s.x0 for s in decay.layout.shapes] == [sp.active_dim for sp in spaces.values()]
    active = figs["active"]
    assert [t.name for t in active.data] == ["active neurons", "base", "l1_structured-50"]
    assert list(active.data[0].y) == [sp.active_dim for sp in spaces.values()]
    assert list(active.data[2].y) == list(
        channel_counts(state.variant("l1_structured-50").model).values())
    assert list(active.data[2].y)[:2] == [3, 8]
    curve = results[("attack", "base")]
    att = figs["attack"]
    assert len(att.data) == 3 and list(att.data[0].x) == [0.0, 1.0, 3.0]
    np.testing.assert_allclose(att.data[0].y, 100 * curve.success_as)
    np.testing.assert_allclose(att.data[1].y, 100 * curve.success_random)
    assert curve.success_as[0] == 0.0 and curve.success_as[-1] > curve.success_random[-1]
    pert = figs["perturbation base"]
    np.testing.assert_allclose(pert.data[0].z, curve.perturbation[0])


def test_subspace_asnet_against_variants(state):
    state.add("prune", "magnitude", sparsity=0.9)
    panel = SubspacePanel(state=state, analyses=["asnet"], samples=64, epochs=1, r=4)
    assert panel.cut == "features.5"
    results = panel.run_now()
    assert panel.error == ""
    res = results[("asnet", "base")]
    assert res.r == 4 and res.layer == "features.5" and res.params < res.base_params
    rows = panel.asnet_table()
    assert [r["kind"] for r in rows] == ["original", "ASNet", "variant"]
    assert rows[2]["name"] == "magnitude-90"
    assert rows[2]["params"] == state.variant("magnitude-90").metrics.nonzero_params
    fig = panel.figures()["asnet"]
    assert len(fig.data) == 3
    assert list(fig.data[0].y) == [res.base_params, res.params, rows[2]["params"]]
    np.testing.assert_allclose(fig.data[2].y, [100 * res.base_accuracy, 100 * res.accuracy,
                                               100 * rows[2]["accuracy"]])
    assert "ASNet r=4" in panel.asnet_markdown()


def test_subspace_bad_layer_and_norms_show_alerts(state):
    panel = SubspacePanel(state=state, analyses=["spectra"], samples=32, layer="nope")
    view = panel.__panel__()
    results = panel.run_now()
    assert "unknown layer" in panel.error and any("nope" in a for a in visible_alerts(view))
    assert set(results) == {("counts", "base")}  # the other job still ran
    panel.param.update(analyses=["attack"], norms="one, two")
    panel.run_now()
    assert "norms" in panel.error
    panel.param.update(layer="features.3", analyses=["spectra"])
    results = panel.run_now()
    assert panel.error == "" and list(results[("spectra", "base")]) == ["features.3"]


def test_subspace_helpers():
    assert parse_norms("0 1, 2.5") == [0.0, 1.0, 2.5]
    with pytest.raises(ParameterError):
        parse_norms("-1")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert default_cut(net) in {"0", "1", "2"}


# --- plot functions ----------------------------------------------------------------------------
def _landscape(steps=3):
    a = np.linspace(-1, 1, steps)
    loss = np.add.outer(a ** 2, a ** 2)
    return Landscape(a, a, loss, np.full_like(loss, 0.5), 0.0, {"center_accuracy": 0.5})


def test_landscape_plot_trace_counts():
    ls = _landscape()
    assert len(contour_figure(ls).data) == 2
    fig = contour_figure(ls, points={"a": (0.5, 0.5), "b": (3.0, -2.0)})
    assert len(fig.data) == 4 and fig.layout.xaxis.range[1] > 3.0  # a far point stays visible
    assert len(surface_figure(ls).data) == 2
    curves = {f"c{i}": Curve(np.arange(3.0), np.arange(3.0) * i, np.ones(3)) for i in range(3)}
    fig = curves_figure(curves, metric="accuracy")
    assert len(fig.data) == 3 and list(fig.data[0].y) == [100.0, 100.0, 100.0]
    assert len(fig.layout.shapes) == 0  # not interpolations: no end markers


def test_landscape_plot_of_a_real_landscape():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    ls = landscape_2d(net, x, y, steps=4, progress=False)
    fig = contour_figure(ls)
    np.testing.assert_array_equal(fig.data[0].z, ls.loss)
    assert fig.data[1].hovertemplate.startswith("centre")


def test_hessian_plot_trace_counts():
    eig = {n: Eigen(np.array([3.0, 1.0]), ()) for n in ("a", "b", "c")}
    assert len(eigenvalues_figure(eig).data) == 3
    tr = {n: Trace(1.0, 0.1, np.zeros(2)) for n in ("a", "b")}
    assert len(trace_figure(tr).data) == 1
    per = {"a": {"l1": Trace(1.0, 0.1, np.zeros(2))}, "b": {"l2": Trace(2.0, 0.2, np.zeros(2))}}
    fig = trace_figure(per)
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["l1", "l2"]
    assert list(fig.data[0].y) == [1.0, None]
    sd = SpectralDensity(np.linspace(0, 1, 5), np.ones(5), np.zeros((1, 2)), np.ones((1, 2)))
    assert len(density_figure({"a": sd, "b": sd}).data) == 2


def test_subspace_plot_trace_counts():
    rng = np.random.default_rng(0)
    spaces = {f"l{i}": subspace_from_gradients(rng.normal(size=(20, 4 + i)), layer=f"l{i}")
              for i in range(3)}
    fig = decay_figure(spaces)
    assert len(fig.data) == 3 and len(fig.layout.shapes) == 3
    fig = decay_figure({"dense": spaces, "pruned": spaces})
    assert len(fig.data) == 6 and sum(t.showlegend for t in fig.data) == 2
    fig = active_counts_figure({"l0": 2, "l1": 3}, {"dense": {"l0": 4, "l1": 5},
                                                     "slim": {"l0": 2, "l1": 5}})
    assert len(fig.data) == 3 and fig.layout.barmode == "group"
    from workbench.analysis import AttackCurve

    c = AttackCurve(np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), np.zeros(2),
                    np.zeros((3, 4, 4)))
    assert len(attack_figure(c).data) == 3
    assert len(attack_figure({"a": c, "b": c}).data) == 6
    assert len(perturbation_figure(c).data) == 3  # one heatmap per channel
    assert len(perturbation_figure(np.zeros((4, 4))).data) == 1


def test_asnet_rows_pick_the_closest_variants():
    class R:
        r, params, macs, accuracy = 4, 1000, 5000, 0.8
        base_params, base_macs, base_accuracy = 20000, 60000, 0.95

    class M:
        def __init__(self, p):
            self.nonzero_params, self.macs_nonzero, self.accuracy = p, 10 * p, 0.9

    rows = asnet_rows(R(), {"far": M(19000), "near": M(1100), "mid": M(3000)}, closest=2)
    assert [r["name"] for r in rows] == ["original", "ASNet r=4", "near", "mid"]
    assert rows[1]["params_vs_original"] == pytest.approx(0.05)
    assert rows[1]["accuracy_vs_original"] == pytest.approx(-0.15)
    assert len(asnet_figure(rows).data) == 3


# --- dashboard ---------------------------------------------------------------------------------
def test_dashboard_has_the_analysis_tabs_and_builds_them_without_computing(fresh_session):
    titles = [t for t, _ in dashboard_module.TABS]
    assert titles.index("Landscape") < titles.index("Hessian") < titles.index("Subspace")
    t = time.perf_counter()
    dash = Dashboard(session=fresh_session)
    assert time.perf_counter() - t < 10
    for title, cls in (("Landscape", LandscapePanel), ("Hessian", HessianPanel),
                       ("Subspace", SubspacePanel)):
        tab = dash.tabs[title]
        assert isinstance(tab, cls) and tab.results == {} and tab.state is dash.state
    # a variant made through the shared state reaches the analysis tabs
    dash.state.add("prune", "magnitude", sparsity=0.5)
    assert "magnitude-50" in dash.tabs["Hessian"].param.variants.objects

"""The Geometry, Relevance and Robustness panels, their plots, and the linked sample view."""

from __future__ import annotations

import time

import numpy as np
import panel as pn
import pytest
import torch

from workbench.analysis import (corruption_errors, drift, embed, feature_geometry, gallery, mce,
                                sample_flags)
from workbench.analysis.robustness import CorruptionResult
from workbench.analysis.similarity import geometry_vector, geometry_vector_labels
from workbench.panels.dashboard import Dashboard
from workbench.panels.geometry import GeometryPanel, cka_matrix
from workbench.panels.relevance import RelevancePanel
from workbench.panels.robustness import RobustnessPanel
from workbench.panels.samples import SampleSelection, SampleView, sample_info, shared_selection
from workbench.panels.state import SessionState
from workbench.plots.geometry import (angle_length_figure, drift_figure, embedding_figure,
                                      margin_histogram_figure, parallel_coordinates_figure)
from workbench.plots.relevance import channel_sum, relevance_grid_figure
from workbench.plots.robustness import (evaluation_table_figure, flips_table, gallery_figure,
                                        gallery_mosaic, outcomes_figure, severity_curves_figure)
from workbench.relevance import relevance
from workbench.widgets.buffers import from_bytes

CORRUPTIONS = ["rotate", "shot_noise"]


@pytest.fixture
def state(fresh_session):
    fresh_session.prune("magnitude", sparsity=0.8)
    state = SessionState(session=fresh_session)
    state.selected = ["base", "magnitude-80"]
    return state


def visible_alerts(view) -> list[str]:
    return [str(a.object) for a in view.select(pn.pane.Alert) if a.visible and a.object]


def figures_in(view) -> list:
    return [p.object for p in view.select(pn.pane.Plotly) if p.object is not None]


def points(fig, subplot: str = "x") -> list:
    """The per-sample traces of one subplot (``xaxis`` name ``"x"``, ``"x2"`` …)."""
    return [t for t in fig.data if t.meta == "points" and (t.xaxis or "x") == subplot]


# --- robustness -----------------------------------------------------------------------------------
def test_robustness_panel_figures_are_its_results_and_reruns_are_cached(state):
    panel = RobustnessPanel(state=state, samples=48, corruptions=CORRUPTIONS, severities=[1, 5],
                            sensitivity=True)
    assert panel.variants == ["base", "magnitude-80"]
    panel.param.trigger("run")  # the Run button's path (a worker thread, awaited here)
    results = panel.results
    assert panel.error == "" and panel.progress == 100 and not panel.busy
    assert state.session.variants["magnitude-80"] is panel.selection.records[
        ("corruption", "magnitude-80")].variant  # published for the sample view
    base, pruned = results[("errors", "base")], results[("errors", "magnitude-80")]
    assert base.error.shape == (2, 2) and base.meta["n"] == 48
    # same images and seed as a direct call on the same samples
    idx = panel.indices
    x, y = state.session.data.x_test[idx], state.session.data.y_test[idx]
    direct = corruption_errors(state.variant("magnitude-80"), x, y, CORRUPTIONS, (1, 5),
                               progress=False)
    assert np.array_equal(direct.predictions, pruned.predictions)

    fig = panel.table_figure()
    assert np.array_equal(np.asarray(fig.data[0].z), np.stack([base.mean_error,
                                                               pruned.mean_error]))
    assert list(fig.data[0].y) == ["base", "magnitude-80"]
    m = mce(pruned, base)
    assert np.asarray(fig.data[1].z, dtype=float)[1].tolist() == pytest.approx(
        [m["mce"], m["relative_mce"]])
    assert np.asarray(fig.data[1].z, dtype=float)[0].tolist() == pytest.approx([1.0, 1.0])
    panel.show_severity = 5
    assert list(panel.table_figure().data[0].z[1]) == list(pruned.error[:, 1])

    curves = panel.curves_figure()
    assert [t.name for t in curves.data] == ["base", "magnitude-80"] * 2
    assert list(curves.data[3].y) == [pruned.clean_error, *pruned.error[1]]

    sens = results[("sensitivity", "base")]
    sfig = panel.sensitivity_figure()
    assert np.array_equal(np.asarray(sfig.data[0].z), sens.delta_error)
    assert list(sfig.data[0].y) == list(sens.layers) and sens.layers[-1] == "fc"

    table = panel.flips_frame()
    flags = sample_flags(pruned)
    row = table.iloc[0]
    pos = int(np.flatnonzero(idx == row["sample"])[0])
    assert row["magnitude-80"] == flags.flip_count[pos] and row["label"] == int(y[pos])

    hits = panel.cache_hits
    t = time.perf_counter()
    again = panel.run_now()
    assert time.perf_counter() - t < 1.0
    assert panel.cache_hits == hits + len(again) and "from the cache" in panel.status
    assert again[("errors", "base")] is base


def test_robustness_gallery_shows_the_images_the_variants_saw(state):
    panel = RobustnessPanel(state=state, samples=24, corruptions=CORRUPTIONS, severities=[2, 4])
    panel.run_now()
    idx = panel.indices
    panel.select_sample(int(idx[5]))
    fig = panel.gallery_figure()
    x = state.session.data.x_test[idx[:6]]
    g = gallery(x, CORRUPTIONS, (2, 4))
    assert np.array_equal(np.asarray(fig.data[0].z), gallery_mosaic(g, 5), equal_nan=True)
    assert f"sample {int(idx[5])}" in fig.layout.title.text
    # hover: each variant's prediction on that corrupted image
    pred = panel.results[("errors", "base")].predictions[1, 0, 5]
    assert f"base: {pred}" in fig.data[0].customdata[9 + 1, 9 + 1]  # row 1 (shot_noise), col 1


def test_selecting_a_row_of_the_flips_table_selects_the_sample(state):
    panel = RobustnessPanel(state=state, samples=40, corruptions=CORRUPTIONS, severities=[1, 5])
    panel.run_now()
    view = panel.__panel__()
    table = [t for t in view.select(pn.widgets.Tabulator) if "wb-flips" in t.css_classes][0]
    table.selection = [1]
    expected = int(panel.flips_frame().iloc[1]["sample"])
    assert panel.selection.index == expected and panel.selection.source == "Robustness"
    info = panel.sample_view.info()
    pos = int(np.flatnonzero(panel.indices == expected)[0])
    for r in info.rows:
        flags = sample_flags(panel.results[("errors", r.name)])
        assert r.position == pos
        assert r.flips == [(c, int(s)) for c, s in zip(CORRUPTIONS, flags.first_flip[:, pos])
                           if s > 0]
    out = panel.sample_view.outcomes_figure()
    assert np.asarray(out.data[0].z).tolist() == [
        sample_flags(panel.results[("errors", n)]).first_flip[:, pos].tolist()
        for n in ("base", "magnitude-80")]


# --- geometry -------------------------------------------------------------------------------------
def test_geometry_panel_figures_are_its_results(state):
    panel = GeometryPanel(state=state, samples=60)
    results = panel.run_now()
    assert panel.error == ""
    idx = panel.indices
    g = results[("geometry", "magnitude-80")]
    x, y = state.session.data.x_test[idx], state.session.data.y_test[idx]
    ref = feature_geometry(state.variant("magnitude-80"), x, y)
    assert np.array_equal(g.margin, ref.margin)

    fig = panel.scatter_figure()
    second = points(fig, "x2")  # the second variant's subplot
    assert sorted(int(i) for t in second for i in t.customdata) == sorted(idx.tolist())
    cls0 = [t for t in second if t.name == "class 0"][0]
    assert np.array_equal(np.asarray(cls0.x), g.angle[g.labels == 0])
    assert np.array_equal(np.asarray(cls0.y), g.length[g.labels == 0])
    panel.param.update(color="correct", only_class=3)
    fig = panel.scatter_figure()
    assert {t.name for t in fig.data} <= {"correct", "misclassified"}
    assert sum(len(t.x) for t in points(fig)) == int((g.labels == 3).sum())

    emb = results[("embedding", "base")]
    assert np.array_equal(emb.coords, embed(results[("geometry", "base")], "pca").coords)
    assert np.array_equal(results[("cka",)], cka_matrix({n: results[("geometry", n)].features
                                                        for n in ("base", "magnitude-80")}))
    assert np.allclose(np.diag(results[("cka",)]), 1.0)
    assert list(panel.cka_figure().data[0].z.ravel()) == list(results[("cka",)].ravel())
    sim = results[("similarity",)]
    assert [(i, j) for i, j, _ in sim.mst_edges] == [(0, 1)]
    assert list(panel.similarity_figure().data[1].text) == ["base", "magnitude-80"]
    nc = [results[("collapse", n)].nc1 for n in ("base", "magnitude-80")]
    assert list(panel.collapse_figure().data[0].y) == nc
    vec = results[("vectors",)]["base"]
    assert np.array_equal(vec, geometry_vector(results[("geometry", "base")]))
    dims = panel.parallel_figure().data[0].dimensions
    assert len(dims) == state.session.data.num_classes + 3
    labels = geometry_vector_labels(state.session.data.num_classes)
    assert dims[0].values[0] == vec[labels.index("0/margin_mean")]
    d = drift(results[("geometry", "base")], g)
    dfig = panel.drift_figure()
    broken = [t for t in dfig.data if t.name == "broken"]
    assert sum(len(t.x) for t in broken) == int(d.broken.sum())

    hits = panel.cache_hits
    panel.run_now()
    assert panel.cache_hits == hits + len(results)


def test_clicking_a_point_selects_the_sample_everywhere(fresh_session):
    fresh_session.prune("random", sparsity=0.5)
    dash = Dashboard(session=fresh_session)
    geo, rel, rob = (dash.tabs[t] for t in ("Geometry", "Relevance", "Robustness"))
    assert geo.selection is rel.selection is rob.selection is shared_selection(dash.state)
    geo.param.update(variants=["base", "random-50"], samples=40)
    geo.run_now()
    view = geo.__panel__()
    scatter = [p for p in view.select(pn.pane.Plotly)
               if p.object is not None and "Angle vs length" in p.object.layout.title.text][0]
    trace = points(scatter.object)[0]
    clicked = int(trace.customdata[2])
    scatter.click_data = {"points": [{"curveNumber": 0, "pointNumber": 2,
                                      "customdata": clicked}]}
    assert geo.selection.index == clicked and geo.selection.source == "Geometry"
    # the selected sample is starred in the scatter and the embedding
    stars = [t for t in geo.scatter_figure().data if t.meta == "selected"]
    assert len(stars) == 2 and all(t.customdata[0] == clicked for t in stars)
    # every sample view shows that sample's geometry in each variant, equal to the results
    pos = int(np.flatnonzero(geo.indices == clicked)[0])
    for panel in (geo, rel, rob):
        panel.sample_view.variants = ["base", "random-50"]
        table = panel.sample_view.table()
        assert list(table["variant"]) == ["base", "random-50"]
        for name, margin, src in zip(table["variant"], table["margin"], table["geometry from"]):
            assert margin == geo.results[("geometry", name)].margin[pos]
            assert src == "Geometry"
        assert f"Sample {clicked}" in panel.sample_view.header()
    # the embedding links the same sample
    emb = [p for p in view.select(pn.pane.Plotly)
           if p.object is not None and "embedded" in p.object.layout.title.text][0]
    other = int(points(emb.object, "x2")[0].customdata[0])
    emb.click_data = {"points": [{"customdata": other}]}
    assert rob.selection.index == other
    assert rob.sample_view.info().index == other


# --- relevance ------------------------------------------------------------------------------------
def test_relevance_panel_grid_preservation_and_linked_widget(state):
    panel = RelevancePanel(state=state, samples=4)
    results = panel.run_now()
    assert panel.error == ""
    idx = panel.indices
    a = results[("relevance", "magnitude-80")]
    x, y = state.session.data.x_test[idx], state.session.data.y_test[idx]
    assert torch.equal(a.target, y)  # explains the true class
    direct = relevance(state.variant("magnitude-80").model, x, target=y)
    assert torch.allclose(a.maps, direct.maps)

    fig = panel.grid_figure()
    assert len(fig.data) == 4 + 2 * 4  # input row + one heatmap per (variant, sample)
    assert np.array_equal(np.asarray(fig.data[4 + 4 + 2].z), channel_sum(a)[2])
    assert int(np.asarray(fig.data[4 + 4 + 2].customdata)[0, 0]) == idx[2]

    p = panel.preservations()["magnitude-80"]
    bars = panel.preservation_figure()
    assert list(bars.data[0].y) == pytest.approx([p.mean_spearman])
    assert list(bars.data[1].y) == pytest.approx([p.mean_topk_overlap])
    assert panel.preserved_against() == "base" and p.k == round(0.1 * 64)

    grid = panel.sample_grid()
    heat = from_bytes(grid.heatmaps).reshape(2, 4, 8, 8)
    assert np.allclose(heat[1], channel_sum(a), atol=1e-6)
    assert grid.indices == idx.tolist()
    g = feature_geometry(state.variant("magnitude-80"), x, y)  # the Geometry view's margins
    assert np.allclose(grid.array("margins")[1], g.margin, atol=1e-5)
    assert grid.array("predictions")[1].tolist() == g.predictions.tolist()
    grid.selected = 3  # a click in the widget
    assert panel.selection.index == idx[3] and panel.selection.source == "Relevance"
    row = panel.sample_view.info().rows[1]
    assert row.source["relevance"] == "Relevance"
    assert np.allclose(row.relevance, channel_sum(a)[3])
    panel.select_sample(int(idx[1]))  # elsewhere: the widget follows
    assert grid.selected == 1
    panel.select_sample(int(np.setdiff1d(np.arange(len(state.session.data.y_test)), idx)[0]))
    assert grid.selected == -1


def test_a_failing_analysis_shows_an_alert_and_the_panel_stays_usable(state):
    panel = RelevancePanel(state=state, samples=2, k=1000)  # more top entries than pixels
    view = panel.__panel__()
    results = panel.run_now()
    assert "exceeds the 64 entries" in panel.error
    assert any("exceeds" in a for a in visible_alerts(view))
    assert ("relevance", "magnitude-80") in results  # the other jobs still ran
    assert panel.preservation_figure() is None and panel.grid_figure() is not None
    panel.k = 0.25
    panel.run_now()
    assert panel.error == "" and not any("exceeds" in a for a in visible_alerts(view))
    assert panel.preservations()["magnitude-80"].k == 16

    robust = RobustnessPanel(state=state, samples=8, corruptions=[])
    robust.run_now()
    assert "at least one corruption" in robust.error and robust.results == {}


def test_geometry_failure_of_one_variant_leaves_the_others(state, monkeypatch):
    from workbench.panels import geometry as module

    real = module.feature_geometry

    def flaky(v, x, y):
        if v.name == "magnitude-80":
            raise RuntimeError("no features today")
        return real(v, x, y)

    monkeypatch.setattr(module, "feature_geometry", flaky)
    panel = GeometryPanel(state=state, samples=20)
    view = panel.__panel__()
    panel.run_now()
    assert "no features today" in panel.error and "magnitude-80" in panel.error
    assert any("no features today" in a for a in visible_alerts(view))
    assert list(panel.geometries()) == ["base"]
    assert len(points(panel.scatter_figure())) > 0
    assert len(figures_in(view)) >= 3  # the base model's figures are shown


# --- the sample view on its own -------------------------------------------------------------------
def test_sample_view_computes_a_sample_no_run_covered(fresh_session):
    view = SampleView.from_session(fresh_session)
    assert view.info() is None and "Select a sample" in view.header()
    view.selection.select(17)
    info = view.info()
    g = feature_geometry(fresh_session.base)
    assert info.rows[0].margin == pytest.approx(g.margin[17], rel=1e-5)
    assert info.label == int(fresh_session.data.y_test[17])
    assert info.rows[0].source == {"geometry": "this sample", "relevance": "this sample"}
    assert any("Robustness" in n for n in info.notes)
    assert view.relevance_figure() is not None and view.outcomes_figure() is None

    view.compute = False
    info = view.info()
    assert np.isnan(info.rows[0].margin) and info.rows[0].relevance is None
    assert any("Geometry panel" in n for n in info.notes)

    shown = view.__panel__()
    view.selection.select(10_000)
    assert view.info() is None and "outside the test split" in view.error()
    assert any("outside" in a for a in visible_alerts(shown))


def test_records_of_a_rebuilt_variant_are_not_used(fresh_session):
    v = fresh_session.prune("magnitude", sparsity=0.5)
    sel = SampleSelection()
    g = feature_geometry(v)
    sel.publish("geometry", v.name, v, np.arange(len(g.labels)), g, "Geometry")
    assert sample_info(fresh_session, sel, [v.name], 4).rows[0].source["geometry"] == "Geometry"
    fresh_session.remove(v.name)
    fresh_session.prune("magnitude", sparsity=0.5)  # same name, new variant
    info = sample_info(fresh_session, sel, [v.name], 4, compute=False)
    assert "geometry" not in info.rows[0].source


# --- plot functions -------------------------------------------------------------------------------
def _result(preds, labels, clean, corruptions=("a", "b"), severities=(1, 2)):
    preds = np.asarray(preds, dtype=np.int16)
    labels = np.asarray(labels)
    err = (preds != labels).mean(2)
    return CorruptionResult(tuple(corruptions), tuple(severities), err,
                            float((np.asarray(clean) != labels).mean()), preds, labels,
                            np.asarray(clean, dtype=np.int16))


def test_robustness_plots_have_the_expected_traces():
    labels = [0, 1, 2]
    dense = _result([[[0, 1, 2], [0, 1, 0]], [[0, 0, 2], [1, 0, 0]]], labels, [0, 1, 2])
    pruned = _result([[[0, 1, 0], [0, 0, 0]], [[1, 0, 2], [1, 0, 0]]], labels, [0, 1, 2])
    fig = evaluation_table_figure({"dense": dense, "pruned": pruned}, "dense")
    assert np.asarray(fig.data[0].z).tolist() == [dense.mean_error.tolist(),
                                                  pruned.mean_error.tolist()]
    assert list(fig.data[1].x) == ["mCE", "rel. mCE"]
    assert np.asarray(fig.data[1].z, float)[1, 0] == pytest.approx(mce(pruned, dense)["mce"])
    assert "clean error" in fig.layout.annotations[0].text
    curves = severity_curves_figure({"dense": dense, "pruned": pruned}, ["b"])
    assert [t.name for t in curves.data] == ["dense", "pruned"]
    assert list(curves.data[1].x) == [0, 1, 2] and list(curves.data[1].y) == [0.0, 2 / 3, 1.0]
    with pytest.raises(ValueError, match="not evaluated"):
        severity_curves_figure({"dense": dense}, ["zzz"])

    table = flips_table({"dense": dense, "pruned": pruned}, [10, 11, 12], reference="dense")
    assert table.columns.tolist() == ["sample", "label", "dense", "pruned", "broken vs dense"]
    assert table.iloc[0].tolist() == [11, 1, 2, 3, 1]
    flags = {"dense": sample_flags(dense), "pruned": sample_flags(pruned)}
    out = outcomes_figure(flags, 2)
    assert np.asarray(out.data[0].z).tolist() == [[2, 2], [1, 2]]

    g = gallery(torch.rand(2, 3, 6, 6), ["contrast", "fog"], severities=(1, 3))
    rgb = gallery_figure(g, 1, predictions={"dense": (0, np.zeros((2, 2), int))}, label=0)
    assert rgb.data[0].type == "image" and np.asarray(rgb.data[0].z).shape == (13, 20, 3)
    assert np.allclose(np.asarray(rgb.data[0].z)[7:13, 7:13] / 255,
                       np.moveaxis(g.images[1, 0, 1], 0, -1))


def test_geometry_plots_link_samples_by_customdata():
    from workbench.analysis.geometry import geometry_from_features

    rng = np.random.default_rng(0)
    h = rng.normal(size=(12, 4))
    w, b, y = rng.normal(size=(3, 4)), np.zeros(3), np.arange(12) % 3
    ga = geometry_from_features(h, w, b, y)
    gb = geometry_from_features(h * 0.5 + 0.1, w, b, y)
    idx = np.arange(100, 112)
    geos = {"dense": ga, "variant": gb}
    fig = angle_length_figure(geos, indices=idx, color="margin", selected=105)
    margin_traces = points(fig)
    assert len(margin_traces) == 1 and list(margin_traces[0].marker.color) == list(ga.margin)
    assert [t.customdata[0] for t in fig.data if t.meta == "selected"] == [105, 105]
    hist = margin_histogram_figure(geos)
    assert [t.name for t in hist.data] == ["dense", "variant"]
    embs = {n: embed(g, "pca") for n, g in geos.items()}
    efig = embedding_figure(embs, geos, indices=idx)
    assert sorted(int(i) for t in points(efig, "x2") for i in t.customdata) == idx.tolist()
    dfig = drift_figure({"variant": drift(ga, gb)}, indices=idx, selected=111)
    assert sum(len(t.x) for t in dfig.data if t.meta == "points") == 12
    vecs = {n: geometry_vector(g) for n, g in geos.items()}
    pc = parallel_coordinates_figure(vecs, 3, stat="angle_mean")
    assert [d.label for d in pc.data[0].dimensions] == ["0 angle", "1 angle", "2 angle", "angle",
                                                        "length", "margin"]
    assert list(pc.data[0].line.colorbar.ticktext) == ["dense", "variant"]


def test_relevance_grid_transposed_for_one_sample():
    maps = {"dense": torch.randn(1, 3, 5, 5), "variant": torch.randn(1, 3, 5, 5)}
    fig = relevance_grid_figure(maps, indices=[42], images=torch.rand(1, 3, 5, 5),
                                transpose=True, selected=42)
    assert fig.data[0].type == "image"
    assert np.allclose(np.asarray(fig.data[2].z), maps["variant"][0].sum(0).numpy())
    assert fig.data[2].xaxis == "x3"  # variants are columns: input, dense, variant
    assert any("★ #42" in a.text for a in fig.layout.annotations)

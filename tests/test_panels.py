"""The dashboard's state, panels, preview, sweep and plots, without a browser."""

from __future__ import annotations

import io
import time

import numpy as np
import panel as pn
import pytest

import workbench
from workbench.metrics import compute_metrics
from workbench.panels import dashboard as dashboard_module
from workbench.panels.compare import ComparePanel
from workbench.panels.compress import CompressPanel
from workbench.panels.dashboard import Dashboard, register_tab
from workbench.panels.state import SessionState
from workbench.panels.variants import VariantManager
from workbench.plots.compare import layer_sparsity_figure, sweep_figure, variants_scatter
from workbench.preview import cache_clear, cache_info, preview
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS
from workbench.sweep import sweep
from workbench.widgets.panel import LayerEditorPanel


@pytest.fixture
def state(fresh_session):
    return SessionState(session=fresh_session)


@pytest.fixture
def compress(state):
    return CompressPanel(state=state)


def visible_alerts(view) -> list[str]:
    """Texts of the visible Alert panes of a rendered view."""
    out = []
    for alert in view.select(pn.pane.Alert):
        if alert.visible and alert.object:
            out.append(str(alert.object))
    return out


# --- preview -----------------------------------------------------------------------------------
def test_preview_equals_the_same_pruning_done_independently(compress):
    session = compress.state.session
    compress.param.update(kind="prune", method="magnitude", sparsity=0.8, scope="layer")
    pruned = PRUNERS["magnitude"](session.base.model, 0.8, data=session.data,
                                  seed=session.seed, scope="layer")
    expected = compute_metrics(pruned.model, session.data, pruned.masks)
    got = compress.preview_metrics
    assert got.accuracy == expected.accuracy
    assert got.sparsity == pytest.approx(0.8, abs=1e-3) and got.sparsity == expected.sparsity
    assert got.bytes_compressed == expected.bytes_compressed
    assert got.accuracy != session.base.metrics.accuracy
    assert list(session.variants) == ["base"]  # a preview adds nothing
    assert compress._accuracy_pct() == pytest.approx(100 * expected.accuracy)
    assert "vs base" in compress._delta_text()


def test_preview_is_cached_when_going_back(fresh_session):
    cache_clear()
    first = preview(fresh_session, "prune", "magnitude", sparsity=0.35)
    preview(fresh_session, "prune", "magnitude", sparsity=0.65)
    info = cache_info()
    assert (info.hits, info.misses) == (0, 2)
    t = time.perf_counter()
    again = preview(fresh_session, "prune", "magnitude", sparsity=0.35)
    elapsed = time.perf_counter() - t
    assert again is first
    assert cache_info().hits == 1 and cache_info().misses == 2
    assert elapsed < 0.01


def test_preview_runs_in_well_under_a_second(fresh_session):
    for sparsity in (0.41, 0.77):
        t = time.perf_counter()
        preview(fresh_session, "prune", "magnitude", sparsity=sparsity)
        assert time.perf_counter() - t < 1.0


def test_preview_does_not_change_the_session_or_refuses_fine_tuning(fresh_session):
    with pytest.raises(workbench.ParameterError, match="fine-tune"):
        preview(fresh_session, "prune", "magnitude", sparsity=0.5, finetune_epochs=2)
    with pytest.raises(workbench.WorkbenchError, match="unknown pruning method"):
        preview(fresh_session, "prune", "no-such-method", sparsity=0.5)
    assert list(fresh_session.variants) == ["base"]


def test_training_methods_ask_for_apply(compress):
    training = [m for m in workbench.methods("prune") if PRUNERS[m].trains]
    assert training, "gradual, lottery and admm are registered as training methods"
    t = time.perf_counter()
    compress.method = training[0]
    assert time.perf_counter() - t < 1.0  # nothing was trained
    assert compress.preview_metrics is None
    assert "press **Apply**" in compress.preview_note
    assert any("press **Apply**" in a for a in visible_alerts(compress.__panel__()))


def test_scope_follows_the_method(compress):
    compress.method = "global_magnitude"
    assert compress.scope == "global"
    compress.method = "magnitude"
    assert compress.scope == "layer"
    compress.scope = "global"
    assert compress.request()["scope"] == "global"


def test_quantize_preview_uses_supported_bits(compress):
    names = workbench.methods("quantize")
    assert names, "the quantization registry is empty"
    view = compress.__panel__()  # linked widgets must not pick the method themselves
    compress.kind = "quantize"
    assert compress.method in names
    assert view.select(pn.widgets.Select)[0].value == compress.method
    assert compress.method == "uniform" or "uniform" not in names
    entry = QUANTIZERS[compress.method]
    assert compress.param.bits.objects == list(entry.bits) and compress.bits in entry.bits
    if "uniform" in names:
        compress.param.update(method="uniform", bits=8)
        m = compress.preview_metrics
        assert m is not None and set(m.bits.values()) == {8}
        base = compress.state.session.base.metrics.accuracy
        assert abs(m.accuracy - base) < 0.03
        assert m.bytes_compressed < compress.state.session.base.metrics.bytes_dense / 3
        assert compress._layer_figure() is None  # sparsity bars are for pruning


# --- apply -------------------------------------------------------------------------------------
def test_apply_adds_a_variant_every_view_sees(state):
    compress, compare = CompressPanel(state=state), ComparePanel(state=state)
    compress.param.update(method="magnitude", sparsity=0.8)
    previewed = compress.preview_metrics
    revision = state.revision
    compress.param.trigger("apply")  # the button's path (async, run to completion here)
    assert compress.error == "" and compress.busy is False
    assert compress.last_added == "magnitude-80"
    assert state.variants == ["base", "magnitude-80"] and state.revision > revision
    assert "magnitude-80" in state.selected
    assert state.session["magnitude-80"].metrics.accuracy == previewed.accuracy
    table = compare.table()
    row = table[table["name"] == "magnitude-80"].iloc[0]
    assert row["accuracy"] == previewed.accuracy and row["method"] == "magnitude"
    assert "magnitude-80" in compress.param.parent.objects
    csv = compare.csv().read()
    assert csv.splitlines()[0].startswith("name,kind,method,parent,accuracy")
    assert "magnitude-80,prune,magnitude" in csv


def test_quantizing_a_pruned_parent(state):
    compress = CompressPanel(state=state)
    compress.param.update(method="magnitude", sparsity=0.5)
    assert compress.apply_now().name == "magnitude-50"
    compress.param.update(kind="quantize", method="uniform", bits=8, parent="magnitude-50")
    assert compress.preview_metrics.sparsity == pytest.approx(0.5, abs=1e-3)
    v = compress.apply_now()
    assert v.name == "magnitude-50+uniform-8b" and v.recipe.parent == "magnitude-50"
    assert v.metrics.accuracy == compress.preview_metrics.accuracy


def test_errors_show_an_alert_and_leave_the_state_usable(state):
    compress = CompressPanel(state=state)
    view = compress.__panel__()
    compress.variant_name = "base"  # taken
    compress.param.trigger("apply")
    assert "exists already" in compress.error
    assert any("exists already" in a for a in visible_alerts(view))
    assert state.variants == ["base"] and compress.busy is False

    compress.param.update(variant_name="", extra="bogus: 1")  # a parameter it does not take
    assert compress.preview_metrics is None and "bogus" in compress.preview_note
    assert compress.apply_now() is None and "bogus" in compress.error

    compress.extra = "min_keep: ["
    assert "not valid YAML" in compress.preview_note

    compress.extra = ""
    assert compress.preview_metrics is not None and compress.preview_note == ""
    assert compress.apply_now().name == "magnitude-50"
    assert compress.error == "" and not any("exists" in a for a in visible_alerts(view))


def test_state_follows_direct_session_changes(state):
    state.session.prune("random", sparsity=0.3)
    assert state.variants == ["base"]  # not yet told
    rev = state.revision
    state.refresh()
    assert state.variants == ["base", "random-30"] and state.revision == rev + 1


# --- variant manager ---------------------------------------------------------------------------
def test_variant_manager_renames_deletes_and_exports(state):
    state.add("prune", "magnitude", sparsity=0.5)
    manager = VariantManager(state=state)
    view = manager.__panel__()
    manager.param.update(target="magnitude-50", new_name="half")
    manager.param.trigger("rename")
    assert state.variants == ["base", "half"] and manager.target == "half"
    assert "half" in state.selected and "magnitude-50" not in state.selected
    text = manager.recipe_file().read()
    assert "name: half" in text and "method: magnitude" in text
    assert "name: half" in manager.recipes_file().read()

    manager.target = "base"
    manager.param.trigger("delete")
    assert "cannot be removed" in manager.error
    assert any("cannot be removed" in a for a in visible_alerts(view))

    manager.target = "half"
    manager.param.trigger("delete")
    assert manager.error == "" and state.variants == ["base"]


# --- sweep -------------------------------------------------------------------------------------
def test_sweep_at_zero_equals_the_base_accuracy(fresh_session):
    result = sweep(fresh_session, ["magnitude", "random"], [0.0, 0.5, 0.9])
    base = fresh_session.base.metrics.accuracy
    for m in ("magnitude", "random"):
        assert result.accuracy[m][0] == base
        assert result.achieved[m][0] == 0.0
        assert result.achieved[m][2] == pytest.approx(0.9, abs=1e-3)
    assert result.accuracy["magnitude"][1] == preview(fresh_session, "prune", "magnitude",
                                                      sparsity=0.5).accuracy
    assert result.accuracy["random"][2] < base - 0.2  # random pruning at 90% hurts
    assert result.base_accuracy == base and result.errors == {}
    assert len(result.rows()) == 6
    with pytest.raises(ValueError):
        result.accuracy["magnitude"][0] = 0.0  # results are frozen
    assert list(fresh_session.variants) == ["base"]


def test_sweep_records_methods_that_refuse_a_point(fresh_session):
    result = sweep(fresh_session, ["nm"], [0.0, 0.5])
    assert "nm" in result.errors or not np.isnan(result.accuracy["nm"]).any()


def test_compare_panel_sweeps_with_progress_and_caches(state):
    compare = ComparePanel(state=state)
    assert compare.sweep_methods and all(not PRUNERS[m].trains for m in compare.sweep_methods)
    compare.param.update(sweep_methods=["magnitude", "global_magnitude"], sweep_points=4,
                         sweep_max=0.9)
    compare.param.trigger("run_sweep")
    result = compare.sweep_result
    assert compare.error == "" and compare.sweep_progress == 100 and not compare.sweeping
    assert result.sparsities.tolist() == [0.0, 0.3, 0.6, 0.9]
    assert result.accuracy["magnitude"][0] == state.session.base.metrics.accuracy
    compare.param.trigger("run_sweep")
    assert compare.sweep_result is result  # same settings: from the panel's cache
    assert len(compare.sweep_plot().data) == 2

    compare.sweep_methods = []
    compare.param.trigger("run_sweep")
    assert "at least one" in compare.error


# --- plots -------------------------------------------------------------------------------------
def test_plots_have_one_trace_per_series(fresh_session):
    result = sweep(fresh_session, ["magnitude", "random", "global_magnitude"], [0.0, 0.5])
    fig = sweep_figure(result)
    assert [t.name for t in fig.data] == ["magnitude", "random", "global_magnitude"]
    assert list(fig.data[0].y) == pytest.approx([100 * a for a in result.accuracy["magnitude"]])

    v = fresh_session.prune("magnitude", sparsity=0.6)
    fig = layer_sparsity_figure({"base": fresh_session.base.metrics, v.name: v.metrics})
    assert len(fig.data) == 2
    assert list(fig.data[1].x) == list(v.metrics.layer_sparsity)
    assert list(fig.data[1].y) == pytest.approx([60.0] * len(v.metrics.layer_sparsity), abs=0.2)
    assert list(fig.data[0].y) == [0.0] * len(v.metrics.layer_sparsity)

    rows = fresh_session.table()
    fig = variants_scatter(rows)
    assert [t.name for t in fig.data] == ["base", "prune"]
    assert list(fig.data[1].text) == [v.name]
    assert fig.data[1].y[0] == pytest.approx(100 * v.metrics.accuracy)
    assert fig.data[1].x[0] == pytest.approx(v.metrics.bytes_compressed / 1024)


def test_compare_figures_follow_the_selection(state):
    compare = ComparePanel(state=state)
    state.add("prune", "magnitude", sparsity=0.5)
    assert [t.name for t in compare.layer_figure().data] == ["base", "magnitude-50"]
    state.selected = ["magnitude-50"]
    assert [t.name for t in compare.layer_figure().data] == ["magnitude-50"]
    assert len(compare.scatter_figure().data) == 2


# --- dashboard ---------------------------------------------------------------------------------
def test_dashboard_layouts_render(fresh_session):
    dash = fresh_session.dashboard()
    assert isinstance(dash, Dashboard)
    assert list(dash.tabs)[:2] == ["Compress", "Compare"]
    assert isinstance(dash.tabs["Compress"], CompressPanel)
    assert dash.tabs["Compress"].state is dash.tabs["Compare"].state is dash.state
    inline = dash.__panel__()
    assert isinstance(inline, pn.Row)
    inline.get_root()  # builds the Bokeh models: every reference resolves
    pn.Column(dash.tabs["Compare"]).get_root()
    assert isinstance(dash.template(), pn.template.FastListTemplate)
    assert dash.servable() is dash  # outside a server: displays inline
    assert "base accuracy" in dash.info()


def test_a_variant_made_in_one_tab_shows_in_the_others(fresh_session):
    dash = Dashboard(session=fresh_session)
    dash.tabs["Compress"].param.update(method="random", sparsity=0.25)
    dash.tabs["Compress"].param.trigger("apply")
    assert "random-25" in dash.manager.param.target.objects
    assert "random-25" in list(dash.tabs["Compare"].table()["name"])
    assert "variants** 2" in dash.info()


def test_adding_a_tab_is_one_registration(fresh_session, monkeypatch):
    monkeypatch.setattr(dashboard_module, "TABS", list(dashboard_module.TABS))

    def broken(state):
        raise RuntimeError("boom")

    register_tab("Notes", lambda state: pn.pane.Markdown(f"{len(state.variants)} variant(s)"))
    register_tab("Broken", broken)
    with pytest.raises(workbench.ParameterError):
        register_tab("Notes", broken)
    dash = Dashboard(session=fresh_session)
    assert list(dash.tabs)[-2:] == ["Notes", "Broken"]
    assert dash.tabs["Notes"].object == "1 variant(s)"
    assert isinstance(dash.tabs["Broken"], pn.pane.Alert) and "boom" in dash.tabs["Broken"].object


def test_the_app_factory_gives_each_visitor_a_fresh_session():
    from workbench.app import create_app

    a, b = create_app(), create_app()
    assert isinstance(a, pn.template.FastListTemplate)
    assert a is not b


def test_csv_download_is_text(state):
    buf = ComparePanel(state=state).csv()
    assert isinstance(buf, io.StringIO) and buf.read().count("\n") == 2


# --- per-layer editor --------------------------------------------------------------------------
def test_per_layer_editor_feeds_the_preview_and_apply(state):
    compress = CompressPanel(state=state)
    view = compress.__panel__()
    compress.param.update(method="magnitude", sparsity=0.4)
    assert compress._offers_per_layer() and not compress._shows_editor()
    compress.per_layer = True
    editor = compress.layer_editor
    session = state.session
    layers = list(session.base.metrics.layer_sparsity)
    assert editor.layers == layers and editor.mode == "sparsity"
    assert editor.value == [0.4] * len(layers)  # starts at the uniform setting
    sizes = {n: m.weight.numel() for n, m in session.base.model.named_modules() if n in layers}
    assert editor.size_array.tolist() == [sizes[n] for n in layers]
    assert len(editor.sensitivity_array) == len(layers)
    assert compress._shows_editor() and not compress._shows_slider()
    assert view.select(LayerEditorPanel) == [editor]

    targets = [0.1, 0.25, 0.9, 0.8, 0.3]
    editor.value = targets  # what dragging the bars does
    wanted = dict(zip(layers, targets))
    assert compress.layer_values == wanted
    assert compress.request()["per_layer_sparsity"] == wanted
    for n, s in wanted.items():
        assert compress.preview_metrics.layer_sparsity[n] == pytest.approx(s, abs=0.01)
    overall = sum(s * sizes[n] for n, s in wanted.items()) / sum(sizes.values())
    assert compress.preview_metrics.sparsity == pytest.approx(overall, abs=0.01)
    assert compress.whatif == whatif_summary_of(session, "magnitude", compress.request())

    v = compress.apply_now()
    assert compress.error == "" and v.recipe.params["per_layer_sparsity"] == wanted
    assert v.name == f"magnitude-{round(100 * round(overall, 2))}"
    for n, s in wanted.items():
        mask = v.masks[n]
        assert int((~mask).sum()) == round(s * mask.numel()), n
    assert v.metrics.accuracy == compress.preview_metrics.accuracy
    assert editor.value == targets  # adding the variant keeps the edits

    compress.layer_values = {**wanted, "fc": 0.5}  # and Python can set them too
    assert editor.value[-1] == 0.5
    assert compress.preview_metrics.layer_sparsity["fc"] == pytest.approx(0.5, abs=0.01)


def whatif_summary_of(session, method, params):
    from workbench.analysis.whatif import whatif_summary

    v = session.prune(method, name="tmp-whatif", **params)
    out = whatif_summary(v)
    session.remove("tmp-whatif")
    return out


def test_per_layer_bits_for_quantizers(state):
    compress = CompressPanel(state=state)
    compress.param.update(kind="quantize", method="uniform", bits=8, per_layer=True)
    editor = compress.layer_editor
    assert editor.mode == "bits" and editor.bits_choices == list(QUANTIZERS["uniform"].bits)
    assert set(editor.value) == {8}
    editor.value = [8, 4, 3, 6, 8]
    wanted = dict(zip(editor.layers, [8, 4, 3, 6, 8]))
    assert compress.request()["per_layer_bits"] == wanted
    assert compress.preview_metrics.bits == wanted
    v = compress.apply_now()
    assert {n: q.bits for n, q in v.quant.items()} == wanted
    compress.kind = "prune"  # back to sparsities, from the uniform setting
    assert editor.mode == "sparsity" and set(editor.value) == {compress.sparsity}


def test_per_layer_is_offered_only_where_it_means_something(state):
    compress = CompressPanel(state=state)
    compress.per_layer = True
    for method in ("nm", "l1_structured"):
        compress.method = method
        assert not compress._offers_per_layer() and not compress._shows_editor()
        assert "per_layer_sparsity" not in compress.request()
    compress.method = "lamp"  # global by default: per layer sends scope="layer"
    assert compress._shows_editor() and not compress._shows_scope_choice()
    request = compress.request()
    assert request["scope"] == "layer" and set(request["per_layer_sparsity"]) == set(
        compress.layer_editor.layers)
    assert compress.preview_note == "" and compress.preview_metrics is not None
    compress.per_layer = False
    assert compress.request()["scope"] == "global" and "per_layer_sparsity" not in compress.request()


def test_per_layer_editor_starts_from_a_pruned_parents_sparsity(state):
    compress = CompressPanel(state=state)
    parent = state.add("prune", "magnitude", sparsity=0.6, name="m60")
    compress.param.update(parent="m60", sparsity=0.3, per_layer=True)
    current = parent.metrics.layer_sparsity
    assert compress.layer_editor.value == pytest.approx([current[n] for n in
                                                         compress.layer_editor.layers], abs=0.01)
    assert compress.preview_metrics.sparsity == pytest.approx(parent.metrics.sparsity, abs=0.01)

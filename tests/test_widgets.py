"""The custom widgets' Python side, without a browser: traits, buffers, from_session and
sensitivity."""

from __future__ import annotations

import copy

import numpy as np
import param
import pytest
import torch
import traitlets

from workbench.widgets import LayerEditor, SampleGrid, layer_sensitivity
from workbench.widgets.assets import asset
from workbench.widgets.buffers import from_bytes, to_bytes
from workbench.widgets.layer_editor import clamp_values
from workbench.widgets.panel import LayerEditorPanel, SampleGridPanel

LAYER_TRAITS = ("layers", "sizes", "sensitivity", "sensitivity_label", "mode", "bits_choices",
                "value", "continuous_update")
GRID_TRAITS = ("images", "image_shape", "image_dtype", "heatmaps", "show_heatmap", "variants",
               "indices", "labels", "class_names", "predictions", "margins", "selected",
               "cell_size")
LENET_LAYERS = ["features.0", "features.3", "classifier.0", "classifier.2", "fc"]
LENET_SIZES = [150, 2400, 7680, 10080, 840]


@pytest.fixture(scope="module")
def sensitivity(default_session):
    return layer_sensitivity(default_session, 0.5)


@pytest.fixture(scope="module")
def two_variant_session(default_session):
    import workbench

    s = workbench.Session(default_session.base.model, default_session.data)
    s.prune("magnitude", sparsity=0.9, name="m90")
    return s


# --- front-end files -------------------------------------------------------------------------
@pytest.mark.parametrize("cls, stem", [(LayerEditor, "layer_editor"), (SampleGrid, "sample_grid")])
def test_esm_and_css_files_are_installed_and_used(cls, stem):
    js, css = asset(f"{stem}.js"), asset(f"{stem}.css")
    assert js.parent == css.parent and js.parent.name in ("widgets", "workbench_widgets")
    text = js.read_text()
    assert "export default { render }" in text and "import " not in text  # no bundler, no deps
    w = cls()
    assert w._esm == text and w._css == css.read_text()


def test_missing_asset_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="reinstall"):
        asset("nope.js")


@pytest.mark.parametrize("cls, names", [(LayerEditor, LAYER_TRAITS), (SampleGrid, GRID_TRAITS)])
def test_traits_exist_and_sync(cls, names):
    w = cls()
    for name in names:
        assert w.has_trait(name), name
        assert w.trait_metadata(name, "sync") is True, name
        assert w.trait_metadata(name, "help"), name
    binary = {n for n in names if isinstance(w.traits()[n], traitlets.Bytes)}
    assert binary == ({"sizes", "sensitivity"} if cls is LayerEditor
                      else {"images", "heatmaps", "labels", "predictions", "margins"})


# --- buffers ---------------------------------------------------------------------------------
def test_buffers_round_trip():
    sizes = np.array([150, 2400, 7680], dtype=np.float32)
    sens = np.array([0.011, -0.002, 0.0], dtype=np.float32)
    w = LayerEditor(layers=["a", "b", "c"], sizes=sizes, sensitivity=sens)
    assert isinstance(w.sizes, bytes) and len(w.sizes) == 12
    np.testing.assert_array_equal(np.frombuffer(w.sizes, "<f4"), sizes)
    np.testing.assert_array_equal(np.frombuffer(w.sensitivity, "<f4"), sens)
    np.testing.assert_array_equal(w.sensitivity_array, sens)
    assert w.value == [0.0, 0.0, 0.0]

    images = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    g = SampleGrid(images=images, variants=["x"], predictions=np.array([[1, 2]]),
                   margins=torch.tensor([[0.25, 1.5]]), heatmaps=np.ones((2, 4, 5)))
    assert g.image_dtype == "uint8" and g.image_shape == [3, 4, 5] and g.sample_count == 2
    np.testing.assert_array_equal(np.frombuffer(g.images, np.uint8).reshape(2, 3, 4, 5), images)
    np.testing.assert_array_equal(g.array("images"), images)
    np.testing.assert_array_equal(np.frombuffer(g.margins, "<f4"), [0.25, 1.5])
    assert g.array("predictions").tolist() == [[1.0, 2.0]]
    assert len(g.heatmaps) == 2 * 4 * 5 * 4

    floats = torch.rand(3, 1, 2, 2)
    g = SampleGrid(images=floats)
    assert g.image_dtype == "float32"
    np.testing.assert_array_equal(g.array("images"), floats.numpy())
    assert to_bytes(None) == b"" and from_bytes(b"").size == 0


def test_values_are_clamped_and_snapped():
    assert clamp_values([-1, 0.25, 2]) == [0.0, 0.25, 0.99]
    assert clamp_values([2.6, 7], "bits", [8, 2, 4]) == [2, 8]
    w = LayerEditor(layers=["a", "b"], value=[0.3, 1.5])
    assert w.value == [0.3, 0.99]
    w.value = [-0.5, 0.5]
    assert w.value == [0.0, 0.5] and w.as_dict() == {"a": 0.0, "b": 0.5}
    b = LayerEditor(layers=["a", "b"], mode="bits", bits_choices=[2, 4, 8])
    assert b.value == [8, 8]
    b.value = [3.2, 5]
    assert b.as_dict() == {"a": 4, "b": 4}  # ties snap to the smaller width only when nearer
    g = SampleGrid(images=np.zeros((3, 1, 2, 2), np.uint8), selected=2)
    assert g.selected == 2
    g.selected = 7
    assert g.selected == -1 and g.selected_index is None


# --- from_session ----------------------------------------------------------------------------
def test_layer_editor_from_session(default_session, sensitivity):
    w = LayerEditor.from_session(default_session, sensitivity=sensitivity)
    assert w.layers == LENET_LAYERS and w.mode == "sparsity"
    assert w.size_array.tolist() == LENET_SIZES
    np.testing.assert_allclose(w.sensitivity_array, [sensitivity[n] for n in LENET_LAYERS],
                               rtol=1e-6)
    assert w.value == [0.0] * 5
    bits = LayerEditor.from_session(default_session, mode="bits", sensitivity=False)
    assert bits.value == [8] * 5 and bits.sensitivity == b""


def test_layer_editor_from_session_reads_the_variant(fresh_session):
    s = fresh_session
    s.prune("magnitude", sparsity=0.9, name="m90")
    q = s.quantize("uniform", bits=4, per_layer_bits={"fc": 8}, name="q4")
    w = LayerEditor.from_session(s, variant="m90", sensitivity=False)
    np.testing.assert_allclose(w.value, [s["m90"].metrics.layer_sparsity[n] for n in w.layers])
    assert all(abs(v - 0.9) < 0.01 for v in w.value)
    b = LayerEditor.from_session(s, mode="bits", variant="q4", sensitivity=False)
    assert b.as_dict() == {n: q.quant[n].bits for n in b.layers}
    assert b.as_dict()["fc"] == 8 and b.as_dict()["features.0"] == 4
    # the edited bits are what session.quantize takes
    again = s.quantize("uniform", bits=4, per_layer_bits=b.as_dict())
    assert {n: t.bits for n, t in again.quant.items()} == b.as_dict()


def test_sample_grid_from_session(two_variant_session):
    s = two_variant_session
    g = SampleGrid.from_session(s, ["base", "m90"], n=12)
    assert g.variants == ["base", "m90"] and g.indices == list(range(12))
    assert g.image_shape == [1, 8, 8] and g.sample_count == 12
    assert len(g.images) == 12 * 64 * 4
    np.testing.assert_array_equal(g.array("images"), s.data.x_test[:12].numpy())
    np.testing.assert_array_equal(g.array("labels"), s.data.y_test[:12].numpy())
    assert g.array("predictions").shape == (2, 12) and g.array("margins").shape == (2, 12)
    for row, name in enumerate(g.variants):
        with torch.inference_mode():
            logits = s[name].model(s.data.x_test[:12])
        top = torch.sort(logits, dim=1, descending=True).values
        np.testing.assert_array_equal(g.array("predictions")[row], logits.argmax(1).numpy())
        np.testing.assert_allclose(g.array("margins")[row], (top[:, 0] - top[:, 1]).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert (g.array("margins") >= 0).all()
    assert g.class_names == [str(i) for i in range(10)] and g.heatmaps == b""
    picked = SampleGrid.from_session(s, n=3, indices=[5, 100, 7], selected=1)
    assert picked.variants == ["base", "m90"] and picked.selected_index == 100


def test_sample_grid_refuses_non_images():
    import workbench
    from workbench.errors import DataError
    from workbench.models import create_model

    s = workbench.Session(create_model("mlp", (2,), 2), "moons")
    with pytest.raises(DataError, match="images"):
        SampleGrid.from_session(s)


# --- sensitivity -----------------------------------------------------------------------------
def test_sensitivity_one_value_per_layer_equals_an_independent_computation(default_session,
                                                                           sensitivity):
    assert list(sensitivity) == LENET_LAYERS
    assert all(isinstance(v, float) and -1 <= v <= 1 for v in sensitivity.values())
    data = default_session.data
    base = default_session.base.model

    def accuracy(model):
        with torch.no_grad():
            return (model(data.x_val).argmax(1) == data.y_val).float().mean().item()

    # features.0 by hand: zero its 75 smallest-|w| weights (of 150), leave every other layer.
    pruned = copy.deepcopy(base).eval()
    w = dict(pruned.named_modules())["features.0"].weight
    with torch.no_grad():
        order = torch.argsort(w.abs().flatten(), stable=True)
        w.view(-1)[order[:75]] = 0
    expected = accuracy(base) - accuracy(pruned)
    assert sensitivity["features.0"] == pytest.approx(expected, abs=1e-6)
    assert max(sensitivity.values()) > 0  # pruning some layer alone to 50% costs accuracy


def test_sensitivity_checks_the_split(default_session):
    from workbench.errors import ParameterError

    with pytest.raises(ParameterError, match="split"):
        layer_sensitivity(default_session, split="train")


# --- Panel -----------------------------------------------------------------------------------
def test_panel_components_share_the_esm_and_fields(default_session, sensitivity):
    pairs = [(LayerEditorPanel, LayerEditor, LAYER_TRAITS),
             (SampleGridPanel, SampleGrid, GRID_TRAITS)]
    for panel_cls, widget_cls, names in pairs:
        assert panel_cls._render_esm() == widget_cls()._esm
        assert panel_cls._stylesheets == [widget_cls()._css]
        for name in names:
            assert name in panel_cls.param, name
            trait = widget_cls.class_traits()[name]
            if type(trait).__name__ == "Bytes":
                assert isinstance(panel_cls.param[name], param.Bytes), name

    editor = LayerEditorPanel.from_session(default_session, sensitivity=sensitivity)
    assert editor.layers == LENET_LAYERS and editor.size_array.tolist() == LENET_SIZES
    editor.value = [0.5, 2.0, 0.1, 0.2, -1]
    assert editor.value == [0.5, 0.99, 0.1, 0.2, 0.0]
    grid = SampleGridPanel.from_session(default_session, n=5)
    assert grid.sample_count == 5 and grid.array("margins").shape == (1, 5)

    model = editor.get_root()  # the Bokeh model carries the bytes unchanged
    assert bytes(model.data.sizes) == editor.sizes
    assert list(model.data.value) == editor.value

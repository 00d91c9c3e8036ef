"""The widgets as Panel components: the same ES modules run by ``pn.custom.AnyWidgetComponent``.

Fields are ``param`` parameters named as the anywidget traits (``param.Bytes`` for the binary
buffers); ``from_session``, ``as_dict``, ``array`` … are shared with the anywidget classes. The
CSS is passed as text: Panel serves stylesheet *paths* only from inside the component's module
directory, and ``widgets/`` is not.

Examples
--------
>>> import numpy as np
>>> editor = LayerEditorPanel(layers=["conv", "fc"], sizes=np.array([150, 840]))
>>> editor.value, editor.size_array.tolist()
([0.0, 0.0], [150.0, 840.0])
"""

from __future__ import annotations

import panel as pn
import param

from workbench.widgets import layer_editor as le
from workbench.widgets import sample_grid as sg
from workbench.widgets.assets import asset


class LayerEditorPanel(le.LayerEditorMixin, pn.custom.AnyWidgetComponent):
    """Per-layer sparsity / bit-width editor for Panel apps (see :class:`LayerEditor`)."""

    _esm = asset("layer_editor.js")
    _stylesheets = [asset("layer_editor.css").read_text()]

    layers = param.List(default=[], item_type=str, doc="layer names")
    sizes = param.Bytes(default=b"", doc="weights per layer, float32 little-endian")
    sensitivity = param.Bytes(default=b"", doc="sensitivity per layer, float32 (empty: none)")
    sensitivity_label = param.String(default=le.DEFAULT_LABEL, doc="legend text")
    mode = param.Selector(default="sparsity", objects=list(le.MODES), doc="what handles edit")
    bits_choices = param.List(default=list(le.BITS), item_type=int, doc="bit widths allowed")
    value = param.List(default=[], doc="edited value per layer")
    continuous_update = param.Boolean(default=False, doc="sync value while dragging")

    def __init__(self, **params):
        super().__init__(**le.encode_arrays(params))
        if len(self.value) != len(self.layers):
            self.value = le.default_values(len(self.layers), self.mode, self.bits_choices)

    @param.depends("value", watch=True, on_init=True)
    def _clamp(self):
        valid = le.clamp_values(self.value, self.mode, self.bits_choices)
        if [(type(v), v) for v in valid] != [(type(v), v) for v in self.value]:
            self.value = valid  # also turns the browser's JSON 0 back into 0.0


class SampleGridPanel(sg.SampleGridMixin, pn.custom.AnyWidgetComponent):
    """Linked samples × variants grid for Panel apps (see :class:`SampleGrid`)."""

    _esm = asset("sample_grid.js")
    _stylesheets = [asset("sample_grid.css").read_text()]

    images = param.Bytes(default=b"", doc="N×C×H×W images, channels first")
    image_shape = param.List(default=[1, 1, 1], item_type=int, doc="[C, H, W]")
    image_dtype = param.Selector(default="float32", objects=list(sg.DTYPES))
    heatmaps = param.Bytes(default=b"", doc="float32 relevance, V×N×H×W or N×H×W")
    show_heatmap = param.Boolean(default=True, doc="draw the heatmap overlay")
    variants = param.List(default=[], item_type=str, doc="row names")
    indices = param.List(default=[], item_type=int, doc="dataset index per column")
    labels = param.Bytes(default=b"", doc="float32 true class per sample")
    class_names = param.List(default=[], item_type=str, doc="class names")
    predictions = param.Bytes(default=b"", doc="float32 predicted class, V×N")
    margins = param.Bytes(default=b"", doc="float32 margin, V×N")
    selected = param.Integer(default=-1, bounds=(-1, None), doc="selected column, -1 for none")
    cell_size = param.Integer(default=56, bounds=(8, 512), doc="image size in CSS pixels")

    def __init__(self, **params):
        super().__init__(**sg.encode_arrays(params))

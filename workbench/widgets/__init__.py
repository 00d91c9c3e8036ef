"""Custom widgets: a per-layer sparsity / bit-width editor and a linked samples × variants grid.

Each widget is one ES module (plus CSS) in the repository's ``widgets/`` directory, run by an
``anywidget.AnyWidget`` in JupyterLab (:class:`LayerEditor`, :class:`SampleGrid`) and by a
``pn.custom.AnyWidgetComponent`` in Panel (:class:`LayerEditorPanel`, :class:`SampleGridPanel`;
imported on first use). Arrays travel as float32 bytes, not JSON lists.

Examples
--------
>>> import workbench
>>> from workbench.widgets import LayerEditor, SampleGrid
>>> s = workbench.Session.default(progress=False)
>>> editor = LayerEditor.from_session(s, sensitivity=False)
>>> grid = SampleGrid.from_session(s, n=4)
>>> len(editor.layers), grid.sample_count, grid.variants
(5, 4, ['base'])
"""

from workbench.widgets.layer_editor import LayerEditor
from workbench.widgets.sample_grid import SampleGrid
from workbench.widgets.sensitivity import layer_sensitivity

_PANEL = ("LayerEditorPanel", "SampleGridPanel")


def __getattr__(name):
    if name in _PANEL:
        from workbench.widgets import panel

        return getattr(panel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LayerEditor", "SampleGrid", "layer_sensitivity", *_PANEL]

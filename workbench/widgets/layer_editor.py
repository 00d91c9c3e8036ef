"""LayerEditor: one bar per layer (size, sensitivity) with a handle for its sparsity or bit width.

The front end is ``widgets/layer_editor.js``; :class:`LayerEditor` runs it in JupyterLab
(anywidget) and :class:`~workbench.widgets.panel.LayerEditorPanel` in Panel. Both carry the same
fields:

=====================  ======================================================================
``layers``             layer names (JSON list)
``sizes``              weights per layer, float32 bytes (one per layer)
``sensitivity``        how much each layer matters, float32 bytes (one per layer, or empty)
``sensitivity_label``  what ``sensitivity`` measures (legend text)
``mode``               ``"sparsity"`` (0 … 0.99) or ``"bits"`` (one of ``bits_choices``)
``bits_choices``       allowed bit widths in ``"bits"`` mode
``value``              the edited value of each layer (a list), synced back from the browser
``continuous_update``  send ``value`` while dragging (default: only on release)
=====================  ======================================================================
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from workbench.errors import ParameterError
from workbench.widgets.assets import asset
from workbench.widgets.buffers import from_bytes, to_bytes

MODES = ("sparsity", "bits")
MAX_SPARSITY = 0.99
BITS = [2, 3, 4, 5, 6, 7, 8]
BINARY = ("sizes", "sensitivity")
DEFAULT_LABEL = "accuracy drop when pruned alone to 50%"


def clamp_values(values, mode: str = "sparsity", bits_choices=BITS) -> list:
    """Each value made valid: sparsity clipped to [0, 0.99], bits snapped to the nearest choice.

    Examples
    --------
    >>> clamp_values([-0.1, 0.5, 1.0])
    [0.0, 0.5, 0.99]
    >>> clamp_values([1, 4.4, 9], "bits", [2, 4, 8])
    [2, 4, 8]
    """
    if mode == "sparsity":
        return [min(MAX_SPARSITY, max(0.0, float(v))) for v in values]
    if mode == "bits":
        choices = sorted(int(b) for b in bits_choices)
        if not choices:
            raise ParameterError("bits mode needs at least one entry in bits_choices")
        return [min(choices, key=lambda b: (abs(b - float(v)), b)) for v in values]
    raise ParameterError(f"mode must be one of {MODES}, got {mode!r}")


def default_values(n: int, mode: str = "sparsity", bits_choices=BITS) -> list:
    """The starting value of ``n`` layers: unpruned (0.0) or the widest bit width.

    Examples
    --------
    >>> default_values(2), default_values(2, "bits", [4, 8])
    ([0.0, 0.0], [8, 8])
    """
    return [0.0 if mode == "sparsity" else max(bits_choices)] * n


def layer_editor_data(session, mode: str = "sparsity", *, variant: str | None = None,
                      sensitivity=True, bits_choices=BITS) -> dict:
    """The fields of a layer editor for ``session``'s prunable layers (pure; no widget).

    ``value`` starts at the variant's current per-layer sparsity, or its bit widths (the largest
    choice for layers it does not quantize). ``sensitivity=True`` measures it with
    :func:`~workbench.widgets.sensitivity.layer_sensitivity` (the pruning sensitivity, also in
    bits mode); pass a dict (layer → value) or array of your own, or ``False`` for none.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> d = layer_editor_data(s, sensitivity=False)
    >>> d["layers"][:2], from_bytes(d["sizes"])[:2].tolist(), d["value"][:2]
    (['features.0', 'features.3'], [150.0, 2400.0], [0.0, 0.0])
    """
    from workbench.prune import prunable_layers

    if mode not in MODES:
        raise ParameterError(f"mode must be one of {MODES}, got {mode!r}")
    v = session[variant or "base"]
    layers = prunable_layers(v.model)
    names = list(layers)
    sizes = [layers[n].weight.numel() for n in names]
    if mode == "sparsity":
        current = v.metrics.layer_sparsity
        values = [float(current.get(n, 0.0)) for n in names]
    else:
        values = [v.quant[n].bits if n in v.quant else max(bits_choices) for n in names]
    if sensitivity is True:
        from workbench.widgets.sensitivity import layer_sensitivity

        sensitivity = layer_sensitivity(session, 0.5, variant=variant)
    if isinstance(sensitivity, dict):
        sensitivity = [sensitivity[n] for n in names]
    return {"layers": names, "sizes": to_bytes(sizes),
            "sensitivity": to_bytes(sensitivity) if sensitivity is not False else b"",
            "mode": mode, "bits_choices": list(bits_choices),
            "value": clamp_values(values, mode, bits_choices)}


def encode_arrays(kwargs: dict, names=BINARY) -> dict:
    """``kwargs`` with the binary fields given as arrays turned into float32 bytes."""
    return {k: (to_bytes(v) if k in names else v) for k, v in kwargs.items()}


class LayerEditorMixin:
    """What both the anywidget and the Panel layer editor offer on top of their fields."""

    @classmethod
    def from_session(cls, session, mode: str = "sparsity", **kwargs):
        """An editor for ``session``'s layers; see :func:`layer_editor_data` for ``kwargs``
        (``variant``, ``sensitivity``, ``bits_choices``); the rest go to the constructor."""
        data_keys = ("variant", "sensitivity", "bits_choices")
        data = layer_editor_data(session, mode, **{k: kwargs.pop(k) for k in data_keys
                                                   if k in kwargs})
        return cls(**data, **kwargs)

    def as_dict(self) -> dict:
        """Layer name → edited value (sparsity as float, bits as int).

        Feed sparsities to ``session.prune("magnitude", per_layer_sparsity=editor.as_dict())``
        and bits to ``session.quantize("uniform", per_layer_bits=editor.as_dict())`` (the
        Compress panel's "Per layer" switch does this for you).
        """
        cast = int if self.mode == "bits" else float
        return {n: cast(v) for n, v in zip(self.layers, self.value)}

    @property
    def size_array(self) -> np.ndarray:
        """Weights per layer, decoded from ``sizes``."""
        return from_bytes(self.sizes)

    @property
    def sensitivity_array(self) -> np.ndarray:
        """Sensitivity per layer, decoded from ``sensitivity`` (empty if none)."""
        return from_bytes(self.sensitivity)


class LayerEditor(LayerEditorMixin, anywidget.AnyWidget):
    """Per-layer sparsity / bit-width editor for JupyterLab.

    Drag a handle (or focus it and use the arrow keys, Page Up/Down, Home/End) to set a layer's
    value; ``value`` follows in Python. Bars show each layer's size; their colour its
    sensitivity.

    Examples
    --------
    >>> import numpy as np
    >>> w = LayerEditor(layers=["conv", "fc"], sizes=np.array([150, 840]), value=[0.5, 1.2])
    >>> w.value, w.size_array.tolist()
    ([0.5, 0.99], [150.0, 840.0])
    >>> w.as_dict()
    {'conv': 0.5, 'fc': 0.99}
    """

    _esm = asset("layer_editor.js")
    _css = asset("layer_editor.css")

    layers = traitlets.List(traitlets.Unicode(), help="layer names").tag(sync=True)
    sizes = traitlets.Bytes(b"", help="weights per layer, float32 little-endian").tag(sync=True)
    sensitivity = traitlets.Bytes(
        b"", help="sensitivity per layer, float32 little-endian (empty: none)").tag(sync=True)
    sensitivity_label = traitlets.Unicode(DEFAULT_LABEL, help="legend text").tag(sync=True)
    mode = traitlets.Enum(MODES, "sparsity", help="what the handles edit").tag(sync=True)
    bits_choices = traitlets.List(traitlets.Int(), BITS,
                                  help="bit widths allowed in bits mode").tag(sync=True)
    value = traitlets.List(traitlets.Float(), help="edited value per layer").tag(sync=True)
    continuous_update = traitlets.Bool(
        False, help="sync value while dragging, not only on release").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**encode_arrays(kwargs))
        if len(self.value) != len(self.layers):
            self.value = default_values(len(self.layers), self.mode, self.bits_choices)

    @traitlets.validate("value")
    def _valid_value(self, proposal):
        return clamp_values(proposal["value"], self.mode, self.bits_choices)

"""The Compress panel: choose a method and its settings, see a live preview, apply it.

Moving the sparsity slider (or changing any setting) previews the result with
:func:`workbench.preview.preview` (cached, nothing added to the session); Apply adds the variant
through the shared :class:`~workbench.panels.state.SessionState`, in a worker thread so the page
stays responsive, and shows any error in the panel.

Examples
--------
>>> import workbench
>>> from workbench.panels.state import SessionState
>>> panel = CompressPanel(state=SessionState(session=workbench.Session.default(progress=False)))
>>> panel.param.update(method="magnitude", sparsity=0.5)  # doctest: +ELLIPSIS
<...>
>>> round(panel.preview_metrics.sparsity, 2)
0.5
>>> panel.apply_now().name, panel.state.variants
('magnitude-50', ['base', 'magnitude-50'])
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from functools import partial

import panel as pn
import param

import workbench
from workbench.errors import ParameterError, WorkbenchError
from workbench.metrics import Metrics
from workbench.panels.state import SessionState
from workbench.plots.compare import layer_sparsity_figure
from workbench.preview import entry, preview, previewable
from workbench.prune.base import SCOPES
from workbench.session import BASE, Variant

log = logging.getLogger(__name__)

DEFAULT_METHODS = {"prune": "magnitude", "quantize": "uniform"}


def error_message(err: BaseException) -> str:
    """One readable line for the UI: the message of our own errors, the type for others."""
    if isinstance(err, WorkbenchError):
        return str(err)
    log.exception("unexpected error in the dashboard", exc_info=err)
    return f"{type(err).__name__}: {err}"


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KB"


class CompressPanel(pn.viewable.Viewer):
    """Prune or quantize a variant with a live preview of the result."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    kind = param.Selector(default="prune", objects=["prune", "quantize"])
    method = param.Selector(default=None, objects=[], allow_None=True)
    parent = param.Selector(default=BASE, objects=[BASE], label="Start from")
    sparsity = param.Number(default=0.5, bounds=(0.0, 0.99), step=0.01)
    scope = param.Selector(default="layer", objects=list(SCOPES))
    bits = param.Selector(default=8, objects=[8], check_on_set=False,
                          doc="Weight bits (the method's supported widths are offered).")
    finetune_epochs = param.Integer(default=0, bounds=(0, 100), label="Fine-tune epochs")
    variant_name = param.String(default="", label="Name (optional)")
    extra = param.String(default="", label="Extra parameters (YAML)",
                         doc="More method parameters, e.g. 'min_keep: 0.05'.")
    apply = param.Event(label="Apply")

    preview_metrics = param.ClassSelector(class_=Metrics, default=None, allow_None=True,
                                          doc="Metrics the current settings would give.")
    preview_note = param.String(default="", doc="Why there is no preview (e.g. 'press Apply').")
    error = param.String(default="", doc="The last Apply error ('' if it worked).")
    last_added = param.String(default="", doc="Name of the last variant Apply added.")
    busy = param.Boolean(default=False, doc="Apply is running.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("CompressPanel needs a SessionState (state=...)")
        self._sync_methods()
        self._sync_parents()
        self._update_preview()

    # --- keeping the choices consistent (effects) ---------------------------------------------
    # A widget linked to a Selector may reset the value itself when its options change, so the
    # new value is chosen before the options are replaced and set afterwards.
    @param.depends("kind", watch=True)
    def _sync_methods(self):
        names = workbench.methods(self.kind)
        preferred = DEFAULT_METHODS[self.kind]
        method = self.method if self.method in names else (
            preferred if preferred in names else (names[0] if names else None))
        self.param.method.objects = names
        self.method = method
        self._sync_method_options()

    @param.depends("method", watch=True)
    def _sync_method_options(self):
        if self.method is None or self.method not in workbench.methods(self.kind):
            return
        e = entry(self.kind, self.method)
        if self.kind == "quantize":
            bits = list(e.bits)
            value = self.bits if self.bits in bits else (8 if 8 in bits else max(bits))
            self.param.bits.objects = bits
            self.bits = value
        default_scope = self._fn_defaults().get("scope")
        if default_scope in SCOPES:
            self.scope = default_scope

    @param.depends("state.variants", watch=True)
    def _sync_parents(self):
        names = list(self.state.variants)
        parent = self.parent if self.parent in names else BASE
        self.param.parent.objects = names
        self.parent = parent

    def _fn_defaults(self) -> dict:
        """Keyword parameters the current method takes, with their defaults."""
        if self.method is None:
            return {}
        sig = inspect.signature(entry(self.kind, self.method).fn)
        out = {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            out.setdefault("scope", "layer")
        return out

    # --- what the settings mean --------------------------------------------------------------
    def _extra_params(self) -> dict:
        import yaml

        text = self.extra.strip()
        if not text:
            return {}
        try:
            extra = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ParameterError(f"extra parameters are not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(extra, dict):
            raise ParameterError("extra parameters must be 'name: value' lines, e.g. 'min_keep: 0.05'")
        return extra

    def request(self) -> dict:
        """The method parameters the current settings stand for (no fine-tuning, no name)."""
        if self.method is None:
            raise ParameterError(f"no {self.kind} method is registered")
        params: dict = {}
        if self.kind == "prune":
            params["sparsity"] = round(float(self.sparsity), 6)
            if "scope" in self._fn_defaults():
                params["scope"] = self.scope
        else:
            params["bits"] = self.bits
        params.update(self._extra_params())
        if self.parent != BASE:
            params["parent"] = self.parent
        return params

    def _apply_request(self) -> dict:
        params = self.request()
        if self.kind == "prune" and self.finetune_epochs:
            params["finetune_epochs"] = int(self.finetune_epochs)
        if self.variant_name.strip():
            params["name"] = self.variant_name.strip()
        return params

    # --- preview (effect: fills preview_metrics / preview_note) ---------------------------------
    @param.depends("kind", "method", "parent", "sparsity", "scope", "bits", "extra",
                   "state.revision", watch=True)
    def _update_preview(self):
        if (self.method is None or self.method not in workbench.methods(self.kind)
                or self.parent not in self.state.variants):
            self.param.update(preview_metrics=None,
                              preview_note=f"No {self.kind} method is registered."
                              if self.method is None else "")
            return
        if not previewable(self.kind, self.method):
            self.param.update(preview_metrics=None,
                              preview_note=f"**{self.method}** trains while it compresses, so it "
                                           "has no live preview: press **Apply** to run it.")
            return
        try:
            params = self.request()
            metrics = preview(self.state.session, self.kind, self.method, **params)
        except Exception as err:  # noqa: BLE001  shown in the panel, never raised into the UI
            self.param.update(preview_metrics=None, preview_note=f"⚠ {error_message(err)}")
            return
        self.param.update(preview_metrics=metrics, preview_note="")

    # --- apply -------------------------------------------------------------------------------
    def apply_now(self) -> Variant | None:
        """Add the variant the settings describe (blocking); ``None`` and ``error`` on failure."""
        self.error = ""
        try:
            variant = self.state.create(self.kind, self.method, **self._apply_request())
        except Exception as err:  # noqa: BLE001
            self.error = error_message(err)
            return None
        self._added(variant)
        return variant

    async def apply_async(self) -> Variant | None:
        """As :meth:`apply_now`, but builds the variant in a worker thread (the UI stays live)."""
        if self.busy:
            return None
        self.param.update(busy=True, error="")
        try:
            params = self._apply_request()
            loop = asyncio.get_running_loop()
            variant = await loop.run_in_executor(
                None, partial(self.state.create, self.kind, self.method, **params))
        except Exception as err:  # noqa: BLE001
            self.error = error_message(err)
            return None
        finally:
            self.busy = False
        self._added(variant)
        return variant

    def _added(self, variant: Variant) -> None:
        self.state.added(variant.name)
        self.param.update(last_added=variant.name, variant_name="", error="")

    @param.depends("apply", watch=True)
    async def _on_apply(self):
        await self.apply_async()

    # --- derived display values --------------------------------------------------------------
    @param.depends("preview_metrics")
    def _accuracy_pct(self) -> float:
        return 100 * self.preview_metrics.accuracy if self.preview_metrics else 0.0

    @param.depends("preview_metrics")
    def _has_preview(self) -> bool:
        return self.preview_metrics is not None

    @param.depends("preview_metrics", "parent")
    def _delta_text(self) -> str:
        m = self.preview_metrics
        if m is None:
            return ""
        lines = []
        for ref in dict.fromkeys([BASE, self.parent]):
            if ref not in self.state.session.variants:
                continue
            acc = self.state.session[ref].metrics.accuracy
            d = 100 * (m.accuracy - acc)
            color = "#2ca02c" if d >= 0 else "#d62728"
            lines.append(f"<span style='color:{color};font-size:1.3em'><b>{d:+.1f}</b> points</span>"
                         f" vs {ref} ({100 * acc:.1f}%)")
        return "<br>".join(lines)

    @param.depends("preview_metrics")
    def _details(self) -> str:
        m = self.preview_metrics
        if m is None:
            return ""
        bits = sorted(set(m.bits.values()))
        return "\n".join([
            "| | preview |", "|---|---|",
            f"| sparsity | {100 * m.sparsity:.1f}% |",
            f"| size (best format) | {_kb(m.bytes_compressed)} of {_kb(m.bytes_dense)} dense |",
            f"| MACs | {m.macs_nonzero:,} of {m.macs:,} |",
            f"| loss | {m.loss:.3f} |",
            *([f"| weight bits | {', '.join(map(str, bits))} |"] if bits else []),
        ])

    @param.depends("preview_metrics")
    def _layer_figure(self):
        if not self._shows_layers():
            return None
        return layer_sparsity_figure({self.parent: self.state.session[self.parent].metrics,
                                      "preview": self.preview_metrics})

    @param.depends("preview_metrics")
    def _shows_layers(self) -> bool:
        return (self.preview_metrics is not None and self.kind == "prune"
                and self.parent in self.state.session.variants)

    @param.depends("error")
    def _has_error(self) -> bool:
        return bool(self.error)

    @param.depends("last_added", "error")
    def _added_text(self) -> str:
        return f"Added **{self.last_added}**." if self.last_added and not self.error else ""

    @param.depends("last_added", "error")
    def _has_added(self) -> bool:
        return bool(self.last_added and not self.error)

    @param.depends("preview_note")
    def _has_note(self) -> bool:
        return bool(self.preview_note)

    @param.depends("kind")
    def _is_prune(self) -> bool:
        return self.kind == "prune"

    @param.depends("kind")
    def _is_quantize(self) -> bool:
        return self.kind == "quantize"

    @param.depends("kind", "method")
    def _shows_scope(self) -> bool:
        return self.kind == "prune" and "scope" in self._fn_defaults()

    @param.depends("kind", "method")
    def _method_doc(self) -> str:
        if self.method is None:
            return ""
        e = entry(self.kind, self.method)
        flags = [f for f, on in (("needs data", getattr(e, "needs_data", False)),
                                 ("structured", getattr(e, "structured", False)),
                                 ("trains", getattr(e, "trains", False))) if on]
        return f"<small>{e.reference}{' — ' + ', '.join(flags) if flags else ''}</small>"

    # --- view ----------------------------------------------------------------------------------
    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            w.RadioButtonGroup.from_param(self.param.kind, color="primary",
                                          variant="outline"),
            w.Select.from_param(self.param.method, label="Method", css_classes=["wb-method"]),
            pn.pane.HTML(self._method_doc, margin=(0, 10)),
            w.Select.from_param(self.param.parent),
            w.FloatSlider.from_param(self.param.sparsity, throttled=True, format="0.00",
                                     visible=self._is_prune, css_classes=["wb-sparsity"]),
            w.RadioButtonGroup.from_param(self.param.scope, color="primary", variant="outline",
                                          visible=self._shows_scope),
            w.Select.from_param(self.param.bits, label="Bits", visible=self._is_quantize),
            w.IntInput.from_param(self.param.finetune_epochs, visible=self._is_prune),
            w.TextInput.from_param(self.param.variant_name, placeholder="automatic"),
            w.TextAreaInput.from_param(self.param.extra, placeholder="min_keep: 0.05",
                                       height=70),
            w.Button.from_param(self.param.apply, color="primary", loading=self.param.busy,
                                css_classes=["wb-apply"]),
            pn.indicators.Progress(value=-1, active=self.param.busy, visible=self.param.busy,
                                   sizing_mode="stretch_width", height=12),
            pn.pane.Alert(self.param.error, alert_type="danger", visible=self._has_error,
                          css_classes=["wb-error"]),
            pn.pane.Alert(self._added_text, alert_type="success",
                          visible=self._has_added, css_classes=["wb-added"]),
            width=340,
        )
        result = pn.Column(
            pn.pane.Markdown("### Preview", margin=(0, 10)),
            pn.indicators.Number(label="Accuracy", value=self._accuracy_pct, format="{value:.1f}%",
                                 font_size="48pt", title_size="14pt", visible=self._has_preview,
                                 css_classes=["wb-preview-accuracy"]),
            pn.pane.HTML(self._delta_text, visible=self._has_preview),
            pn.pane.Markdown(self._details, visible=self._has_preview),
            pn.pane.Alert(self.param.preview_note, alert_type="info", visible=self._has_note,
                          css_classes=["wb-preview-note"]),
            pn.pane.Plotly(self._layer_figure, visible=self._shows_layers, height=380,
                           sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, result, sizing_mode="stretch_width")


__all__ = ["CompressPanel", "error_message"]

"""The Compress panel: choose a method and its settings, see a live preview, apply it.

Moving the sparsity slider (or changing any setting) previews the result with
:func:`workbench.preview.preview` (cached, nothing added to the session); Apply adds the variant
through the shared :class:`~workbench.panels.state.SessionState`, in a worker thread so the page
stays responsive, and shows any error in the panel.

The live what-if: right after the accuracy preview, the corruption error and the feature
geometry of the same candidate (:func:`workbench.preview.whatif`, cached under the same key)
follow from a single background worker thread while "computing…" shows; a newer setting
supersedes an older pending computation, whose result is dropped. A setting seen before is a
cache lookup and shows at once. Without a running event loop (plain Python, tests) it is
computed right away instead.

"Per layer" replaces the sparsity slider (or the bit width) by a
:class:`~workbench.widgets.panel.LayerEditorPanel`: one bar per layer of the parent (length =
weights, colour = accuracy drop when that layer alone is pruned to 50%), whose handle sets that
layer's sparsity (``per_layer_sparsity``) or bit width (``per_layer_bits``). The default
``sparsity`` sent along is the size-weighted overall sparsity, which names the variant.

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
import weakref
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import panel as pn
import param

import workbench
from workbench.cancel import Cancelled, CancelToken, on_step
from workbench.errors import ParameterError, WorkbenchError
from workbench.metrics import Metrics
from workbench.panels.alerts import message_alert
from workbench.panels.export import plotly_pane
from workbench.panels.state import SessionState
from workbench.plots.compare import layer_sparsity_figure
from workbench.analysis.whatif import WhatIf
from workbench.preview import (cached_whatif, entry, preview, previewable, variant_whatif,
                               whatif)
from workbench.prune.base import SCOPES
from workbench.session import BASE, Variant
from workbench.widgets.panel import LayerEditorPanel

log = logging.getLogger(__name__)

DEFAULT_METHODS = {"prune": "magnitude", "quantize": "uniform"}
# The what-if table next to the accuracy: small print, and it scrolls rather than overflowing.
COMPACT_TABLE = ":host { overflow-x: auto; max-width: 100%; } table { font-size: 0.85em; }"

#: One worker for every panel's what-if: the computations queue instead of competing for the
#: (few, shared) cores, and superseded ones are skipped when their turn comes.
_WHATIF_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-whatif")
_sensitivity: "weakref.WeakKeyDictionary[Variant, dict]" = weakref.WeakKeyDictionary()


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
    cancel = param.Event(label="Cancel", doc="Stop a running Apply (fine-tuning) at its next step.")

    preview_metrics = param.ClassSelector(class_=Metrics, default=None, allow_None=True,
                                          doc="Metrics the current settings would give.")
    preview_note = param.String(default="", doc="Why there is no preview (e.g. 'press Apply').")
    error = param.String(default="", doc="The last Apply error ('' if it worked).")
    notice = param.String(default="", doc="E.g. that the last Apply was cancelled.")
    last_added = param.String(default="", doc="Name of the last variant Apply added.")
    busy = param.Boolean(default=False, doc="Apply is running.")

    per_layer = param.Boolean(default=False, label="Per layer",
                              doc="Set each layer's sparsity (or bit width) in the layer editor.")
    layer_values = param.Dict(default={}, doc="Layer name → sparsity (prune) or bits (quantize) "
                                              "from the layer editor.")
    whatif = param.ClassSelector(class_=WhatIf, default=None, allow_None=True,
                                 doc="Corruption error and geometry of the previewed variant.")
    reference_whatif = param.ClassSelector(class_=WhatIf, default=None, allow_None=True,
                                           doc="The same for the parent variant.")
    whatif_pending = param.Boolean(default=False, doc="The what-if part is being computed.")
    whatif_note = param.String(default="", doc="Why there is no what-if summary.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("CompressPanel needs a SessionState (state=...)")
        self._whatif_token = 0
        self._apply_token: CancelToken | None = None
        self._whatif_tasks: set = set()
        self._editor_for: tuple | None = None  # (kind, parent) the editor's layers belong to
        self.layer_editor = LayerEditorPanel(sizing_mode="stretch_width")
        self.layer_editor.param.watch(self._editor_changed, "value")
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
        per_layer = self._per_layer_active() and self._editor_for == (self.kind, self.parent) \
            and bool(self.layer_values)
        if self.kind == "prune":
            params["sparsity"] = round(float(self.sparsity), 6)
            if "scope" in self._fn_defaults():
                params["scope"] = "layer" if per_layer else self.scope
            if per_layer:
                values = {n: round(float(v), 4) for n, v in self.layer_values.items()}
                params["sparsity"] = self._overall_sparsity(values)
                params["per_layer_sparsity"] = values
        else:
            params["bits"] = self.bits
            if per_layer:
                params["per_layer_bits"] = {n: int(v) for n, v in self.layer_values.items()}
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
                   "per_layer", "layer_values", "state.revision", watch=True)
    def _update_preview(self):
        if (self.method is None or self.method not in workbench.methods(self.kind)
                or self.parent not in self.state.variants):
            self._drop_whatif()
            self.param.update(preview_metrics=None,
                              preview_note=f"No {self.kind} method is registered."
                              if self.method is None else "")
            return
        if not previewable(self.kind, self.method):
            self._drop_whatif()
            self.param.update(preview_metrics=None,
                              preview_note=f"**{self.method}** trains while it compresses, so it "
                                           "has no live preview: press **Apply** to run it.")
            return
        try:
            params = self.request()
            metrics = preview(self.state.session, self.kind, self.method, **params)
        except Exception as err:  # noqa: BLE001  shown in the panel, never raised into the UI
            self._drop_whatif()
            self.param.update(preview_metrics=None, preview_note=f"⚠ {error_message(err)}")
            return
        self.param.update(preview_metrics=metrics, preview_note="")
        self._schedule_whatif(params)

    # --- what-if (effect: fills whatif / reference_whatif after the fast preview) --------------
    def _drop_whatif(self) -> None:
        """Forget the shown summary and supersede any pending computation."""
        self._whatif_token += 1
        self.param.update(whatif=None, reference_whatif=None, whatif_pending=False,
                          whatif_note="")

    def _schedule_whatif(self, params: dict) -> None:
        self._whatif_token += 1
        token = self._whatif_token
        session, kind, method = self.state.session, self.kind, self.method
        parent = session[self.parent]
        try:
            hit = cached_whatif(session, kind, method, **params)
        except Exception:  # noqa: BLE001  the computation below reports it
            hit = None
        if hit is not None:  # going back to a seen setting: a lookup, no worker
            self._show_whatif(token, (hit, variant_whatif(parent)))
            return

        def compute():
            if token != self._whatif_token:
                return None  # superseded while queued: skip the work
            return whatif(session, kind, method, **params), variant_whatif(parent)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # plain Python: nothing to keep responsive
            self._run_whatif_now(token, compute)
            return
        self.param.update(whatif=None, whatif_pending=True, whatif_note="")
        task = loop.create_task(self._run_whatif_later(token, compute))
        self._whatif_tasks.add(task)
        task.add_done_callback(self._whatif_tasks.discard)

    def _run_whatif_now(self, token: int, compute) -> None:
        try:
            result = compute()
        except Exception as err:  # noqa: BLE001
            self._whatif_failed(token, err)
            return
        self._show_whatif(token, result)

    async def _run_whatif_later(self, token: int, compute) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(_WHATIF_WORKER, compute)
        except Exception as err:  # noqa: BLE001
            self._whatif_failed(token, err)
            return
        self._show_whatif(token, result)

    def _show_whatif(self, token: int, result) -> None:
        if result is None or token != self._whatif_token:
            return  # a newer setting was chosen meanwhile: never show a stale summary
        w, ref = result
        self.param.update(whatif=w, reference_whatif=ref, whatif_pending=False, whatif_note="")

    def _whatif_failed(self, token: int, err: BaseException) -> None:
        if token == self._whatif_token:
            self.param.update(whatif=None, reference_whatif=None, whatif_pending=False,
                              whatif_note=f"No robustness summary: {error_message(err)}")

    async def whatif_settled(self) -> None:
        """Wait until every scheduled what-if computation has finished (or been dropped)."""
        while self._whatif_tasks:
            await asyncio.gather(*list(self._whatif_tasks), return_exceptions=True)

    # --- per layer (effects: the editor follows the parent and kind; values follow the editor) -
    def _per_layer_supported(self) -> bool:
        if self.method is None or self.method not in workbench.methods(self.kind):
            return False
        e = entry(self.kind, self.method)
        if self.kind == "prune":
            return bool(getattr(e, "per_layer", False))
        return "per_layer_bits" in inspect.signature(e.fn).parameters

    def _per_layer_active(self) -> bool:
        return self.per_layer and self._per_layer_supported()

    def _overall_sparsity(self, values: dict) -> float:
        sizes = dict(zip(self.layer_editor.layers, self.layer_editor.size_array.tolist()))
        total = sum(sizes.get(n, 0.0) for n in values)
        if not total:
            return round(float(self.sparsity), 6)
        overall = sum(v * sizes.get(n, 0.0) for n, v in values.items()) / total
        return min(0.99, round(overall, 2))

    @param.depends("per_layer", "kind", "parent", "state.revision", watch=True)
    def _fill_editor(self):
        """(Re)load the editor with the parent's layers, starting from the uniform setting."""
        if not self.per_layer or self.parent not in self.state.session.variants:
            return
        from workbench.widgets.layer_editor import layer_editor_data

        session = self.state.session
        variant = session[self.parent]
        mode = "sparsity" if self.kind == "prune" else "bits"
        choices = list(entry(self.kind, self.method).bits) if mode == "bits" else [8]
        layers_before = list(self.layer_editor.layers)
        if variant not in _sensitivity:
            from workbench.widgets.sensitivity import layer_sensitivity

            _sensitivity[variant] = layer_sensitivity(session, 0.5, variant=self.parent)
        data = layer_editor_data(session, mode, variant=self.parent,
                                 sensitivity=_sensitivity[variant], bits_choices=choices)
        if (self._editor_for == (self.kind, self.parent) and data["layers"] == layers_before
                and set(self.layer_values) == set(data["layers"])):
            return  # same layers (e.g. another variant was added): keep the user's edits
        if mode == "sparsity":  # a pruned parent's layers start where they already are
            data["value"] = [max(float(self.sparsity), v) for v in data["value"]]
        else:
            data["value"] = [self.bits] * len(data["layers"])
        self.layer_editor.param.update(**data)
        self._editor_for = (self.kind, self.parent)
        self.layer_values = dict(zip(data["layers"], self.layer_editor.value))

    @param.depends("method", "bits", watch=True)
    def _editor_bits(self):
        if self.kind != "quantize" or self.layer_editor.mode != "bits" \
                or self.method not in workbench.methods("quantize"):
            return
        choices = list(entry("quantize", self.method).bits)
        if choices != list(self.layer_editor.bits_choices):
            self.layer_editor.param.update(bits_choices=choices,
                                           value=list(self.layer_editor.value))

    def _editor_changed(self, event):
        values = dict(zip(self.layer_editor.layers, event.new))
        if values != self.layer_values:
            self.layer_values = values

    @param.depends("layer_values", watch=True)
    def _values_to_editor(self):
        if list(self.layer_values) != list(self.layer_editor.layers):
            return
        wanted = [self.layer_values[n] for n in self.layer_editor.layers]
        if wanted != list(self.layer_editor.value):
            self.layer_editor.value = wanted

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
        token = self._apply_token = CancelToken()  # before busy: Cancel shows with busy
        self.param.update(busy=True, error="", notice="")
        try:
            params = self._apply_request()
            loop = asyncio.get_running_loop()
            variant = await loop.run_in_executor(
                None, partial(self._create, token, self.kind, self.method, **params))
        except Cancelled:
            self.notice = "Cancelled: no variant was added."
            return None
        except Exception as err:  # noqa: BLE001
            self.error = error_message(err)
            return None
        finally:
            self.busy = False
        self._added(variant)
        return variant

    def _create(self, token: CancelToken, kind: str, method: str, **params) -> Variant:
        # on_step is per thread: it must be entered in the worker thread that does the work
        with on_step(token.check):
            return self.state.create(kind, method, **params)

    @param.depends("cancel", watch=True)
    def _on_cancel(self):
        if self.busy and self._apply_token is not None:
            self._apply_token.cancel()

    def _added(self, variant: Variant) -> None:
        self.state.added(variant.name)
        self.param.update(last_added=variant.name, variant_name="", error="", notice="")

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

    @param.depends("last_added", "error")
    def _added_text(self) -> str:
        return f"Added **{self.last_added}**." if self.last_added and not self.error else ""

    @param.depends("last_added", "error")
    def _has_added(self) -> bool:
        return bool(self.last_added and not self.error)

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
    def _offers_per_layer(self) -> bool:
        return self._per_layer_supported()

    @param.depends("kind", "method", "per_layer")
    def _shows_editor(self) -> bool:
        return self._per_layer_active()

    @param.depends("kind", "method", "per_layer")
    def _shows_slider(self) -> bool:
        return self.kind == "prune" and not self._per_layer_active()

    @param.depends("kind", "method", "per_layer")
    def _shows_scope_choice(self) -> bool:
        return self._shows_scope() and not self._per_layer_active()

    @param.depends("whatif")
    def _has_whatif(self) -> bool:
        return self.whatif is not None

    @param.depends("whatif_note")
    def _has_whatif_note(self) -> bool:
        return bool(self.whatif_note)

    @param.depends("whatif", "reference_whatif")
    def _whatif_text(self) -> str:
        w, ref = self.whatif, self.reference_whatif
        if w is None:
            return ""
        name = self.parent
        mce = w.mce(ref) if ref is not None else float("nan")

        def cell(fn, r):
            return fn(r) if r is not None else ""

        rows = [
            ("mean corruption error", lambda r: f"{100 * r.mean_corruption_error:.1f}%"),
            ("mCE vs " + name, lambda r: f"{r.mce(ref):.2f}" if ref is not None else ""),
            ("clean error (sample)", lambda r: f"{100 * r.clean_error:.1f}%"),
            ("mean margin", lambda r: f"{r.mean_margin:.2f}"),
            ("negative margins", lambda r: f"{100 * r.negative_margin_fraction:.1f}%"),
            ("feature length", lambda r: f"{r.mean_length:.2f}"),
            ("angle to class", lambda r: f"{r.mean_angle:.1f}°"),
        ]
        corruptions = ", ".join(c.replace("_", " ") for c in w.corruptions)
        return "\n".join([
            f"| robustness & geometry | preview | {name} |", "|---|---|---|",
            *(f"| {label} | {cell(fn, w)} | {cell(fn, ref)} |" for label, fn in rows),
            "",
            f"<small>{w.samples} test images; {corruptions} at severity {w.severity}; "
            f"mCE {mce:.2f} = the preview's errors relative to {name}'s.</small>",
        ])

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
                                     visible=self._shows_slider, css_classes=["wb-sparsity"]),
            w.RadioButtonGroup.from_param(self.param.scope, color="primary", variant="outline",
                                          visible=self._shows_scope_choice),
            w.Select.from_param(self.param.bits, label="Bits", visible=self._is_quantize),
            w.Checkbox.from_param(self.param.per_layer, visible=self._offers_per_layer,
                                  css_classes=["wb-per-layer"]),
            w.IntInput.from_param(self.param.finetune_epochs, visible=self._is_prune),
            w.TextInput.from_param(self.param.variant_name, placeholder="automatic"),
            w.TextAreaInput.from_param(self.param.extra, placeholder="min_keep: 0.05",
                                       height=70),
            pn.Row(w.Button.from_param(self.param.apply, color="primary", loading=self.param.busy,
                                       css_classes=["wb-apply"]),
                   w.Button.from_param(self.param.cancel, color="warning",
                                       visible=self.param.busy, css_classes=["wb-cancel"])),
            pn.indicators.Progress(value=-1, active=self.param.busy, visible=self.param.busy,
                                   sizing_mode="stretch_width", height=12),
            message_alert(self.param.error, "danger", css_classes=["wb-error"]),
            message_alert(self.param.notice, "info", css_classes=["wb-notice"]),
            pn.pane.Alert(self._added_text, alert_type="success",
                          visible=self._has_added, css_classes=["wb-added"]),
            width=340,
        )
        result = pn.Column(
            pn.pane.Markdown("### Preview", margin=(0, 10)),
            # wraps: on a 1024 px screen the what-if table goes below the accuracy, not off-page
            pn.FlexBox(
                pn.indicators.Number(label="Accuracy", value=self._accuracy_pct,
                                     format="{value:.1f}%", font_size="48pt", title_size="14pt",
                                     visible=self._has_preview,
                                     css_classes=["wb-preview-accuracy"]),
                pn.Column(
                    pn.Row(pn.indicators.LoadingSpinner(value=self.param.whatif_pending,
                                                        size=18, visible=self.param.whatif_pending),
                           pn.pane.Markdown("computing robustness and geometry…",
                                            visible=self.param.whatif_pending, margin=(0, 5)),
                           css_classes=["wb-whatif-pending"]),
                    pn.pane.Markdown(self._whatif_text, visible=self._has_whatif,
                                     css_classes=["wb-whatif"], stylesheets=[COMPACT_TABLE]),
                    pn.pane.Alert(self.param.whatif_note, alert_type="warning",
                                  visible=self._has_whatif_note),
                    min_width=260, sizing_mode="stretch_width",
                ),
                sizing_mode="stretch_width",
            ),
            pn.pane.HTML(self._delta_text, visible=self._has_preview),
            pn.pane.Markdown(self._details, visible=self._has_preview),
            message_alert(self.param.preview_note, "info", css_classes=["wb-preview-note"]),
            pn.Column(pn.pane.Markdown("#### Per layer", margin=(0, 10)), self.layer_editor,
                      visible=self._shows_editor, sizing_mode="stretch_width",
                      css_classes=["wb-layer-editor"]),
            plotly_pane(self._layer_figure, "compress-layers", visible=self._shows_layers,
                        height=380, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, result, sizing_mode="stretch_width")


__all__ = ["CompressPanel", "error_message"]

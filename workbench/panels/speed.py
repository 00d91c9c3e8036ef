"""The Speed panel: benchmark variants on the inference engines, side by side.

Pick variants (new ones from the Compress panel appear at once) and engines, a batch size and
a repeat count, press Run: :func:`workbench.backend.benchmark` times every pair in a worker thread
(one variant at a time, its engines interleaved) with a progress bar. Results are cached by
(variant, engine, settings), so adding a variant only times the new one. The view shows the
accuracy-vs-latency Pareto scatter, the per-layer time of one variant on one engine, which
kernel each layer ran on, and the table (CSV download). Errors show in an Alert. **Cancel**
(shown while timing) stops before the next variant (variants timed so far stay cached) and keeps
the previous result.

Examples
--------
>>> import workbench
>>> from workbench.panels.state import SessionState
>>> panel = SpeedPanel(state=SessionState(session=workbench.Session.default(progress=False)),
...                    repeats=2)
>>> result = panel.run_now()
>>> [(r.variant, r.engine, r.batch) for r in result.rows]
[('base', 'torch', 1), ('base', 'sparse', 1)]
>>> panel.error
''
"""

from __future__ import annotations

import asyncio
import io
import json
from functools import partial

import panel as pn
import param

from workbench.backend import ENGINES, BenchmarkResult, benchmark, compile_variant
from workbench.backend.benchmark import _batch
from workbench.backend.layer_timing import layer_times
from workbench.cancel import Cancelled, CancelToken, on_step
from workbench.errors import ParameterError
from workbench.panels.alerts import message_alert
from workbench.panels.compress import error_message
from workbench.panels.export import plotly_pane
from workbench.panels.state import SessionState
from workbench.plots.speed import layer_time_figure, pareto_figure, speed_table

DEFAULT_ENGINES = ["torch", "sparse"]


class SpeedPanel(pn.viewable.Viewer):
    """Latency, throughput, size and accuracy of variants × engines, with a Pareto scatter."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    variants = param.ListSelector(default=[], objects=[], doc="Variants to benchmark.")
    engines = param.ListSelector(default=[], objects=[], doc="Engines to run them on.")
    batch_size = param.Integer(default=1, bounds=(1, 4096), label="Batch size")
    repeats = param.Integer(default=10, bounds=(1, 1000), doc="Timed calls per configuration.")
    threads = param.Integer(default=None, allow_None=True, bounds=(1, 256),
                            doc="CPU threads (empty: torch's current setting).")
    engine_options = param.Dict(default={}, doc="Engine name → extra compile options.")
    run = param.Event(label="Run")
    cancel = param.Event(label="Cancel", doc="Stop before the next variant.")

    result = param.ClassSelector(class_=BenchmarkResult, default=None, allow_None=True,
                                 doc="The rows of the selected variants × engines.")
    detail_variant = param.Selector(default=None, objects=[], allow_None=True, label="Variant")
    detail_engine = param.Selector(default=None, objects=[], allow_None=True, label="Engine")
    layer_report = param.List(default=None, allow_None=True,
                              doc="LayerTime entries of the detail pair (None: not measurable).")
    detail_note = param.String(default="")
    progress = param.Integer(default=0, bounds=(0, 100))
    busy = param.Boolean(default=False)
    error = param.String(default="", doc="Errors of the last run ('' if none).")
    status = param.String(default="", doc="How the last run ended, when not by finishing.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("SpeedPanel needs a SessionState (state=...)")
        self._cache: dict = {}
        self._token: CancelToken | None = None
        names = list(ENGINES.names())
        self.param.engines.objects = names
        if not self.engines:
            self.engines = [e for e in DEFAULT_ENGINES if e in names]
        self._sync_variants()
        if not self.variants:
            self.variants = list(self.state.variants)[:1]

    # --- keeping the choices consistent (effects) --------------------------------------------
    @param.depends("state.revision", watch=True)
    def _sync_variants(self):
        names = list(self.state.variants)
        keep = [n for n in self.variants if n in names]
        self.param.variants.objects = names
        self.variants = keep

    @param.depends("state.session", watch=True)
    def _session_replaced(self):
        """Another session (a reopened workspace): forget the timings of the old one."""
        self.cancel_run()
        self._cache.clear()
        self.param.update(result=None, layer_report=None, detail_note="", error="", status="")

    # --- compute -----------------------------------------------------------------------------
    def _settings(self) -> tuple:
        return (int(self.batch_size), int(self.repeats), self.threads,
                json.dumps(self.engine_options, sort_keys=True, default=str))

    def _key(self, name: str, engine: str) -> tuple:
        return (name, id(self.state.session[name]), engine) + self._settings()

    def _missing(self) -> dict[str, list[str]]:
        """Variant → engines not in the cache for the current settings."""
        todo = {}
        for v in self.variants:
            engines = [e for e in self.engines if self._key(v, e) not in self._cache]
            if engines:
                todo[v] = engines
        return todo

    def _measure(self, name: str, engines: list[str], token: CancelToken | None = None) -> None:
        """Benchmark one variant on ``engines`` (its engines interleaved) into the cache."""
        token = token or CancelToken()
        token.check()
        with on_step(token.check):
            r = benchmark(self.state.session[name], engines, batch_sizes=(self.batch_size,),
                          repeats=self.repeats, warmup=1, threads=self.threads,
                          progress=False, engine_options=self.engine_options)
        for row in r.rows:
            self._cache[self._key(name, row.engine)] = row

    def _collect(self) -> BenchmarkResult:
        rows = [self._cache[self._key(v, e)] for v in self.variants for e in self.engines
                if self._key(v, e) in self._cache]
        settings = {"engines": list(self.engines), "batch_sizes": [int(self.batch_size)],
                    "repeats": int(self.repeats), "warmup": 1, "threads": self.threads}
        return BenchmarkResult(rows, settings)

    def _start(self) -> bool:
        if not self.variants or not self.engines:
            self.error = "Pick at least one variant and one engine."
            return False
        self._token = CancelToken()
        self.param.update(error="", status="", progress=0)
        return True

    @param.depends("cancel", watch=True)
    def cancel_run(self) -> bool:
        """Stop the run in progress before its next variant; False if none runs."""
        if not self.busy or self._token is None or self._token.cancelled:
            return False
        self._token.cancel()
        self.status = "Cancelling after the current variant…"
        return True

    def _cancelled(self) -> None:
        self.param.update(status="Cancelled: the previous result is kept.", progress=0)

    def _finish(self) -> BenchmarkResult:
        result = self._collect()
        failed = [f"**{r.variant}** on **{r.engine}**: {r.error}" for r in result.rows if r.error]
        self.param.update(result=result, progress=100, error="\n\n".join(failed))
        self._sync_detail()
        return result

    def run_now(self) -> BenchmarkResult | None:
        """Benchmark what is selected and not cached yet (blocking); ``None`` on failure."""
        if not self._start():
            return None
        token = self._token
        self.busy = True
        try:
            todo = self._missing()
            for i, (name, engines) in enumerate(todo.items()):
                self._measure(name, engines, token)
                self.progress = int(100 * (i + 1) / len(todo))
        except Cancelled:
            self._cancelled()
            return None
        except Exception as err:  # noqa: BLE001  shown in the panel
            self.error = error_message(err)
            return None
        finally:
            self.busy = False
        return self._finish()

    async def run_async(self) -> BenchmarkResult | None:
        """As :meth:`run_now`, each variant timed in a worker thread (the UI stays live)."""
        if self.busy or not self._start():
            return None
        token = self._token
        self.busy = True
        try:
            loop = asyncio.get_running_loop()
            todo = self._missing()
            for i, (name, engines) in enumerate(todo.items()):
                await loop.run_in_executor(None, partial(self._measure, name, engines, token))
                self.progress = int(100 * (i + 1) / len(todo))
        except Cancelled:
            self._cancelled()
            return None
        except Exception as err:  # noqa: BLE001
            self.error = error_message(err)
            return None
        finally:
            self.busy = False
        return self._finish()

    @param.depends("run", watch=True)
    async def _on_run(self):
        await self.run_async()

    def _sync_detail(self):
        rows = [r for r in (self.result.rows if self.result else []) if r.error is None]
        variants = list(dict.fromkeys(r.variant for r in rows))
        engines = list(dict.fromkeys(r.engine for r in rows))
        v = self.detail_variant if self.detail_variant in variants else (
            variants[-1] if variants else None)
        native = [r.engine for r in rows if r.variant == v and set(r.kernels or {}) - {"torch"}]
        e = self.detail_engine if self.detail_engine in engines else (
            next(iter(native), next((x for x in engines if x != "torch"), engines[0]))
            if engines else None)
        self.param.detail_variant.objects = variants
        self.param.detail_engine.objects = engines
        with param.parameterized.batch_call_watchers(self):
            self.param.update(detail_variant=v, detail_engine=e)
        self._measure_layers()

    @param.depends("detail_variant", "detail_engine", watch=True)
    def _measure_layers(self):
        """Per-layer time of the detail pair (effect: fills layer_report / detail_note)."""
        v, e = self.detail_variant, self.detail_engine
        if v is None or e is None or v not in self.state.session.variants:
            self.param.update(layer_report=None, detail_note="")
            return
        try:
            variant = self.state.session[v]
            cm = compile_variant(variant, e, threads=self.threads,
                                 **self.engine_options.get(e, {}))
            x = _batch(variant.data.x_test, self.batch_size)
            times = layer_times(cm, x, repeats=self.repeats, warmup=1)
        except Exception as err:  # noqa: BLE001
            self.param.update(layer_report=None, detail_note=f"⚠ {error_message(err)}")
            return
        placement = "\n".join(f"| {r.name or '(model)'} | {r.layer} | {r.kernel} | "
                              f"{r.isa or '–'} | {r.reason} |" for r in cm.report.layers)
        notes = "".join(f"\n\n_{n}_" for n in cm.report.notes)
        note = ("| layer | type | kernel | ISA | why |\n|---|---|---|---|---|\n" + placement
                + notes)
        if times is None:
            note = (f"**{e}** runs the whole graph in one call: no per-layer timing.\n\n" + note)
        self.param.update(layer_report=times, detail_note=note)

    # --- derived views -----------------------------------------------------------------------
    @param.depends("result")
    def _pareto(self):
        return pareto_figure(self.result) if self.result and self.result.rows else None

    @param.depends("layer_report")
    def _layers(self):
        if not self.layer_report:
            return None
        return layer_time_figure(self.layer_report, f"Time per layer: {self.detail_variant} on "
                                 f"{self.detail_engine} (batch {self.batch_size})")

    @param.depends("result")
    def _table(self):
        import pandas as pd

        return speed_table(self.result) if self.result else pd.DataFrame()

    def _csv(self):
        return io.StringIO(self._table().to_csv(index=False))

    @param.depends("result")
    def _has_result(self) -> bool:
        return bool(self.result and self.result.rows)

    @param.depends("layer_report")
    def _has_layers(self) -> bool:
        return bool(self.layer_report)

    # --- view --------------------------------------------------------------------------------
    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            w.MultiChoice.from_param(self.param.variants, css_classes=["wb-speed-variants"]),
            w.MultiChoice.from_param(self.param.engines, css_classes=["wb-speed-engines"]),
            w.IntInput.from_param(self.param.batch_size),
            w.IntInput.from_param(self.param.repeats),
            pn.Row(w.Button.from_param(self.param.run, color="primary", loading=self.param.busy,
                                       css_classes=["wb-speed-run"]),
                   w.Button.from_param(self.param.cancel, color="warning", visible=self.param.busy,
                                       css_classes=["wb-cancel"])),
            pn.indicators.Progress(value=self.param.progress, max=100, visible=self.param.busy,
                                   sizing_mode="stretch_width", height=12),
            pn.pane.Markdown(self.param.status, css_classes=["wb-status"]),
            message_alert(self.param.error, "danger", css_classes=["wb-error"]),
            width=340,
        )
        result = pn.Column(
            plotly_pane(self._pareto, "speed-pareto", visible=self._has_result, height=400,
                           sizing_mode="stretch_width"),
            pn.Row(w.Select.from_param(self.param.detail_variant),
                   w.Select.from_param(self.param.detail_engine), visible=self._has_result),
            plotly_pane(self._layers, "speed-layers", visible=self._has_layers, height=380,
                           sizing_mode="stretch_width"),
            pn.pane.Markdown(self.param.detail_note),
            w.Tabulator(self._table, disabled=True, show_index=False, visible=self._has_result,
                        sizing_mode="stretch_width", height=300),
            w.FileDownload(callback=self._csv, filename="speed.csv", label="Download CSV",
                           visible=self._has_result),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, result, sizing_mode="stretch_width")


__all__ = ["SpeedPanel"]

"""The Compare panel: all variants in a table, accuracy-vs-sparsity sweeps, per-layer sparsity.

Examples
--------
>>> import workbench
>>> from workbench.panels.state import SessionState
>>> state = SessionState(session=workbench.Session.default(progress=False))
>>> panel = ComparePanel(state=state)
>>> list(panel.table()["name"])
['base']
>>> panel.param.update(sweep_methods=["magnitude"], sweep_points=3)  # doctest: +ELLIPSIS
<...>
>>> panel.param.trigger("run_sweep")
>>> panel.sweep_result.sparsities.tolist()
[0.0, 0.475, 0.95]

**Cancel** (shown while a sweep runs) stops it after the current point; the previous curve stays.
"""

from __future__ import annotations

import asyncio
import io
from functools import partial

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter

import workbench
from workbench.cancel import Cancelled, CancelToken, on_step
from workbench.errors import ParameterError
from workbench.panels.alerts import message_alert
from workbench.panels.compress import error_message
from workbench.panels.export import plotly_pane
from workbench.panels.state import SessionState
from workbench.plots.compare import layer_sparsity_figure, sweep_figure, variants_scatter
from workbench.preview import previewable
from workbench.sweep import Sweep, sweep

DEFAULT_SWEEP = ("magnitude", "global_magnitude", "random")
PERCENT_COLUMNS = ("accuracy", "sparsity")


class ComparePanel(pn.viewable.Viewer):
    """Compare the session's variants and sweep pruning methods over sparsity."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    sweep_methods = param.ListSelector(default=[], objects=[], label="Methods to sweep")
    sweep_points = param.Integer(default=10, bounds=(2, 40), label="Grid points")
    sweep_max = param.Number(default=0.95, bounds=(0.05, 0.99), step=0.01,
                             label="Highest sparsity")
    run_sweep = param.Event(label="Sweep")
    cancel_sweep = param.Event(label="Cancel",
                               doc="Stop the sweep in progress after its current point.")

    sweep_result = param.ClassSelector(class_=Sweep, default=None, allow_None=True)
    sweep_progress = param.Integer(default=0, bounds=(0, 100))
    sweeping = param.Boolean(default=False)
    error = param.String(default="")
    message = param.String(default="", doc="How the last sweep ended, when not by finishing.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("ComparePanel needs a SessionState (state=...)")
        names = workbench.methods("prune")
        self.param.sweep_methods.objects = names
        if not self.sweep_methods:
            cheap = [m for m in names if previewable("prune", m)]
            self.sweep_methods = [m for m in DEFAULT_SWEEP if m in names] or cheap[:3]
        self._sweeps: dict = {}
        self._token: CancelToken | None = None
        #: Grid points evaluated by the current or last sweep.
        self.points_run = 0

    # --- derivations ---------------------------------------------------------------------------
    @param.depends("state.revision")
    def table(self) -> pd.DataFrame:
        """One row per variant: :meth:`Session.table`."""
        return pd.DataFrame(self.state.session.table())

    def csv(self) -> io.StringIO:
        """The table as CSV (what the download button serves)."""
        buf = io.StringIO()
        self.table().to_csv(buf, index=False)
        buf.seek(0)
        return buf

    def grid(self) -> np.ndarray:
        return np.round(np.linspace(0.0, self.sweep_max, self.sweep_points), 4)

    @param.depends("state.revision", "state.selected")
    def layer_figure(self):
        names = [n for n in self.state.selected if n in self.state.session.variants]
        return layer_sparsity_figure({n: self.state.session[n].metrics for n in names})

    @param.depends("state.revision")
    def scatter_figure(self):
        return variants_scatter(self.state.session.table())

    @param.depends("sweep_result")
    def sweep_plot(self):
        return None if self.sweep_result is None else sweep_figure(self.sweep_result)

    @param.depends("sweep_result")
    def _has_sweep(self) -> bool:
        return self.sweep_result is not None

    @param.depends("sweep_result")
    def _sweep_notes(self) -> str:
        if self.sweep_result is None:
            return ("Choose methods and press **Sweep**: each method prunes the base model at "
                    "every grid point (nothing is added to the variants).")
        if not self.sweep_result.errors:
            return ""
        return "\n".join(f"- **{m}**: {msg}" for m, msg in self.sweep_result.errors.items())

    @param.depends("sweep_methods")
    def _slow_note(self) -> str:
        slow = [m for m in self.sweep_methods if not previewable("prune", m)]
        return (f"{', '.join(slow)} train while they prune: the sweep will take a while."
                if slow else "")

    @param.depends("sweep_methods")
    def _has_slow_note(self) -> bool:
        return bool(self._slow_note())

    # --- sweep (effect) --------------------------------------------------------------------------
    def _sweep_key(self):
        return (tuple(self.sweep_methods), tuple(self.grid().tolist()),
                self.state.session.base)

    @param.depends("run_sweep", watch=True)
    async def _on_sweep(self):
        await self.sweep_async()

    async def sweep_async(self) -> Sweep | None:
        """Run the sweep in a worker thread, updating ``sweep_progress``; cached per settings."""
        if self.sweeping:
            return None
        key = self._sweep_key()
        if key in self._sweeps:
            self.param.update(sweep_result=self._sweeps[key], sweep_progress=100, error="",
                              message="")
            return self.sweep_result
        self._token = token = CancelToken()
        self.points_run = 0
        self.param.update(sweeping=True, sweep_progress=0, error="", message="")
        loop = asyncio.get_running_loop()

        def progress(done, total):
            self.points_run = done
            loop.call_soon_threadsafe(self._set_progress, round(100 * done / total))

        def work(session, methods, grid):
            with on_step(token.check):  # methods that train also stop between their steps
                return sweep(session, methods, grid, callback=token.callback(progress))

        try:
            result = await loop.run_in_executor(None, partial(
                work, self.state.session, list(self.sweep_methods), self.grid()))
        except Cancelled:
            self.message = "Sweep cancelled: the previous curve is kept."
            return None
        except Exception as err:  # noqa: BLE001  shown in the panel
            self.error = error_message(err)
            return None
        finally:
            self.sweeping = False
        self._sweeps[key] = result
        self.param.update(sweep_result=result, sweep_progress=100)
        return result

    def _set_progress(self, value: int) -> None:
        if self.sweeping:
            self.sweep_progress = value

    @param.depends("cancel_sweep", watch=True)
    def cancel(self) -> bool:
        """Stop the sweep in progress after its current point; False if none runs."""
        if not self.sweeping or self._token is None or self._token.cancelled:
            return False
        self._token.cancel()
        self.message = "Cancelling…"
        return True

    @param.depends("state.session", watch=True)
    def _session_replaced(self):
        """Another session (a reopened workspace): the sweeps of the old base do not apply."""
        self.cancel()
        self.param.update(sweep_result=None, error="", message="")

    # --- view ------------------------------------------------------------------------------------
    def __panel__(self):
        w = pn.widgets
        table = w.Tabulator(self.table, disabled=True, show_index=False, layout="fit_data_table",
                            sizing_mode="stretch_width", max_height=320,
                            formatters={c: NumberFormatter(format="0.0%")
                                        for c in PERCENT_COLUMNS},
                            css_classes=["wb-variants-table"])
        download = w.FileDownload(callback=self.csv, filename="workbench-variants.csv",
                                  label="Download CSV", color="light", width=180)
        variants = pn.Column(
            pn.pane.Markdown("### Variants"), table, download,
            plotly_pane(self.scatter_figure, "variants-scatter", height=380,
                        sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        sweep_controls = pn.Column(
            w.MultiChoice.from_param(self.param.sweep_methods),
            w.IntSlider.from_param(self.param.sweep_points),
            w.FloatSlider.from_param(self.param.sweep_max),
            pn.Row(w.Button.from_param(self.param.run_sweep, color="primary",
                                       loading=self.param.sweeping, css_classes=["wb-sweep"]),
                   w.Button.from_param(self.param.cancel_sweep, color="warning",
                                       visible=self.param.sweeping, css_classes=["wb-cancel"])),
            pn.indicators.Progress(value=self.param.sweep_progress, max=100,
                                   visible=self.param.sweeping, sizing_mode="stretch_width",
                                   height=12),
            pn.pane.Alert(self._slow_note, alert_type="warning",
                          visible=self._has_slow_note),
            message_alert(self.param.error, "danger"),
            message_alert(self.param.message, "info"),
            width=320)
        sweeps = pn.Column(
            pn.pane.Markdown("### Accuracy vs sparsity"),
            pn.Row(sweep_controls,
                   pn.Column(plotly_pane(self.sweep_plot, "accuracy-vs-sparsity", height=400,
                                         visible=self._has_sweep, sizing_mode="stretch_width"),
                             pn.pane.Markdown(self._sweep_notes),
                             sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        layers = pn.Column(
            pn.pane.Markdown("### Sparsity per layer"),
            w.MultiChoice.from_param(self.state.param.selected, label="Variants"),
            plotly_pane(self.layer_figure, "sparsity-per-layer", height=380,
                        sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        return pn.Column(variants, sweeps, layers, sizing_mode="stretch_width")


__all__ = ["ComparePanel"]

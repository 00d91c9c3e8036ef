"""What the analysis panels (Landscape, Hessian, Subspace) share: a variant selector, a Run
button, a cache, progress, and errors shown in the panel.

A panel subclasses :class:`AnalysisPanel` and says what to compute in :meth:`~AnalysisPanel.plan`:
a list of :class:`Job` objects, each a call into :mod:`workbench.analysis` with a cache key made
of the variants it reads and the settings it uses. Run executes the jobs one after the other in
a worker thread (the page stays responsive), advancing ``progress``; a job whose key was computed
before is answered from the cache at once. A failing job shows its error in the panel
(``error``) and the other jobs still run. Results are stored in ``results`` (job name → result),
and the subclass derives its figures from them.

**Cancel** (shown while a run is in progress) sets the run's
:class:`~workbench.cancel.CancelToken`: the analysis stops at its next progress step (every job
runs under :func:`workbench.cancel.on_step`), the panel says so in ``status`` (not as an error)
and keeps the results of the previous run. Jobs that finished before the cancel stay cached.
A ``KeyboardInterrupt`` (Ctrl-C in a notebook during :meth:`~AnalysisPanel.run_now`) leaves the
panel idle the same way and is re-raised.

Examples
--------
>>> import workbench
>>> from workbench.analysis import landscape_1d
>>> class Lines(AnalysisPanel):
...     def plan(self):
...         return [Job(("line", n), ("line", self.variant_key(n), 3), f"line through {n}",
...                     lambda done, v=self.state.variant(n): landscape_1d(
...                         v, steps=3, progress=False))
...                 for n in self.variants]
>>> panel = Lines.from_session(workbench.Session.default(progress=False))
>>> panel.variants, sorted(panel.run_now())
(['base'], [('line', 'base')])
>>> panel.run_now()[("line", "base")].loss.shape, panel.cache_hits
((3,), 1)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import panel as pn
import param

from workbench.cancel import Cancelled, CancelToken, on_step
from workbench.errors import ParameterError
from workbench.panels.alerts import message_alert
from workbench.panels.compress import error_message
from workbench.panels.export import with_export
from workbench.panels.state import SessionState
from workbench.session import BASE, Session

log = logging.getLogger(__name__)

#: Results kept per panel (least recently used dropped first).
MAX_CACHE = 64
CONTROLS_WIDTH = 320
CANCELLED = "Cancelled: the previous results are kept."
INTERRUPTED = "Interrupted: the previous results are kept."


@dataclass(frozen=True)
class Job:
    """One computation of a panel.

    Attributes
    ----------
    name : tuple
        What it is, e.g. ``("plane", "magnitude-50")``: the key of its result in ``results``.
    key : tuple
        Cache key: the variants it reads (:meth:`AnalysisPanel.variant_key`) and every setting
        that changes its result.
    label : str
        Shown while it runs.
    fn : callable
        ``fn(done) -> result``, where ``done`` maps the names of the jobs finished so far in this
        run to their results (so a job can use an earlier one's result).
    needs : tuple
        Names of earlier jobs it uses; it is skipped if one of them failed.
    """

    name: tuple
    key: tuple
    label: str
    fn: Callable = field(compare=False)
    needs: tuple = ()


class AnalysisPanel(pn.viewable.Viewer):
    """Base class of panels that run analyses on some of the session's variants."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    variants = param.ListSelector(default=[], objects=[], label="Variants",
                                  doc="The variants to analyse.")
    run = param.Event(label="Run")
    cancel = param.Event(label="Cancel", doc="Stop the run in progress at its next step.")

    results = param.Dict(default={}, doc="Job name → result of the last run.")
    busy = param.Boolean(default=False, doc="A run is in progress.")
    progress = param.Integer(default=0, bounds=(0, 100), doc="Percent of the jobs done.")
    status = param.String(default="", doc="What is running, or how the last run went.")
    error = param.String(default="", doc="Errors of the last run (markdown), '' if none.")

    #: Title shown above the controls.
    title = "Analysis"
    #: What the panel shows before the first run.
    intro = "Choose variants and settings, then press **Run**."

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError(f"{type(self).__name__} needs a SessionState (state=...)")
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._token: CancelToken | None = None
        self.cache_hits = 0
        #: Units of progress (grid points, eigenvalues, corruptions…) of the current or last run.
        self.steps_run = 0
        self._sync_variants()

    @classmethod
    def from_session(cls, session: Session, **params) -> "AnalysisPanel":
        """The panel on its own, with a new :class:`SessionState` around ``session``."""
        return cls(state=SessionState(session=session), **params)

    # --- variants ---------------------------------------------------------------------------
    @param.depends("state.variants", watch=True)
    def _sync_variants(self):
        names = list(self.state.variants)
        keep = [n for n in self.variants if n in names]
        if not keep:
            keep = [n for n in self.state.selected if n in names] or names[:1]
        self.param.variants.objects = names  # a linked widget may reset the value here
        self.variants = keep
        self._evict()
        self.variants_changed(names)

    @param.depends("state.session", watch=True)
    def _session_replaced(self):
        """Another session (a reopened workspace): the old results and cache no longer apply."""
        self.cancel_run()
        with self._lock:
            self._cache.clear()
        self.param.update(results={}, status="", error="", progress=0)

    def variants_changed(self, names: list[str]) -> None:
        """Hook: the session's variant names changed (refresh variant-valued selectors)."""

    def _evict(self) -> None:
        alive = {id(v) for v in self.state.session.variants.values()}
        with self._lock:
            for key in [k for k, (uses, _) in self._cache.items()
                        if any(id(v) not in alive for v in uses)]:
                del self._cache[key]

    def variant_key(self, name: str) -> tuple:
        """``(name, variant)``: a variant as part of a cache key (a rebuilt variant of the same
        name is a different key)."""
        return (name, self.state.variant(name))

    def test_subset(self, name: str, n: int):
        """A seeded, class-stratified subset of ``n`` samples of the test split, as ``(x, y)``."""
        from workbench.data.dataset import stratified_indices

        data = self.state.variant(name).data
        x, y = data.x_test, data.y_test
        if n >= len(y):
            return x, y
        idx = stratified_indices(y, int(n), self.state.session.seed)
        return x[idx], y[idx]

    # --- what to compute (subclasses) -------------------------------------------------------------
    def plan(self) -> list[Job]:
        """The jobs the current settings stand for (raise ParameterError for bad settings)."""
        raise NotImplementedError

    # --- running ----------------------------------------------------------------------------------
    def _execute(self, jobs: list[Job], report: Callable,
                 token: CancelToken | None = None) -> tuple[dict, list[str], int]:
        """Run ``jobs`` (in any thread); ``(results, errors, cached)``.

        Raises :class:`~workbench.cancel.Cancelled` at the first step after ``token`` is set.
        """
        token = token or CancelToken()
        done: dict = {}
        errors: list[str] = []
        cached = 0
        for i, job in enumerate(jobs):
            token.check()
            report(i, len(jobs), job.label)
            if any(n not in done for n in job.needs):
                continue
            with self._lock:
                hit = self._cache.get(job.key)
                if hit is not None:
                    self._cache.move_to_end(job.key)
            if hit is not None:
                done[job.name] = hit[1]
                cached += 1
                continue
            try:
                with on_step(self._count_step), on_step(token.check):
                    result = job.fn(done)
                token.check()  # a job that swallowed the Cancelled of one of its steps
            except Cancelled:
                raise
            except Exception as err:  # noqa: BLE001  shown in the panel, never raised into the UI
                errors.append(f"{job.label}: {error_message(err)}")
                continue
            done[job.name] = result
            uses = tuple(v for v in _flatten(job.key) if _is_variant(v))
            with self._lock:
                self._cache[job.key] = (uses, result)
                while len(self._cache) > MAX_CACHE:
                    self._cache.popitem(last=False)
        report(len(jobs), len(jobs), "")
        return done, errors, cached

    def _count_step(self, n: int) -> None:
        self.steps_run += int(n)

    def _begin(self) -> CancelToken:
        self._token = token = CancelToken()
        self.steps_run = 0
        return token

    def cancel_run(self) -> bool:
        """Ask the run in progress to stop (what the Cancel button does); False if idle."""
        token = self._token
        if not self.busy or token is None or token.cancelled:
            return False
        token.cancel()
        self.status = "Cancelling…"
        return True

    @param.depends("cancel", watch=True)
    def _on_cancel(self):
        self.cancel_run()

    def _stopped(self, status: str) -> dict:
        self.param.update(status=status, error="", progress=0)
        return self.results

    def _plan(self) -> list[Job] | None:
        try:
            return self.plan()
        except Exception as err:  # noqa: BLE001
            self.param.update(error=f"- {error_message(err)}", status="")
            return None

    def _finish(self, jobs, results, errors, cached, seconds) -> dict:
        self.cache_hits += cached
        computed = len(results) - cached
        if not jobs:
            status = "Nothing to compute: select at least one variant."
        else:
            status = (f"{computed} computed, {cached} from the cache" if cached
                      else f"{computed} computed") + f" in {seconds:.1f} s."
        self.param.update(results=results, error="\n".join(f"- {e}" for e in errors),
                          status=status, progress=100)
        return results

    def run_now(self) -> dict:
        """Run the current settings in this thread; the results (also in ``results``)."""
        jobs = self._plan()
        if jobs is None:
            return self.results
        token = self._begin()
        self.param.update(busy=True, progress=0, error="")
        start = time.perf_counter()
        try:
            results, errors, cached = self._execute(jobs, self._report, token)
        except Cancelled:
            return self._stopped(CANCELLED)
        except KeyboardInterrupt:
            self._stopped(INTERRUPTED)
            raise
        finally:
            self.busy = False
        return self._finish(jobs, results, errors, cached, time.perf_counter() - start)

    async def run_async(self) -> dict | None:
        """As :meth:`run_now`, but computes in a worker thread (the UI stays live)."""
        if self.busy:
            return None
        jobs = self._plan()
        if jobs is None:
            return None
        token = self._begin()
        self.param.update(busy=True, progress=0, error="", status="Starting…")
        loop = asyncio.get_running_loop()

        def report(done, total, label):
            loop.call_soon_threadsafe(self._report, done, total, label)

        start = time.perf_counter()
        try:
            results, errors, cached = await loop.run_in_executor(
                None, partial(self._execute, jobs, report, token))
        except Cancelled:
            self._stopped(CANCELLED)
            return None
        except Exception as err:  # noqa: BLE001  (a bug in the machinery, still shown)
            self.param.update(error=f"- {error_message(err)}", status="")
            return None
        finally:
            self.busy = False
        return self._finish(jobs, results, errors, cached, time.perf_counter() - start)

    def _report(self, done: int, total: int, label: str) -> None:
        if self._token is not None and self._token.cancelled:
            return  # keep "Cancelling…" until the run has stopped
        pct = round(100 * done / total) if total else 100
        self.param.update(progress=pct, status=f"{label} ({done + 1}/{total})…" if label else "")

    @param.depends("run", watch=True)
    async def _on_run(self):
        await self.run_async()

    # --- display helpers ---------------------------------------------------------------------
    def outputs(self):
        """The result view (subclasses): a Panel object derived from ``results``."""
        raise NotImplementedError

    def exportable(self, figure, **kwargs) -> pn.Column:
        """A Plotly pane of ``figure`` (a figure or a reactive method) with its export menu.

        Uses the subclass's ``plotly(figure, **kwargs)`` if it has one (e.g. clicks that select
        samples); files are named ``<panel>-<method name without _figure>``.
        """
        make = getattr(self, "plotly", None) or partial(pn.pane.Plotly)
        name = getattr(figure, "__name__", "figure").removesuffix("_figure")
        prefix = type(self).__name__.removesuffix("Panel").lower()
        return with_export(make(figure, **kwargs), f"{prefix}-{name}")

    def controls(self) -> list:
        """The settings widgets (subclasses), shown between the variants and the Run button."""
        return []

    @param.depends("progress")
    def _progress_value(self) -> int:
        """The bar's value: indeterminate (-1) until the first job is done."""
        return self.progress if self.progress > 0 else -1

    @param.depends("results", "busy")
    def _intro(self) -> str:
        return "" if self.results or self.busy else self.intro

    @param.depends("results", "busy")
    def _has_intro(self) -> bool:
        return not self.results and not self.busy

    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            pn.pane.Markdown(f"### {self.title}", margin=(0, 10)),
            w.MultiChoice.from_param(self.param.variants, sizing_mode="stretch_width"),
            *self.controls(),
            pn.Row(w.Button.from_param(self.param.run, color="primary", loading=self.param.busy,
                                       css_classes=["wb-run"]),
                   w.Button.from_param(self.param.cancel, color="warning", visible=self.param.busy,
                                       css_classes=["wb-cancel"])),
            pn.indicators.Progress(value=self._progress_value, max=100, active=self.param.busy,
                                   visible=self.param.busy, sizing_mode="stretch_width",
                                   height=12, css_classes=["wb-progress"]),
            pn.pane.Markdown(self.param.status, css_classes=["wb-status"], margin=(0, 10)),
            message_alert(self.param.error, "danger", css_classes=["wb-error"]),
            width=CONTROLS_WIDTH,
        )
        body = pn.Column(pn.pane.Alert(self._intro, alert_type="info", visible=self._has_intro),
                         self.outputs, sizing_mode="stretch_width")
        return pn.Row(controls, body, sizing_mode="stretch_width")


def _flatten(key):
    for k in key:
        if isinstance(k, tuple):
            yield from _flatten(k)
        else:
            yield k


def _is_variant(obj) -> bool:
    from workbench.session import Variant

    return isinstance(obj, Variant)


def variant_options(state: SessionState) -> list[str]:
    """The session's variant names (``'base'`` first)."""
    return list(state.variants) or [BASE]


__all__ = ["AnalysisPanel", "Job", "variant_options"]

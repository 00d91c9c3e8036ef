"""One selected sample, shared by the Geometry, Relevance and Robustness panels, and the view
that shows it in every variant.

:class:`SampleSelection` (plain ``param``, no Panel) holds the selected test-sample ``index``
and the per-sample results the panels *publish* after each run (a :class:`Record`: which samples
a result covers, and the result). A click on a point of a geometry scatter or embedding, on a
cell of the relevance grid or the SampleGrid widget, or on a row of the robustness flips table
sets ``index``; :class:`SampleView` follows it and shows, for every chosen variant, the image,
the prediction, the sample's geometry (angle, length, margin), its relevance map and which
corruptions flip it. Values come from the published results when they cover the sample (so
they equal what the panels show); geometry and relevance of other samples are computed for that
one sample on demand (cheap, cached), corruption outcomes only come from a Robustness run (the
corruption noise depends on the sample's position in the evaluated batch).

Dashboard panels find their shared selection with :func:`shared_selection` (one per
:class:`~workbench.panels.state.SessionState`). :class:`SampleAnalysisPanel` is the base of the
three panels: an :class:`~workbench.panels.analysis_base.AnalysisPanel` on the first ``samples``
of a fixed class-stratified order of the test split (the same samples in every panel, nested as
``samples`` grows), that publishes its results and turns plot clicks into selections.

Examples
--------
>>> import workbench
>>> from workbench.panels.state import SessionState
>>> state = SessionState(session=workbench.Session.default(progress=False))
>>> selection = shared_selection(state)
>>> view = SampleView(state=state, selection=selection, variants=["base"])
>>> selection.select(5, source="notebook")
>>> info = view.info()
>>> info.index, info.label == int(state.session.data.y_test[5]), info.rows[0].source["geometry"]
(5, True, 'this sample')
>>> shared_selection(state) is selection
True
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import panel as pn
import param
import torch

from workbench.errors import ParameterError
from workbench.panels.analysis_base import AnalysisPanel, Job
from workbench.panels.compress import error_message
from workbench.panels.export import plotly_pane
from workbench.panels.state import SessionState
from workbench.session import BASE, Session

KINDS = ("geometry", "relevance", "corruption")


# --- the shared selection (no Panel) -------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Record:
    """A published per-sample result.

    Attributes
    ----------
    kind : str
        ``"geometry"`` (a Geometry), ``"relevance"`` (an Attribution) or ``"corruption"`` (a
        CorruptionResult).
    name : str
        The variant's name.
    variant : Variant
        The variant object it was computed on (a rebuilt variant of the same name is stale).
    indices : np.ndarray of int
        Test-split index of each row of the result.
    result : object
    source : str
        The panel that published it.
    """

    kind: str
    name: str
    variant: object = field(repr=False)
    indices: np.ndarray = field(repr=False)
    result: object = field(repr=False)
    source: str = ""

    def position(self, index: int | None) -> int | None:
        """The row of test sample ``index`` in the result, or ``None``."""
        if index is None:
            return None
        hit = np.flatnonzero(np.asarray(self.indices) == int(index))
        return int(hit[0]) if len(hit) else None


class SampleSelection(param.Parameterized):
    """The selected test sample and the per-sample results the panels published."""

    index = param.Integer(default=None, allow_None=True, bounds=(0, None),
                          doc="Index of the selected sample in the test split (None: none).")
    source = param.String(default="", doc="The view the selection was made in.")
    records = param.Dict(default={}, doc="(kind, variant name) → Record.")

    def __init__(self, **params):
        super().__init__(**params)
        self.cache: dict = {}  # per-sample values computed on demand (shared by all views)
        self._lock = threading.Lock()

    def select(self, index: int | None, source: str = "") -> None:
        """Select test sample ``index`` (``None`` clears)."""
        self.param.update(index=None if index is None else int(index), source=source)

    def publish(self, kind: str, name: str, variant, indices, result, source: str = "") -> None:
        """Make ``result`` (rows = test samples ``indices``) of variant ``name`` available."""
        if kind not in KINDS:
            raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")
        rec = Record(kind, name, variant, np.asarray(indices).astype(int), result, source)
        self.records = {**self.records, (kind, name): rec}

    def publish_many(self, records: list[Record]) -> None:
        """Publish several records with one update (views refresh once)."""
        if records:
            self.records = {**self.records, **{(r.kind, r.name): r for r in records}}

    def record(self, kind: str, name: str, variant=None) -> Record | None:
        """The published record, if any (and, with ``variant``, only if made from it)."""
        rec = self.records.get((kind, name))
        if rec is None or (variant is not None and rec.variant is not variant):
            return None
        return rec

    def clear(self) -> None:
        """Forget the selection, the records and the cache (e.g. for a new session)."""
        self.cache.clear()
        self.param.update(index=None, source="", records={})


_SELECTIONS: "weakref.WeakKeyDictionary[SessionState, SampleSelection]" = \
    weakref.WeakKeyDictionary()


def shared_selection(state: SessionState) -> SampleSelection:
    """The :class:`SampleSelection` of a dashboard state (created on first use; cleared when
    the state's session is replaced)."""
    sel = _SELECTIONS.get(state)
    if sel is None:
        sel = _SELECTIONS[state] = SampleSelection()
        ref = weakref.ref(sel)
        state.param.watch(lambda _e: ref() is not None and ref().clear(), "session")
    return sel


# --- what the view shows (pure) ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class VariantSample:
    """One variant's view of the selected sample.

    ``source`` names where each value came from: the panel that published it, ``"this
    sample"`` (computed on demand) or ``""`` (not available).
    """

    name: str
    prediction: int
    angle: float = float("nan")
    length: float = float("nan")
    margin: float = float("nan")
    relevance: np.ndarray | None = field(default=None, repr=False)
    flags: object = field(default=None, repr=False)
    position: int | None = None
    source: dict = field(default_factory=dict)

    @property
    def flips(self) -> list[tuple[str, int]]:
        """``(corruption, lowest flipping severity)`` for each corruption that flips it."""
        if self.flags is None:
            return []
        first = np.asarray(self.flags.first_flip)[:, self.position]
        return [(c, int(s)) for c, s in zip(self.flags.corruptions, first) if s > 0]


@dataclass(frozen=True, eq=False)
class SampleInfo:
    """The selected sample across variants: image, label and one :class:`VariantSample` each."""

    index: int
    label: int
    image: np.ndarray = field(repr=False)
    rows: tuple = ()
    notes: tuple = ()

    def table(self) -> pd.DataFrame:
        """One row per variant: prediction, correctness, angle, length, margin, flips."""
        return pd.DataFrame([{
            "variant": r.name, "prediction": r.prediction, "correct": r.prediction == self.label,
            "angle (°)": r.angle, "length": r.length, "margin": r.margin,
            "flipped by": ", ".join(f"{c} ≥{s}" for c, s in r.flips) if r.flags is not None
            else "", "geometry from": r.source.get("geometry", "")}
            for r in self.rows])


def _flags_of(selection: SampleSelection, rec: Record):
    from workbench.analysis.robustness import sample_flags

    return _cached(selection, ("flags", rec.result), lambda: sample_flags(rec.result))


#: Per-sample values a selection keeps (oldest dropped first).
MAX_CACHE = 512


def _cached(selection: SampleSelection, key, fn):
    """``fn()`` cached in ``selection.cache`` under ``key`` (keys hold the variant object, so a
    rebuilt variant of the same name is computed afresh)."""
    with selection._lock:
        if key in selection.cache:
            return selection.cache[key]
    value = fn()
    with selection._lock:
        selection.cache[key] = value
        while len(selection.cache) > MAX_CACHE:
            selection.cache.pop(next(iter(selection.cache)))
    return value


def sample_info(session: Session, selection: SampleSelection, variants, index: int, *,
                compute: bool = True) -> SampleInfo:
    """What :class:`SampleView` shows for test sample ``index`` in ``variants``.

    Published records that cover the sample are used as they are; with ``compute`` the
    geometry and the LRP relevance (of the true class) of the sample alone are computed for
    the variants without a record (cached in ``selection.cache``).

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> info = sample_info(s, SampleSelection(), ["base"], 3)
    >>> info.rows[0].relevance.shape, info.rows[0].source["relevance"]
    ((8, 8), 'this sample')
    """
    data = session.data
    n = len(data.y_test)
    if not 0 <= int(index) < n:
        raise ParameterError(f"sample index {index} is outside the test split (0..{n - 1})")
    index = int(index)
    x, y = data.x_test[index:index + 1], data.y_test[index:index + 1]
    label = int(y[0])
    rows, notes = [], []
    missing = {"geometry": [], "relevance": [], "corruption": []}
    for name in variants:
        v = session[name]
        src, vals = {}, {}
        rec = selection.record("geometry", name, v)
        pos = None if rec is None else rec.position(index)
        if pos is not None:
            g, src["geometry"] = rec.result, rec.source or "published"
        elif compute:
            from workbench.analysis.geometry import feature_geometry

            g = _cached(selection, ("geometry", v, index),
                        lambda v=v: feature_geometry(v, x, y))
            pos, src["geometry"] = 0, "this sample"
        else:
            g = None
            missing["geometry"].append(name)
        if g is not None:
            vals = dict(angle=float(g.angle[pos]), length=float(g.length[pos]),
                        margin=float(g.margin[pos]), prediction=int(g.predictions[pos]))
        else:
            from workbench.evaluate import predict_logits

            vals = dict(prediction=int(predict_logits(v.model, x).argmax(1)[0]))
        rec = selection.record("relevance", name, v)
        rpos = None if rec is None else rec.position(index)
        relevance = None
        if rpos is not None:
            relevance, src["relevance"] = _map2d(rec.result.maps[rpos]), rec.source or "published"
        elif compute:
            from workbench.relevance import relevance as lrp

            relevance = _cached(selection, ("relevance", v, index),
                                lambda v=v: _map2d(lrp(v.model, x, target=label).maps[0]))
            src["relevance"] = "this sample"
        else:
            missing["relevance"].append(name)
        rec = selection.record("corruption", name, v)
        cpos = None if rec is None else rec.position(index)
        flags = None
        if cpos is not None:
            flags, src["corruption"] = _flags_of(selection, rec), rec.source or "published"
        else:
            missing["corruption"].append(name)
        rows.append(VariantSample(name, vals.pop("prediction"), **vals, relevance=relevance,
                                  flags=flags, position=cpos, source=src))
    if missing["corruption"]:
        notes.append(f"Corruption outcomes of {', '.join(missing['corruption'])}: run the "
                     "Robustness panel on these variants (with this sample among its samples).")
    for kind in ("geometry", "relevance"):
        if missing[kind]:
            notes.append(f"No {kind} for {', '.join(missing[kind])} yet: run the "
                         f"{kind.capitalize()} panel, or turn on *compute for this sample*.")
    return SampleInfo(index, label, data.x_test[index].numpy(), tuple(rows), tuple(notes))


def _map2d(m) -> np.ndarray:
    m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    return m.sum(0) if m.ndim == 3 else m


# --- the view ------------------------------------------------------------------------------------
class SampleView(pn.viewable.Viewer):
    """The selected sample in every chosen variant: image, prediction, geometry, relevance and
    the corruptions that flip it."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    selection = param.ClassSelector(class_=SampleSelection, doc="The shared sample selection.")
    variants = param.ListSelector(default=[], objects=[], label="Variants")
    compute = param.Boolean(default=True, label="Compute for this sample",
                            doc="Compute geometry and relevance of a sample no run covered.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("SampleView needs a SessionState (state=...)")
        if self.selection is None:
            self.selection = shared_selection(self.state)
        self._memo = (None, None)
        self._sync()

    @classmethod
    def from_session(cls, session: Session, **params) -> "SampleView":
        """The view on its own, with a new state around ``session``."""
        return cls(state=SessionState(session=session), **params)

    @param.depends("state.variants", watch=True)
    def _sync(self):
        names = list(self.state.variants)
        keep = [n for n in self.variants if n in names] or \
            [n for n in self.state.selected if n in names] or names[:1]
        self.param.variants.objects = names
        self.variants = keep

    # --- derivations ------------------------------------------------------------------------
    def _outcome(self) -> tuple[SampleInfo | None, str]:
        """``(info, error message)`` of the current selection, computed once per state."""
        index = self.selection.index
        if index is None:
            return None, ""
        key = (index, tuple(self.variants), self.selection.records, self.compute,
               self.state.revision)
        if self._memo[0] is not None and self._memo[0] == key:  # records compare by identity
            return self._memo[1]
        try:
            out = (sample_info(self.state.session, self.selection, self.variants, index,
                               compute=self.compute), "")
        except Exception as err:  # noqa: BLE001  shown in the view
            out = (None, error_message(err))
        self._memo = (key, out)
        return out

    @param.depends("selection.index", "selection.records", "variants", "compute",
                   "state.revision")
    def info(self) -> SampleInfo | None:
        """The selected sample's :class:`SampleInfo` (``None``: nothing selected, or an error:
        see :meth:`error`)."""
        return self._outcome()[0]

    @param.depends("info")
    def error(self) -> str:
        """Why the selected sample cannot be shown ('' if it can)."""
        return self._outcome()[1]

    @param.depends("info")
    def header(self) -> str:
        info = self.info()
        if info is None:
            return ("Select a sample: click a point in a geometry plot or embedding, a cell of "
                    "the relevance grid, a row of the flips table, or type an index.")
        classes = self.state.session.data.classes
        src = f" · selected in {self.selection.source}" if self.selection.source else ""
        return f"#### Sample {info.index} · class {classes[info.label]}{src}"

    @param.depends("info")
    def table(self) -> pd.DataFrame:
        info = self.info()
        return pd.DataFrame() if info is None else info.table()

    @param.depends("info")
    def relevance_figure(self):
        from workbench.plots.relevance import relevance_grid_figure

        info = self.info()
        if info is None or info.image.ndim != 3:  # images only (C, H, W)
            return None
        maps = {r.name: r.relevance[None] for r in info.rows
                if r.relevance is not None and r.relevance.ndim == 2}
        if not maps:
            maps = {"(no relevance)": np.zeros((1,) + info.image.shape[-2:])}
        return relevance_grid_figure(maps, indices=[info.index], images=info.image[None],
                                     labels=[info.label], transpose=True, cell=110,
                                     predictions={r.name: [r.prediction] for r in info.rows},
                                     title="Input and relevance per variant")

    @param.depends("info")
    def outcomes_figure(self):
        from workbench.plots.robustness import outcomes_figure

        info = self.info()
        rows = [] if info is None else [r for r in info.rows if r.flags is not None]
        if not rows:
            return None
        return outcomes_figure({r.name: r.flags for r in rows},
                               {r.name: r.position for r in rows})

    @param.depends("info")
    def _has_outcomes(self) -> bool:
        info = self.info()
        return info is not None and any(r.flags is not None for r in info.rows)

    @param.depends("info")
    def _has_info(self) -> bool:
        return self.info() is not None

    @param.depends("info")
    def _has_image(self) -> bool:
        info = self.info()
        return info is not None and info.image.ndim == 3

    @param.depends("info")
    def notes(self) -> str:
        info = self.info()
        return "" if info is None else "\n".join(f"- {n}" for n in info.notes)

    @param.depends("info")
    def _has_error(self) -> bool:
        return bool(self.error())

    def __panel__(self):
        w = pn.widgets
        return pn.Column(
            pn.pane.Markdown("### Sample view", margin=(0, 10)),
            pn.FlexBox(w.IntInput.from_param(self.selection.param.index, name="Sample index",
                                             width=140),
                       w.MultiChoice.from_param(self.param.variants, width=260),
                       w.Checkbox.from_param(self.param.compute, margin=(28, 10))),
            pn.pane.Alert(self.error, alert_type="danger", visible=self._has_error),
            pn.pane.Markdown(self.header),
            pn.pane.DataFrame(self.table, index=False, float_format="{:.3f}".format,
                              visible=self._has_info, sizing_mode="stretch_width"),
            plotly_pane(self.relevance_figure, "sample-relevance", visible=self._has_image),
            plotly_pane(self.outcomes_figure, "sample-outcomes", visible=self._has_outcomes,
                        sizing_mode="stretch_width"),
            pn.pane.Markdown(self.notes),
            sizing_mode="stretch_width", css_classes=["wb-sample-view"])


# --- base of the linked analysis panels -----------------------------------------------------------
class SampleAnalysisPanel(AnalysisPanel):
    """An analysis panel on test samples that shares the selected sample with the others.

    Subclasses set :attr:`publishes` (job kind → record kind) and build their jobs on
    :meth:`sample_data`; figures made with :meth:`plotly` turn clicks on points whose
    ``customdata`` is a sample index into selections.
    """

    selection = param.ClassSelector(class_=SampleSelection, doc="The shared sample selection.")
    samples = param.Integer(default=200, bounds=(2, None), label="Samples",
                            doc="Test samples used (the first of a fixed class-stratified "
                                "order: the same samples in every panel).")

    #: Job kind (first element of a job name) → record kind published to the selection.
    publishes: dict = {}

    def __init__(self, **params):
        super().__init__(**params)
        if self.selection is None:
            self.selection = shared_selection(self.state)
        self.sample_view = SampleView(state=self.state, selection=self.selection,
                                      variants=list(self.variants))
        self.param.watch(self._variants_to_view, "variants")

    def _variants_to_view(self, event):
        view = getattr(self, "sample_view", None)
        if view is not None:
            view.variants = [n for n in event.new if n in view.param.variants.objects]

    # --- samples ----------------------------------------------------------------------------
    def sample_indices(self) -> np.ndarray:
        """Test-split indices of the samples a run uses (sorted)."""
        from workbench.data.dataset import stratified_indices

        y = self.state.session.data.y_test
        n = min(int(self.samples), len(y))
        return stratified_indices(y, n, self.state.session.seed).numpy()

    def sample_data(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """``(indices, x, y)`` of the samples a run uses."""
        idx = self.sample_indices()
        data = self.state.session.data
        t = torch.as_tensor(idx)
        return idx, data.x_test[t], data.y_test[t]

    def indices_job(self, idx: np.ndarray) -> Job:
        """A job whose result is the run's sample indices (read back by the views)."""
        return Job(("indices",), ("indices", self.variant_key(BASE), tuple(idx.tolist())),
                   "choosing samples", lambda done: idx)

    @property
    def indices(self) -> np.ndarray | None:
        """The sample indices of the current results (``None`` before a run)."""
        return self.results.get(("indices",))

    # --- publishing and selecting --------------------------------------------------------------
    @param.depends("results", watch=True)
    def _publish(self):
        idx = self.indices
        if idx is None:
            return
        records = []
        for key, result in self.results.items():
            kind = self.publishes.get(key[0])
            if kind is None or len(key) < 2 or key[1] not in self.state.session.variants:
                continue
            records.append(Record(kind, key[1], self.state.variant(key[1]), np.asarray(idx),
                                  result, self.title))
        self.selection.publish_many(records)

    def select_sample(self, index: int | None) -> None:
        """Select test sample ``index`` in every linked view."""
        self.selection.select(index, source=self.title)

    def on_click(self, event) -> None:
        """Plotly ``click_data`` → selection (points carry the sample index as customdata)."""
        data = event.new if hasattr(event, "new") else event
        points = (data or {}).get("points") or []
        for p in points:
            idx = p.get("customdata")
            if isinstance(idx, (list, tuple)):
                idx = idx[0] if idx else None
            if isinstance(idx, (int, float, np.integer)) and not isinstance(idx, bool):
                self.select_sample(int(idx))
                return

    def plotly(self, figure, **kwargs) -> pn.pane.Plotly:
        """A Plotly pane of ``figure`` (a figure or a reactive method) whose clicks select."""
        kwargs.setdefault("sizing_mode", "stretch_width")
        pane = pn.pane.Plotly(figure, **kwargs)
        pane.param.watch(self.on_click, "click_data")
        return pane

    def outputs_with_samples(self, *items):
        """``items`` followed by the sample view."""
        # An <hr>, not pn.layout.Divider: a Divider added to a page after its first render keeps
        # its stylesheet's CDN URL (Panel rewrites it to the local copy only at first render).
        rule = pn.pane.HTML("<hr style='border: none; border-top: 1px solid #ddd'>",
                            sizing_mode="stretch_width", margin=(5, 10))
        return pn.Column(*items, rule, self.sample_view, sizing_mode="stretch_width")


__all__ = ["SampleSelection", "Record", "shared_selection", "SampleInfo", "VariantSample",
           "sample_info", "SampleView", "SampleAnalysisPanel"]

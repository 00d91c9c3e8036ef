"""The dashboard: model and data info, the variant manager, and one tab per panel.

Tabs are registered in :data:`TABS`; adding one is a single line::

    register_tab("Landscape", "workbench.panels.landscape:LandscapePanel")

A tab factory (a class or callable, or a ``"module:attribute"`` string imported on first use) is
called as ``factory(state=state)`` with the dashboard's shared
:class:`~workbench.panels.state.SessionState`. A tab that fails to build shows its error instead
of breaking the dashboard.

Tabs are built lazily: a new dashboard (a new visitor of ``workbench serve``) builds only the
first tab; the others are built when first opened, and stay (hidden, not torn down) afterwards,
so a figure that updates in a hidden tab never updates a torn-down Plotly view.

Examples
--------
>>> import workbench
>>> dash = Dashboard(session=workbench.Session.default(progress=False))
>>> [title for title, _ in TABS][:2]
['Compress', 'Compare']
>>> type(dash.template()).__name__
'FastListTemplate'
"""

from __future__ import annotations

import panel as pn
import param

from workbench.errors import ParameterError
from workbench.panels.offline import OfflineFast, serve_locally
from workbench.panels.state import SessionState
from workbench.panels.tabviews import TabFactory, TabViews, failed_tab
from workbench.panels.variants import VariantManager
from workbench.session import Session

TABS: list[tuple[str, TabFactory]] = [
    ("Compress", "workbench.panels.compress:CompressPanel"),
    ("Compare", "workbench.panels.compare:ComparePanel"),
    ("Landscape", "workbench.panels.landscape:LandscapePanel"),
    ("Hessian", "workbench.panels.hessian:HessianPanel"),
    ("Subspace", "workbench.panels.subspace:SubspacePanel"),
    ("Geometry", "workbench.panels.geometry:GeometryPanel"),
    ("Relevance", "workbench.panels.relevance:RelevancePanel"),
    ("Robustness", "workbench.panels.robustness:RobustnessPanel"),
    ("Speed", "workbench.panels.speed:SpeedPanel"),
]

EXTENSIONS = ("plotly", "tabulator")
# Tab headers wrap onto a second row on narrow screens; Bokeh's default scrolls them sideways
# with a hidden scrollbar, so the last tabs were out of reach at 1024 px.
TAB_HEADERS_WRAP = ".bk-headers-wrapper { flex-wrap: wrap; }"


def register_tab(title: str, factory: TabFactory, *, replace: bool = False) -> None:
    """Add a dashboard tab (``factory(state=state)`` builds its view)."""
    titles = [t for t, _ in TABS]
    if title in titles:
        if not replace:
            raise ParameterError(f"a dashboard tab titled {title!r} exists already")
        TABS[titles.index(title)] = (title, factory)
    else:
        TABS.append((title, factory))


def load_extensions() -> None:
    """Load the Panel extensions the dashboard uses (plotly, tabulator) into the page/notebook.

    In a notebook the JavaScript is embedded (``inline``) so the dashboard renders without
    internet; a server serves it from its own ``static/`` files instead (:func:`serve_locally`).
    """
    doc = pn.state.curdoc
    served = doc is not None and doc.session_context is not None
    pn.extension(*EXTENSIONS, notifications=False, inline=not served)


class Dashboard(pn.viewable.Viewer):
    """All panels of a session, sharing one state.

    Display it in a notebook cell (``session.dashboard()``); :meth:`template` gives the
    full-page version that ``workbench serve`` and ``panel serve`` show.
    """

    session = param.ClassSelector(class_=Session, doc="The session to work on.")
    title = param.String(default="workbench")

    def __init__(self, **params):
        super().__init__(**params)
        if self.session is None:
            raise ParameterError("Dashboard needs a session: Dashboard(session=...)")
        load_extensions()
        self.state = SessionState(session=self.session)
        self.manager = VariantManager(state=self.state)
        self.tabs = TabViews(TABS, state=self.state)  # title -> view, built on first access
        self._slots = {title: pn.Column(pn.pane.Markdown(f"Loading the {title} tab …"),
                                        sizing_mode="stretch_width", css_classes=["wb-tab-slot"])
                       for title in self.tabs}
        self._shown: set[str] = set()
        # Open in the sidebar's workspace box replaces the state's session: follow it
        self.state.param.watch(self._state_session_changed, "session")

    @param.depends("session", watch=True)
    def _session_changed(self):
        if self.state.session is not self.session:
            self.state.session = self.session

    def _state_session_changed(self, event):
        if self.session is not event.new:
            self.session = event.new

    def show_tab(self, title: str) -> None:
        """Build the ``title`` tab's view into its slot, once (done on the tab's first opening)."""
        if title in self._shown:
            return
        self._shown.add(title)
        try:
            view = pn.panel(self.tabs[title])  # a Viewer's __panel__ runs here
        except Exception as err:  # noqa: BLE001  one broken tab must not break the dashboard
            view = failed_tab(title, err)
        self._slots[title].objects = [view]

    # --- views ------------------------------------------------------------------------------------
    @param.depends("state.revision")
    def info(self) -> str:
        """Model and data summary (markdown)."""
        s = self.state.session
        d, base = s.data, s.base.metrics
        model = s.info()["model"]
        if isinstance(model, dict):
            model = model.get("name") or model.get("arch") or "model"
        shape = "×".join(map(str, d.input_shape))
        return "\n".join([
            "### Model & data",
            f"- **model** {model} · {base.params:,} parameters",
            f"- **data** {d.name} · input {shape} · {d.num_classes} classes",
            f"- **split** train {len(d.y_train):,} · val {len(d.y_val):,} · test {len(d.y_test):,}",
            f"- **base accuracy** {100 * base.accuracy:.1f}%",
            f"- **variants** {len(s.variants)}",
        ])

    def _sidebar(self) -> list:
        return [pn.pane.Markdown(self.info, css_classes=["wb-info"]), self.manager]

    def _tabs(self) -> pn.Tabs:
        # Not dynamic=True: that tears a tab's views down when it is hidden, and a Plotly view
        # torn down while it renders raises in the page. Lazy slots keep the cost of a new page.
        tabs = pn.Tabs(*self._slots.items(), sizing_mode="stretch_width",
                       css_classes=["wb-tabs"], stylesheets=[TAB_HEADERS_WRAP])
        titles = list(self._slots)

        def opened(event):
            if 0 <= event.new < len(titles):
                self.show_tab(titles[event.new])

        tabs.param.watch(opened, "active")
        if titles:
            self.show_tab(titles[max(tabs.active, 0)])
        return tabs

    def __panel__(self):
        return pn.Row(pn.Column(*self._sidebar(), width=330), self._tabs(),
                      sizing_mode="stretch_width")

    def template(self) -> pn.template.FastListTemplate:
        """The full-page version (for ``workbench serve`` / ``panel serve``)."""
        return pn.template.FastListTemplate(title=self.title, sidebar=self._sidebar(),
                                            main=[self._tabs()], sidebar_width=340,
                                            design=OfflineFast)

    def servable(self, title: str | None = None, location=True, area: str = "main",
                 target: str | None = None):
        """The template when served (``panel serve``), the inline dashboard in a notebook."""
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:  # a server session
            serve_locally()  # `panel serve`: Panel's files from this server, not its CDN
            return self.template().servable(title=title or self.title, location=location)
        return self


__all__ = ["Dashboard", "TABS", "register_tab", "load_extensions"]

"""Figure export: HTML, PNG and SVG of a figure of every panel, and the offline fallback."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from workbench.panels import export
from workbench.panels.compare import ComparePanel
from workbench.panels.export import (ExportError, FigureExport, export_menus, figure_html,
                                     image_export_problem, plotly_pane)
from workbench.panels.geometry import GeometryPanel
from workbench.panels.hessian import HessianPanel
from workbench.panels.landscape import LandscapePanel
from workbench.panels.relevance import RelevancePanel
from workbench.panels.robustness import RobustnessPanel
from workbench.panels.speed import SpeedPanel
from workbench.panels.state import SessionState
from workbench.panels.subspace import SubspacePanel

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def renderer():
    """One Chromium for the module's renders (kaleido otherwise starts one per image)."""
    import kaleido

    assert image_export_problem() == "", image_export_problem()
    kaleido.start_sync_server(silence_warnings=True)
    yield
    kaleido.stop_sync_server(silence_warnings=True)


@pytest.fixture(scope="module")
def state(default_session):
    import workbench

    session = workbench.Session(default_session.base.model, default_session.data)
    session.prune("magnitude", sparsity=0.8)
    return SessionState(session=session)


def trace_json(fig) -> str:
    """The figure's data exactly as plotly writes it into an HTML page."""
    return pio.json.to_json_plotly(fig.to_plotly_json()["data"])


def check_menu(menu: FigureExport) -> None:
    fig = menu.figure()
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    html = menu.download("html").read()
    assert html.startswith(b"<!doctype html>") and trace_json(fig).encode() in html
    assert b'<script src="http' not in html  # plotly.js inlined: the page opens offline
    assert len(html) > 1_000_000
    png = menu.download("png").read()
    assert png.startswith(PNG) and len(png) > 1000
    svg = menu.download("svg").read()
    assert svg.lstrip().startswith(b"<svg") and svg.rstrip().endswith(b"</svg>")
    assert menu.message == ""


def built(panel):
    """The panel's view with its outputs evaluated (what the browser would show)."""
    view = panel.__panel__()
    menus = export_menus(view)
    if hasattr(panel, "outputs"):
        menus += export_menus(panel.outputs())
    return [m for m in menus if m.figure() is not None]


PANELS = {
    "compare": lambda s: ComparePanel(state=s),
    "speed": lambda s: SpeedPanel(state=s, engines=["torch"], repeats=2),
    "landscape": lambda s: LandscapePanel(state=s, steps=3, samples=32),
    "hessian": lambda s: HessianPanel(state=s, k=1, trace_samples=0, density=False, samples=32),
    "subspace": lambda s: SubspacePanel(state=s, analyses=["spectra"], samples=32,
                                        variants=["base"]),
    "geometry": lambda s: GeometryPanel(state=s, samples=20),
    "relevance": lambda s: RelevancePanel(state=s, samples=2),
    "robustness": lambda s: RobustnessPanel(state=s, samples=16, corruptions=["rotate"],
                                            severities=[1]),
}


@pytest.mark.parametrize("name", list(PANELS))
def test_every_panel_exports_its_figures_as_html_png_and_svg(name, state, renderer):
    panel = PANELS[name](state)
    if hasattr(panel, "run_now"):
        panel.run_now()
        assert panel.error == ""
    menus = built(panel)
    assert menus, f"{name}: no exportable figure"
    assert all(m.basename.startswith(tuple(PANELS) + ("variants", "accuracy", "sparsity",
                                                      "sample"))
               for m in menus)
    check_menu(menus[0])
    for menu in menus[1:]:  # every other figure at least as HTML
        fig = menu.figure()
        assert trace_json(fig).encode() in menu.download("html").read()


def test_the_sample_view_and_the_compress_panel_export_their_figures(state):
    from workbench.panels.compress import CompressPanel
    from workbench.panels.samples import SampleView, shared_selection

    view = SampleView(state=state, selection=shared_selection(state))
    names = {m.basename for m in export_menus(view.__panel__())}
    assert {"sample-relevance", "sample-outcomes"} <= names
    compress = CompressPanel(state=state)
    menus = {m.basename: m for m in export_menus(compress.__panel__())}
    fig = menus["compress-layers"].figure()
    assert fig is not None and trace_json(fig).encode() in menus["compress-layers"].download(
        "html").read()


def test_the_camera_button_saves_the_chosen_format():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[5, 7]))
    column = plotly_pane(fig, "my plot: 1", height=300)
    options = column.pane.config["toImageButtonOptions"]
    assert options["filename"] == "my-plot-1" and options["format"] in ("png", "svg")
    column.export.camera = "svg"
    assert column.pane.config["toImageButtonOptions"]["format"] == "svg"
    column.export.camera = "png"
    assert column.pane.config["toImageButtonOptions"] == {"format": "png",
                                                          "filename": "my-plot-1", "scale": 2}
    assert column.pane.config["displaylogo"] is False


def test_without_a_browser_the_menu_offers_the_camera_and_says_why(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export, "_BROWSERS", ("no-such-browser",))
    image_export_problem.cache_clear()
    try:
        import choreographer.browsers.chromium as chromium

        monkeypatch.setattr(chromium.Chromium, "find_browser",
                            classmethod(lambda cls, **kw: None))
        problem = image_export_problem()
        assert "Chromium" in problem
        fig = go.Figure(go.Bar(y=[1, 2]))
        column = plotly_pane(fig, "bars")
        menu = column.export
        assert menu.camera == "svg" and "camera button" in menu.message
        assert column.pane.config["toImageButtonOptions"]["format"] == "svg"
        buttons = {b.filename: b.visible for b in column.select(export.pn.widgets.FileDownload)}
        assert buttons == {"bars.html": True, "bars.png": False, "bars.svg": False}
        with pytest.raises(ExportError, match="Chromium"):
            menu.download("png")
        assert trace_json(fig).encode() in menu.download("html").read()
    finally:
        monkeypatch.undo()
        image_export_problem.cache_clear()
    assert image_export_problem() == ""


def test_no_figure_and_bad_format_are_clear_errors():
    menu = FigureExport(figure=lambda: None, basename="empty")
    with pytest.raises(ExportError, match="no figure"):
        menu.download("html")
    with pytest.raises(ExportError, match="format"):
        menu.download("pdf")
    assert figure_html(go.Figure()).startswith(b"<!doctype html>")


def test_images_render_off_the_event_loop(renderer):
    import asyncio

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 1]))
    menu = FigureExport(figure=lambda: fig, basename="async")
    seen = []
    menu.param.watch(lambda e: seen.append(e.new), "rendering")
    png = asyncio.run(menu.download_async("png")).read()
    assert png.startswith(PNG) and seen == [True, False] and not menu.rendering
    html = asyncio.run(menu.download_async("html")).read()
    assert trace_json(fig).encode() in html
    empty = FigureExport(figure=lambda: None, basename="none")
    with pytest.raises(ExportError):
        asyncio.run(empty.download_async("svg"))
    assert "no figure" in empty.message and not empty.rendering

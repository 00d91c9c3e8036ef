"""Figure export: every plotly figure of the dashboard as HTML, PNG or SVG.

* **HTML** is plotly's self-contained page (plotly.js inlined), so it opens offline.
* **PNG** and **SVG** are rendered on the server by kaleido (≥ 1), which drives a Chrome or
  Chromium it finds on the machine (``/usr/bin/chromium`` on Debian; ``BROWSER_PATH`` names
  another). Where kaleido or the browser is missing the menu says so and offers the plot's own
  camera button (Plotly's modebar) instead, which saves PNG or SVG in the browser: the menu's
  *Camera* choice sets which.

:func:`plotly_pane` (or :func:`with_export` around an existing pane) is what the panels use: a
Plotly pane with its camera button configured, and the menu under it.

Examples
--------
>>> import plotly.graph_objects as go
>>> fig = go.Figure(go.Bar(x=["a", "b"], y=[3, 4]))
>>> menu = export_menu(lambda: fig, "bars")
>>> html = menu.html().read()
>>> html.startswith(b"<!doctype html>"), b'"y":[3,4]' in html
(True, True)
>>> menu.config["toImageButtonOptions"]["filename"]
'bars'
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import io
import os
import re
import shutil
from typing import Callable

import panel as pn
import param

from workbench.errors import WorkbenchError
from workbench.panels.alerts import message_alert

FORMATS = ("html", "png", "svg")
IMAGE_FORMATS = ("png", "svg")
#: PNG pixels per layout pixel (a sharp image for slides and papers).
PNG_SCALE = 2
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class ExportError(WorkbenchError, RuntimeError):
    """A figure cannot be exported in the asked format (the message says what to install)."""


def safe_basename(name: str) -> str:
    """``name`` as a file name stem: letters, digits, ``.``, ``_`` and ``-`` only.

    Examples
    --------
    >>> safe_basename("landscape: magnitude-50 (dense)")
    'landscape-magnitude-50-dense'
    """
    stem = re.sub(r"[^\w.-]+", "-", str(name)).strip("-.")
    return stem or "figure"


@functools.lru_cache(maxsize=1)
def image_export_problem() -> str:
    """Why PNG/SVG cannot be rendered on this machine, or ``""`` if they can.

    Checked once per process: kaleido is importable and a Chrome/Chromium is found.
    """
    if importlib.util.find_spec("kaleido") is None:
        return "PNG/SVG export needs kaleido on the server (pip install 'kaleido>=1')."
    browser = os.environ.get("BROWSER_PATH") or next(
        (p for p in map(shutil.which, _BROWSERS) if p), None)
    if browser is None:
        try:
            from choreographer.browsers.chromium import Chromium

            browser = Chromium.find_browser(skip_local=False)
        except Exception:  # noqa: BLE001  any failure of the search means "not found"
            browser = None
    if browser is None:
        return ("PNG/SVG export needs Chrome or Chromium on the server (e.g. apt-get install "
                "chromium, or set BROWSER_PATH).")
    return ""


def figure_html(fig) -> bytes:
    """A self-contained HTML page of ``fig`` (plotly.js included: it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")


def figure_image(fig, fmt: str) -> bytes:
    """``fig`` rendered as PNG or SVG bytes by kaleido (raises :class:`ExportError`)."""
    if fmt not in IMAGE_FORMATS:
        raise ExportError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    problem = image_export_problem()
    if problem:
        raise ExportError(problem)
    import plotly.io as pio

    try:
        return pio.to_image(fig, format=fmt, scale=PNG_SCALE if fmt == "png" else 1)
    except Exception as err:  # noqa: BLE001  kaleido/Chromium failures become one clear line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"rendering the {fmt.upper()} failed: {first}") from err


def plotly_config(basename: str, fmt: str = "png") -> dict:
    """Plotly's config: the modebar's camera button saves ``basename.<fmt>`` in the browser."""
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": fmt, "filename": safe_basename(basename),
                                     "scale": PNG_SCALE if fmt == "png" else 1}}


class FigureExport(pn.viewable.Viewer):
    """Download buttons (HTML, PNG, SVG) for the figure ``figure()`` returns."""

    figure = param.Callable(doc="Returns the figure to export (or None when there is none).")
    basename = param.String(default="figure", doc="File name without extension.")
    camera = param.Selector(default="png", objects=list(IMAGE_FORMATS), label="Camera",
                            doc="What the plot's camera button saves (in the browser).")
    config = param.Dict(default={}, doc="Plotly config for the figure's pane.")
    message = param.String(default="", doc="Why an export is unavailable or failed.")
    rendering = param.Boolean(default=False, doc="A PNG/SVG is being rendered.")

    def __init__(self, **params):
        super().__init__(**params)
        self.basename = safe_basename(self.basename)
        problem = image_export_problem()
        if problem and "camera" not in params:
            self.camera = "svg"  # the browser is then the only way to an SVG
        self._camera_changed()
        self.images = not problem
        if problem:
            self.message = (f"{problem} The plot's camera button saves "
                            f"{self.camera.upper()} in the browser (choose PNG or SVG here).")

    @param.depends("camera", watch=True)
    def _camera_changed(self):
        self.config = plotly_config(self.basename, self.camera)

    def _figure(self):
        fig = self.figure() if self.figure is not None else None
        if fig is None:
            raise ExportError("there is no figure to export yet")
        return fig

    def html(self) -> io.BytesIO:
        """The figure as a self-contained HTML page."""
        return io.BytesIO(figure_html(self._figure()))

    def image(self, fmt: str) -> io.BytesIO:
        """The figure as PNG or SVG (``message`` says why if it cannot be rendered)."""
        try:
            data = figure_image(self._figure(), fmt)
        except ExportError as err:
            self.message = str(err)
            raise
        return io.BytesIO(data)

    def png(self) -> io.BytesIO:
        return self.image("png")

    def svg(self) -> io.BytesIO:
        return self.image("svg")

    def download(self, fmt: str) -> io.BytesIO:
        """The file a download button serves: ``fmt`` is ``"html"``, ``"png"`` or ``"svg"``."""
        if fmt not in FORMATS:
            raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
        return self.html() if fmt == "html" else self.image(fmt)

    async def download_async(self, fmt: str) -> io.BytesIO:
        """As :meth:`download`; images render in a worker thread (the page stays live, the
        buttons show that they are busy)."""
        if fmt not in IMAGE_FORMATS:
            return self.download(fmt)
        self.rendering = True
        try:
            fig = self._figure()
            data = await asyncio.get_running_loop().run_in_executor(None, figure_image, fig, fmt)
        except ExportError as err:
            self.message = str(err)
            raise
        finally:
            self.rendering = False
        return io.BytesIO(data)

    async def _png(self) -> io.BytesIO:
        return await self.download_async("png")

    async def _svg(self) -> io.BytesIO:
        return await self.download_async("svg")

    def __panel__(self):
        callbacks = {"html": self.html, "png": self._png, "svg": self._svg}

        def button(fmt: str, visible: bool = True):
            return pn.widgets.FileDownload(
                callback=callbacks[fmt], filename=f"{self.basename}.{fmt}",
                # a text arrow, not icon="download": Bokeh loads icon fonts from a CDN
                label=f"\u2b07 {fmt.upper()}", color="light", width=90, height=32, visible=visible,
                margin=(2, 4), loading=self.param.rendering, css_classes=[f"wb-export-{fmt}"])

        return pn.Column(
            pn.FlexBox(button("html"), *(button(f, self.images) for f in IMAGE_FORMATS),
                       pn.widgets.RadioButtonGroup.from_param(
                           self.param.camera, color="light", visible=not self.images,
                           width=110, height=32, margin=(2, 4))),  # wraps in narrow columns
            message_alert(self.param.message, "info",
                          margin=(0, 4), css_classes=["wb-export-message"]),
            sizing_mode="stretch_width", css_classes=["wb-export"])


def export_menu(figure_getter: Callable, basename: str) -> FigureExport:
    """The export buttons of one figure (``figure_getter()`` returns it at download time)."""
    return FigureExport(figure=figure_getter, basename=basename)


def with_export(pane: pn.pane.Plotly, basename: str) -> pn.Column:
    """``pane`` with the export menu of its figure underneath (shown when the pane is).

    The camera button of ``pane`` follows the menu's *Camera* choice. The column keeps the two
    as ``column.pane`` and ``column.export``.
    """
    menu = export_menu(lambda: pane.object, basename)
    pane.config = {**(pane.config or {}), **menu.config}
    menu.param.watch(lambda event: setattr(pane, "config", {**pane.config, **event.new}),
                     "config")
    column = pn.Column(pane, menu, visible=pane.param.visible, margin=0,
                       sizing_mode=pane.sizing_mode, width=pane.width)
    column.pane, column.export = pane, menu
    return column


def plotly_pane(figure, basename: str, **kwargs) -> pn.Column:
    """A Plotly pane of ``figure`` (a figure or a reactive function returning one) with its
    export menu underneath (:func:`with_export`); ``kwargs`` go to :class:`panel.pane.Plotly`.
    """
    return with_export(pn.pane.Plotly(figure, **kwargs), basename)


def export_menus(view) -> list[FigureExport]:
    """Every export menu in a Panel layout (what the tests and a "download all" use)."""
    found = []

    def walk(obj):
        if isinstance(obj, FigureExport):
            found.append(obj)
        menu = getattr(obj, "export", None)
        if isinstance(menu, FigureExport) and menu not in found:
            found.append(menu)
        for child in getattr(obj, "objects", None) or []:
            walk(child)

    walk(view)
    return found


__all__ = ["FigureExport", "ExportError", "export_menu", "export_menus", "plotly_pane",
           "with_export", "figure_html",
           "figure_image", "image_export_problem", "plotly_config", "safe_basename"]

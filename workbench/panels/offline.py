"""Serving the dashboard with no internet: every script, stylesheet and font from the server.

Panel's Fast design links Google's "Open Sans" web font, so :class:`OfflineFast` is the same
design without it (the template falls back to the system's sans-serif font). Panel's own and
Bokeh's resources are served by the Panel server itself (``static/``) when
:func:`serve_locally` has set the resource mode to ``server``.

Examples
--------
>>> "font" in OfflineFast._resources, sorted(OfflineFast._resources["js_modules"])
(False, ['fast', 'fast-design'])
"""

from __future__ import annotations

import os

from panel.io.resources import CDN_DIST
from panel.theme.fast import Fast
from panel.util import isurl

RESOURCES_ENV = "BOKEH_RESOURCES"


def _without_font(resources: dict) -> dict:
    # Relative paths are resolved against the class name ("fast/js/…" for Fast), so they are
    # spelled out as the bundle's CDN URLs, which Panel maps to its local copy when serving.
    return {kind: {name: url if isurl(url) else f"{CDN_DIST}bundled/fast/{url}"
                   for name, url in value.items()} if kind in ("js", "js_modules", "css")
            else value
            for kind, value in resources.items() if kind != "font"}


class OfflineFast(Fast):
    """Panel's Fast design without the link to the Google web font."""

    _resources = _without_font(Fast._resources)


def serve_locally() -> None:
    """Make Panel and Bokeh serve their JS/CSS from the server, never from a CDN.

    Sets ``$BOKEH_RESOURCES`` to ``server`` unless the user chose otherwise (Panel reads Bokeh's
    setting to decide between its own ``static/extensions/panel/`` files and cdn.holoviz.org).
    """
    from bokeh.settings import settings

    os.environ.setdefault(RESOURCES_ENV, "server")
    if os.environ[RESOURCES_ENV] == "server":
        settings.resources.set_value("server")


__all__ = ["OfflineFast", "serve_locally"]

"""The workbench needs no internet: every script, stylesheet and font comes from this machine.

This module is the one place that decides where Panel's and Bokeh's resources come from; it is
applied when ``import workbench`` runs, before any notebook cell calls ``pn.extension``:

* **Notebooks** (JupyterLab, Notebook 7, VS Code): ``PANEL_INLINE`` makes Panel embed its own,
  Bokeh's and the extensions' JavaScript and CSS in the output, so a dashboard shown in a cell
  loads nothing from a CDN (Panel's default for a release is cdn.holoviz.org and cdn.bokeh.org).
* **Servers** (``workbench serve``, ``panel serve notebooks/dashboard.ipynb``): the server serves
  those files from its own ``static/`` routes (:func:`workbench.panels.offline.serve_locally`).
* **Files**: exported figures and pages embed everything (:mod:`workbench.panels.export`).

A variable the user set already wins: ``PANEL_INLINE=false`` brings the CDN back.

Examples
--------
>>> import os, workbench
>>> os.environ["PANEL_INLINE"] in ("true", "1", "True") or "set by the user"
True
"""

from __future__ import annotations

import os

#: Environment settings applied at import (unless already set).
NOTEBOOK_SETTINGS = {"PANEL_INLINE": "true"}


def keep_resources_local(environ=os.environ) -> dict[str, str]:
    """Apply :data:`NOTEBOOK_SETTINGS` where the user has not chosen; the values in effect."""
    for name, value in NOTEBOOK_SETTINGS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in NOTEBOOK_SETTINGS}


__all__ = ["NOTEBOOK_SETTINGS", "keep_resources_local"]

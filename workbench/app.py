"""The served application: one fresh default session per browser session.

The default model is trained once and then read from the disk cache, so a new browser tab gets
its own session (its own variants) within a fraction of a second.

Examples
--------
>>> app = create_app()
>>> type(app).__name__
'FastListTemplate'
"""

from __future__ import annotations

APP_NAME = "workbench"


def create_app():
    """A dashboard template around a new :meth:`Session.default` (a Panel app factory)."""
    from workbench.panels.dashboard import Dashboard
    from workbench.session import Session

    return Dashboard(session=Session.default(progress=False)).template()


__all__ = ["create_app", "APP_NAME"]

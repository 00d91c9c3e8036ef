"""Serve the Compress panel alone (for the browser tests): ``python tests/compress_app.py PORT``.

Independent of the dashboard's template and tabs, so the panel's own behaviour is what is
tested.
"""

from __future__ import annotations

import sys

import panel as pn

import workbench
from workbench.panels.compress import CompressPanel
from workbench.panels.state import SessionState


def app():
    session = workbench.Session.default(progress=False)
    return CompressPanel(state=SessionState(session=session)).__panel__()


if __name__ == "__main__":
    workbench.Session.default(progress=False)  # trained/cached before the server answers
    pn.serve({"compress": app}, port=int(sys.argv[1]), address="127.0.0.1", show=False,
             websocket_origin=[f"127.0.0.1:{sys.argv[1]}"])

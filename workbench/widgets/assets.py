"""Where the widgets' front-end files (ESM + CSS) are, in an editable install and in a wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The installed package that holds the repository's top-level ``widgets/`` directory.
PACKAGE = "workbench_widgets"


def asset(name: str) -> Path:
    """Path of one front-end file, e.g. ``"layer_editor.js"``.

    An editable install maps ``workbench_widgets`` onto the repository's ``widgets/`` directory
    (so edits show up at once, and ``ANYWIDGET_HMR=1`` hot-reloads them); a wheel carries the
    files inside ``site-packages/workbench_widgets/``.

    Examples
    --------
    >>> asset("layer_editor.js").name
    'layer_editor.js'
    >>> "export default" in asset("sample_grid.js").read_text()
    True
    """
    path = Path(str(resources.files(PACKAGE) / name))
    if not path.is_file():
        raise FileNotFoundError(
            f"the widget file {name!r} is missing from {path.parent}; reinstall workbench "
            "(`pip install -e .` in a checkout)"
        )
    return path

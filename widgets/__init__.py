"""The front-end files of workbench's custom widgets, installed as the package ``workbench_widgets``.

Only data lives here (``*.js`` ES modules and ``*.css``); the Python classes that load them are in
:mod:`workbench.widgets`. See README.md next to this file.
"""

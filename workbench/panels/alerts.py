"""Message boxes that show only while their text is non-empty."""

from __future__ import annotations

import panel as pn


def message_alert(text, alert_type: str = "info", **params) -> pn.pane.Alert:
    """An Alert showing the string parameter ``text`` (such as ``self.param.error``), visible
    only while the text is non-empty.

    Examples
    --------
    >>> import param
    >>> class Box(param.Parameterized):
    ...     error = param.String("")
    >>> box = Box()
    >>> alert = message_alert(box.param.error, "danger")
    >>> alert.visible
    False
    >>> box.error = "bits must be one of 2, 4, 8"
    >>> alert.visible, alert.object
    (True, 'bits must be one of 2, 4, 8')
    """
    return pn.pane.Alert(text, alert_type=alert_type, visible=text.rx.bool(), **params)

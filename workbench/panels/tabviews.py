"""Dashboard tab views built on first use.

:class:`TabViews` maps tab titles to their views and builds a view (``factory(state=state)``)
only when its title is first looked up, so a new dashboard (a new visitor of ``workbench serve``)
pays only for the tabs that are opened. A factory that raises gives an Alert with its error
instead, so one broken tab cannot break the dashboard.

Examples
--------
>>> built = []
>>> views = TabViews([("A", lambda state: built.append("A") or f"A of {state}"),
...                   ("B", lambda state: 1 / 0)], state="s")
>>> list(views), views.built(), built
(['A', 'B'], [], [])
>>> views["A"], views.built()
('A of s', ['A'])
>>> type(views["B"]).__name__, views["B"].object
('Alert', 'The B tab failed to load: ZeroDivisionError: division by zero')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Union

import panel as pn

TabFactory = Union[str, Callable[..., object]]


def resolve(factory: TabFactory) -> Callable[..., object]:
    """The callable a factory stands for (``"module:attribute"`` strings are imported)."""
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module), attr)
    return factory


def failed_tab(title: str, err: BaseException) -> pn.pane.Alert:
    """The Alert a tab shows when building it raised ``err``."""
    from workbench.panels.compress import error_message

    return pn.pane.Alert(f"The {title} tab failed to load: {error_message(err)}",
                         alert_type="danger", css_classes=["wb-tab-error"])


class TabViews(Mapping):
    """Tab views by title (in registration order), each built on first access.

    Parameters
    ----------
    factories : iterable of (title, factory)
        ``factory(state=state)`` builds the view; a ``"module:attribute"`` string is imported
        when the tab is first built.
    state : object
        Passed to every factory (the dashboard's shared ``SessionState``).
    """

    def __init__(self, factories: Iterable[tuple[str, TabFactory]], state):
        self._factories = dict(factories)
        self._state = state
        self._views: dict[str, object] = {}

    def __getitem__(self, title: str):
        if title not in self._views:
            factory = self._factories[title]  # KeyError for an unknown title, as a dict
            try:
                self._views[title] = resolve(factory)(state=self._state)
            except Exception as err:  # noqa: BLE001  one broken tab must not break the dashboard
                self._views[title] = failed_tab(title, err)
        return self._views[title]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def built(self) -> list[str]:
        """Titles whose views exist already, in tab order."""
        return [t for t in self._factories if t in self._views]


__all__ = ["TabViews", "TabFactory", "resolve", "failed_tab"]

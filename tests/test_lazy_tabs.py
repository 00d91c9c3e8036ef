"""Dashboard tabs are built when first opened, share one state, and show their build errors."""

from __future__ import annotations

import panel as pn
import param
import pytest

import workbench.panels.dashboard as dashboard_module
from workbench.panels.dashboard import Dashboard, register_tab


def tabs_of(template) -> pn.Tabs:
    (tabs,) = [o for o in template.main if isinstance(o, pn.Tabs)]
    return tabs


def slot_content(tabs: pn.Tabs, title: str):
    (content,) = tabs[tabs._names.index(title)].objects
    return content


def test_a_new_dashboard_builds_only_the_tab_it_shows(fresh_session):
    dash = Dashboard(session=fresh_session)
    assert dash.tabs.built() == []  # nothing before it is displayed
    tabs = tabs_of(dash.template())
    assert tabs.dynamic is False  # opened tabs stay rendered (hidden), never torn down
    assert dash.tabs.built() == ["Compress"]
    assert "Loading the Compare tab" in slot_content(tabs, "Compare").object

    dash.state.add("prune", "magnitude", sparsity=0.5)  # before Compare exists
    tabs.active = 1
    assert dash.tabs.built() == ["Compress", "Compare"]
    compare = dash.tabs["Compare"]
    assert compare.state is dash.tabs["Compress"].state is dash.state
    assert list(compare.table()["name"]) == ["base", "magnitude-50"]
    shown = slot_content(tabs, "Compare")
    tabs.active = 0
    tabs.active = 1  # built once: opening it again reuses the view
    assert slot_content(tabs, "Compare") is shown


def test_a_tab_that_fails_to_build_or_to_render_shows_its_error(fresh_session, monkeypatch):
    monkeypatch.setattr(dashboard_module, "TABS", list(dashboard_module.TABS))

    def broken(state):
        raise RuntimeError("boom")

    class BadView(pn.viewable.Viewer):
        state = param.Parameter()

        def __panel__(self):
            raise ValueError("no view")

    register_tab("Broken", broken)
    register_tab("Bad view", BadView)
    dash = Dashboard(session=fresh_session)
    tabs = tabs_of(dash.template())
    tabs.active = tabs._names.index("Broken")
    tabs.active = tabs._names.index("Bad view")
    broken_alert, bad_alert = slot_content(tabs, "Broken"), slot_content(tabs, "Bad view")
    assert isinstance(broken_alert, pn.pane.Alert) and isinstance(bad_alert, pn.pane.Alert)
    assert broken_alert.object == "The Broken tab failed to load: RuntimeError: boom"
    assert bad_alert.object == "The Bad view tab failed to load: ValueError: no view"
    tabs.active = 0  # the rest keeps working
    assert isinstance(slot_content(tabs, "Compress"), pn.layout.ListLike)


def test_unknown_titles_are_key_errors(fresh_session):
    dash = Dashboard(session=fresh_session)
    with pytest.raises(KeyError):
        dash.tabs["Nope"]
    assert len(dash.tabs) == len(dashboard_module.TABS) and list(dash.tabs)[0] == "Compress"

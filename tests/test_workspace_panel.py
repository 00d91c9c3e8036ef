"""Save and Open of a workspace from the dashboard's sidebar (the variant manager)."""

from __future__ import annotations

import json

import panel as pn
import pytest

from workbench.panels.compare import ComparePanel
from workbench.panels.dashboard import Dashboard
from workbench.panels.landscape import LandscapePanel
from workbench.panels.state import SessionState
from workbench.panels.variants import VariantManager
from workbench.panels.workspace import WorkspaceControls
from workbench.workspace import MANIFEST

METRICS = ("name", "kind", "method", "parent", "accuracy", "sparsity", "loss")


def rows(session) -> list[dict]:
    return [{k: r[k] for k in METRICS if k in r} for r in session.table()]


@pytest.fixture
def state(fresh_session):
    state = SessionState(session=fresh_session)
    state.add("prune", "magnitude", sparsity=0.5)
    state.add("quantize", "uniform", bits=4, parent="magnitude-50")
    return state


def test_save_change_open_gives_back_the_saved_variants_in_every_view(state, tmp_path):
    manager = VariantManager(state=state)
    controls = manager.workspace
    compare = ComparePanel(state=state)
    landscape = LandscapePanel(state=state, steps=3, samples=32, variants=["magnitude-50"])
    landscape.run_now()
    assert landscape.results
    saved_rows = rows(state.session)
    controls.path = str(tmp_path / "ws")
    controls.param.trigger("save")  # the Save button's path (a worker thread, awaited here)
    assert controls.error == "" and controls.message.startswith("Saved 3 variants")
    assert (tmp_path / "ws" / MANIFEST).exists()

    # another state: a variant removed, one renamed, one added
    state.remove("magnitude-50+uniform-4b")
    state.rename("magnitude-50", "half")
    state.add("prune", "random", sparsity=0.3)
    assert state.variants == ["base", "half", "random-30"]
    old = state.session

    controls.param.trigger("open")  # first press: names what it would discard, changes nothing
    assert controls.notice.startswith("Unsaved: half, random-30") and controls.error == ""
    assert state.session is old and state.variants == ["base", "half", "random-30"]
    controls.param.trigger("open")  # second press: confirmed
    assert controls.error == "" and controls.notice == ""
    assert controls.message.startswith("Opened 3 variants")
    assert state.session is not old
    assert state.variants == ["base", "magnitude-50", "magnitude-50+uniform-4b"]
    assert rows(state.session) == saved_rows
    assert list(compare.table()["name"]) == state.variants
    assert manager.param.target.objects == state.variants
    # the analysis panel forgot the old session's results and works on the reopened one
    assert landscape.results == {}
    assert set(landscape.param.variants.objects) == set(state.variants)
    landscape.variants = ["magnitude-50+uniform-4b"]
    result = landscape.run_now()[("plane", "magnitude-50+uniform-4b")]
    assert result.loss.shape == (3, 3)


def test_open_errors_leave_the_session_intact(state, tmp_path):
    controls = WorkspaceControls(state=state)
    session, names = state.session, list(state.variants)

    controls.path = ""
    assert controls.open_now() is None and "enter the workspace directory" in controls.error
    controls.path = str(tmp_path / "missing")
    assert controls.open_now() is None
    assert controls.error.startswith("Open failed") and "unchanged" in controls.error
    assert state.session is session and state.variants == names

    controls.path = str(tmp_path / "ws")
    assert controls.save_now() == tmp_path / "ws"
    manifest = json.loads((tmp_path / "ws" / MANIFEST).read_text())
    weights = next(p for p in (tmp_path / "ws" / "files").iterdir()
                   if p.name.startswith("magnitude-50-"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the checksum no longer matches
    weights.write_bytes(bytes(data))
    assert controls.open_now() is None
    assert "Open failed" in controls.error and state.session is session
    assert manifest["workbench_workspace"] >= 1

    (tmp_path / "ws" / MANIFEST).write_text("{ not json")
    assert controls.open_now() is None and "Open failed" in controls.error
    assert state.session is session and state.variants == names

    controls.path = str(tmp_path / "ws2")
    assert controls.save_now() is not None and controls.error == ""
    assert controls.unsaved() == []
    assert controls.open_now() is not None and controls.error == ""
    assert controls.notice == "" and state.session is not session


def test_save_to_an_impossible_place_is_a_clear_error(state, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    controls = WorkspaceControls(state=state, path=str(blocker / "ws"))
    assert controls.save_now() is None
    assert controls.error.startswith("Save failed") and controls.message == ""


def test_the_dashboard_sidebar_has_save_and_open(fresh_session, tmp_path):
    dash = Dashboard(session=fresh_session)
    view = pn.panel(dash)
    classes = {c for b in view.select(pn.widgets.Button) for c in b.css_classes}
    assert {"wb-ws-save", "wb-ws-open"} <= classes
    controls = dash.manager.workspace
    controls.path = str(tmp_path / "ws")
    assert controls.save_now() is not None
    assert controls.open_now() is not None
    assert dash.state.session is not fresh_session and dash.state.variants == ["base"]
    assert dash.session is dash.state.session  # the dashboard follows the reopened session
    assert "variants** 1" in dash.info()

"""The custom widgets in a real browser: a tiny Panel app with LayerEditorPanel and SampleGridPanel,
served on 127.0.0.1 in a thread of this process and driven with Playwright (Debian's Chromium).

The test reads the Python objects the server made, so "the value reached Python" is checked on
the Python side itself. Screenshots go to test-artifacts/. A missing Chromium is a failure.
"""

from __future__ import annotations

import importlib.util
import urllib.request

import numpy as np
import pytest

from serving import REPO, free_port, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 60_000


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
        return True
    except OSError:
        return False



@pytest.fixture(scope="module")
def app(default_session):
    """Serve the two widgets; yield ``(url, made)`` where ``made`` gets the served objects."""
    import panel as pn
    import workbench
    from workbench.widgets.layer_editor import layer_editor_data
    from workbench.widgets.panel import LayerEditorPanel, SampleGridPanel
    from workbench.widgets.sample_grid import sample_grid_data

    session = workbench.Session(default_session.base.model, default_session.data)
    session.prune("magnitude", sparsity=0.9, name="m90")
    editor_fields = layer_editor_data(session)
    grid_fields = sample_grid_data(session, n=12)
    made: dict = {}

    def page():
        editor = LayerEditorPanel(**editor_fields)
        grid = SampleGridPanel(**grid_fields)
        select7 = pn.widgets.Button(label="select #7", css_classes=["select7"])
        select7.on_click(lambda _: setattr(grid, "selected", 7))
        readout = pn.pane.Markdown(pn.bind(lambda v, s: f"value={v} selected={s}",
                                           editor.param.value, grid.param.selected),
                                   css_classes=["readout"])
        # a heatmap overlay on black images: positive relevance must tint them red
        heat = SampleGridPanel(images=np.zeros((2, 1, 4, 4), np.float32), variants=["v"],
                               heatmaps=np.stack([np.ones((4, 4)), -np.ones((4, 4))]),
                               predictions=[[0, 1]], margins=[[1.0, 2.0]], css_classes=["heat"])
        made.update(editor=editor, grid=grid)
        return pn.Column(editor, grid, select7, readout, heat)

    port = free_port()
    server = pn.serve({"widgets": page}, port=port, address="127.0.0.1", show=False,
                      threaded=True, websocket_origin=[f"127.0.0.1:{port}"])
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/widgets"), what="the server")
        yield f"http://127.0.0.1:{port}/widgets", made
    finally:
        server.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"widgets-{name}.png"), full_page=True)


INK = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0; for (let i = 0; i < d.length; i += 4) lit += (d[i] + d[i+1] + d[i+2]) > 0;
  return [c.width, c.height, lit]; }"""


def test_widgets_render_edit_and_sync_back(browser, app):
    url, made = app
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)

    # --- both render: bars and canvases, not a placeholder -----------------------------------
    handles = page.locator(".wb-le-handle")
    canvases = page.locator("canvas.wb-sg-image")
    wait_until(lambda: handles.count() == 5 and canvases.count() == 24 + 2, what="the widgets")
    editor, grid = made["editor"], made["grid"]
    assert "Loading widget" not in page.content()
    assert page.locator(".wb-le-name").all_inner_texts() == editor.layers
    assert page.locator(".wb-le-count").all_inner_texts() == ["150", "2400", "7680", "10k", "840"]
    colours = page.locator(".wb-le-chip").evaluate_all(
        "cs => cs.map(c => getComputedStyle(c).backgroundColor)")
    assert len(colours) == 5 and len(set(colours)) > 1  # sensitivity differs between layers
    width, height, lit = canvases.first.evaluate(INK)
    assert (width, height) == (8, 8) and 0 < lit <= 64  # drawn from the bytes: a digit
    assert canvases.first.bounding_box()["width"] == pytest.approx(56, abs=1)
    assert page.locator(".wb-sg-wrong").count() > 0  # the 90%-pruned variant misses some
    pixel = "c => Array.from(c.getContext('2d').getImageData(0, 0, 1, 1).data)"
    positive, negative = (page.locator(".heat canvas").nth(i).evaluate(pixel) for i in (0, 1))
    assert positive == [140, 16, 18, 255] and negative == [29, 80, 118, 255]  # 0.65 · tint
    shot(page, "01-rendered")

    # --- keyboard: five steps right on features.0 ---------------------------------------------
    handles.nth(0).focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_until(lambda: editor.value[0] == pytest.approx(0.05), what="ArrowRight to reach Python")
    page.keyboard.press("End")
    wait_until(lambda: editor.value[0] == pytest.approx(0.99), what="End to reach Python")
    page.keyboard.press("Home")
    wait_until(lambda: editor.value[0] == 0.0, what="Home to reach Python")
    assert handles.nth(0).get_attribute("aria-valuenow") == "0"

    # --- drag: classifier.2's handle to three quarters of its track ---------------------------
    track = page.locator(".wb-le-track").nth(3).bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + 0.4 * track["width"], y, steps=4)
    assert editor.value[3] == 0.0  # continuous_update=False: nothing is sent mid-drag
    page.mouse.move(track["x"] + 0.75 * track["width"], y, steps=4)
    page.mouse.up()
    wait_until(lambda: abs(editor.value[3] - 0.75) <= 0.02, what="the drag to reach Python")
    assert editor.value[:3] == [0.0, 0.0, 0.0] and editor.value[4] == 0.0
    assert all(type(v) is float for v in editor.value)  # JSON's 0 comes back as 0.0
    readout = page.locator(".readout p")  # CSS locators pierce Panel's shadow roots
    wait_until(lambda: f"value={editor.value}" in readout.inner_text(), what="the readout")
    assert page.locator(".wb-le-value").nth(3).inner_text() == f"{round(100 * editor.value[3])}%"
    assert "pruned" in page.locator(".wb-le-summary").inner_text()
    shot(page, "02-edited")

    # --- click a sample: the column is selected in the browser and in Python ------------------
    page.locator(".wb-sg-cell[data-variant='m90'][data-sample='4']").click()
    wait_until(lambda: grid.selected == 4, what="the click to reach Python")
    assert grid.selected_index == 4
    assert page.locator(".wb-sg-selected").count() == 3  # header + base + m90
    page.locator(".wb-sg-cell[data-sample='2']").first.hover()
    assert page.locator(".wb-sg-hover").count() == 3
    shot(page, "03-selected")

    # --- Python sets `selected`: the browser follows ------------------------------------------
    page.locator(".select7 button").click()
    page.locator(".wb-sg[data-selected='7']").wait_for()
    assert grid.selected == 7
    assert page.locator(".wb-sg-cell.wb-sg-selected").evaluate_all(
        "cs => cs.map(c => c.dataset.sample)") == ["7", "7"]

    # --- keyboard on the grid ---------------------------------------------------------------
    page.locator(".wb-sg").first.focus()
    page.keyboard.press("ArrowRight")
    wait_until(lambda: grid.selected == 8, what="ArrowRight on the grid to reach Python")
    page.keyboard.press("Escape")
    wait_until(lambda: grid.selected == -1, what="Escape to reach Python")
    assert page.locator(".wb-sg-selected").count() == 0
    shot(page, "04-python-selected")
    assert errors == []
    page.close()


# --- the same ES modules through anywidget in JupyterLab -----------------------------------------
NOTEBOOK = [
    '''import json
import workbench
from workbench.widgets import LayerEditor, SampleGrid
s = workbench.Session.default(progress=False)
s.prune("magnitude", sparsity=0.9, name="m90")
editor = LayerEditor.from_session(s)
grid = SampleGrid.from_session(s, n=8)
def dump(_=None):
    with open(STATE, "w") as f:
        json.dump({"value": editor.value, "selected": grid.selected}, f)
editor.observe(dump, "value"); grid.observe(dump, "selected")
editor''',
    "grid",
    "grid.selected = 5",
]


def test_widgets_in_jupyterlab(browser, tmp_path):
    if importlib.util.find_spec("jupyterlab") is None:
        pytest.fail("JupyterLab is expected (pip install -e '.[test]' installs it)")
    import json
    import shutil

    import nbformat

    from serving import running

    state = tmp_path / "state.json"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.replace("STATE", repr(str(state))))
                for src in NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "widgets.ipynb")
    port = free_port()
    jupyter = shutil.which("jupyter")
    assert jupyter, "the 'jupyter' command is missing"
    cmd = [jupyter, "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--allow-root",
           "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={tmp_path}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]

    def read_state():
        try:
            return json.loads(state.read_text())
        except (OSError, ValueError):
            return None

    with running(cmd, f"http://127.0.0.1:{port}/lab"):
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(120_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/lab/tree/widgets.ipynb")
        cells = page.locator(".jp-Notebook .jp-Cell")
        cells.first.wait_for()
        page.get_by_text("| Idle").first.wait_for()  # the kernel is up
        cells.first.click()
        page.keyboard.press("Shift+Enter")
        page.locator(".wb-le-handle").first.wait_for()
        page.keyboard.press("Shift+Enter")
        canvases = page.locator("canvas.wb-sg-image")
        canvases.first.wait_for()
        assert page.locator(".wb-le-handle").count() == 5 and canvases.count() == 16

        page.locator(".wb-le-handle").nth(0).focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        wait_until(lambda: (read_state() or {}).get("value", [0])[0] == pytest.approx(0.03),
                   what="the kernel to receive the keyboard edit")
        page.locator(".wb-sg-cell[data-sample='2']").first.click()
        wait_until(lambda: (read_state() or {}).get("selected") == 2,
                   what="the kernel to receive the click")
        cells.nth(2).click()
        page.keyboard.press("Shift+Enter")
        page.locator(".wb-sg[data-selected='5']").wait_for()
        assert page.locator(".wb-sg-cell.wb-sg-selected").count() == 2
        shot(page, "05-jupyterlab")
        assert errors == []
        page.close()

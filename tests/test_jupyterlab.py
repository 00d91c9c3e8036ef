"""The quickstart notebook in a real JupyterLab, used as a person would.

JupyterLab runs on 127.0.0.1 with a random port and token, on a temporary copy of
notebooks/01_quickstart.ipynb (the repository's notebook is never touched). Chromium opens it,
runs *Run → Run All Cells*, waits for the kernel, and checks that no cell failed, that every
figure, table and the inline dashboard rendered (no "Loading widget…" placeholder), and that the
dashboard responds: the sparsity slider changes the previewed accuracy and *Apply* adds a variant.
Screenshots go to test-artifacts/jupyterlab-*.png.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import shutil

import pytest

from serving import REPO, free_port, get, running, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 900}
RUN_TIMEOUT = 1200.0  # the whole notebook, on two busy cores
PLACEHOLDER = re.compile(r"Loading widget|Loading(\.\.\.|…)")
# No news or update check popping up over the notebook.
SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False}}



def shot(target, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    target.screenshot(path=str(ARTIFACTS / f"jupyterlab-{name}.png"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of the quickstart; yields ``(url, token, workdir)``."""
    jupyter = shutil.which("jupyter")
    if jupyter is None or importlib.util.find_spec("jupyterlab") is None:
        pytest.fail("JupyterLab is expected (pip install -e '.[test]' installs it)")
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    settings = work / ".settings"
    for name, value in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(value))
    token, port = secrets.token_hex(16), free_port()
    cmd = [jupyter, "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           f"--LabApp.workspaces_dir={work / '.workspaces'}",
           f"--LabApp.user_settings_dir={settings}"]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/api/status?token={token}", timeout=300):
        yield url, token, work


def test_token_is_required(lab):
    url, token, _ = lab
    assert get(f"{url}/api/contents")[0] == 403
    status, body = get(f"{url}/api/contents?token={token}")
    assert status == 200 and NOTEBOOK.name in body


@pytest.mark.timeout(RUN_TIMEOUT + 900)
def test_quickstart_runs_renders_and_responds(browser, lab):
    import nbformat

    url, token, work = lab
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.locator(".jp-Cell").first.wait_for()
    idle = page.locator(".jp-StatusBar-Widget").get_by_text(re.compile(r"\| Idle$"))
    idle.first.wait_for(timeout=300_000)  # the kernel is up

    # --- Run → Run All Cells, then wait until every code cell has an execution count ----------
    code_cells = nbformat.read(NOTEBOOK, as_version=4).cells
    n_code = sum(c.cell_type == "code" for c in code_cells)
    notebook.locator(".jp-Cell").first.click()
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item").filter(has_text=re.compile(r"^Run All Cells")).click()
    prompts = notebook.locator(".jp-CodeCell .jp-InputArea-prompt")

    def texts(locator) -> list[str]:  # textContent: innerText is "" for off-screen cells
        return locator.evaluate_all("es => es.map(e => e.textContent.trim())")

    def done():
        texts_ = texts(prompts)
        return (len(texts_) == n_code and all(re.fullmatch(r"\[\d+\]:", t) for t in texts_)
                and idle.count() > 0)

    try:
        wait_until(done, timeout=RUN_TIMEOUT, what="Run All Cells to finish", every=2)
    finally:
        shot(page, "01-ran-all")
    counts = [int(t[1:-2]) for t in texts(prompts)]
    assert counts == list(range(1, n_code + 1))  # all ran, in order, once

    # --- no cell failed: no traceback on the page, none in the saved notebook -----------------
    assert notebook.locator(".jp-OutputArea-output[data-mime-type="
                            "'application/vnd.jupyter.stderr']").filter(
        has_text="Traceback").count() == 0
    saved = work / NOTEBOOK.name
    page.keyboard.press("Control+s")

    def read_saved():  # None until the save is complete (the file may be half written)
        try:
            nb = nbformat.read(saved, as_version=4)
        except Exception:  # noqa: BLE001
            return None
        return nb if all(c.execution_count for c in nb.cells if c.cell_type == "code") else None

    ran = wait_until(read_saved, what="the notebook to be saved")
    failed = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(ran.cells)
              if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert failed == []

    # --- everything rendered: no placeholders; tables, figures and the dashboard are there ---
    outputs = notebook.locator(".jp-OutputArea-output")
    shown = ("es => es.map(e => { const c = e.cloneNode(true);"  # the text, not the scripts
             " c.querySelectorAll('script, style').forEach(s => s.remove()); return c.textContent; })")
    wait_until(lambda: not PLACEHOLDER.search(" ".join(outputs.evaluate_all(shown))),
               what="'Loading…' placeholders to be replaced by the widgets")
    data = [o.get("data", {}) for c in ran.cells if c.cell_type == "code" for o in c.outputs]
    n_tables = sum('class="dataframe"' in d.get("text/html", "") for d in data)
    n_figures = sum("application/vnd.plotly.v1+json" in d for d in data)
    assert n_tables >= 3 and n_figures >= 2
    assert notebook.locator(".jp-OutputArea-output table.dataframe").count() == n_tables
    plots = notebook.locator(".jp-OutputArea-output.js-plotly-plot")  # jupyterlab-plotly
    assert plots.count() == n_figures
    for i in range(n_figures):  # a figure is drawn once it is scrolled into view
        plots.nth(i).evaluate("e => e.scrollIntoView()")
        plots.nth(i).locator(".main-svg").first.wait_for()
    sweep = plots.filter(has_text="global_magnitude").locator(".scatterlayer .trace")
    assert sweep.count() >= 3  # random, magnitude, global_magnitude
    dashboard = notebook.locator(".jp-OutputArea-output").filter(
        has=page.locator(".wb-tabs")).first
    dashboard.evaluate("e => e.scrollIntoView()")
    tabs = dashboard.locator(".wb-tabs .bk-tab")
    wait_until(lambda: tabs.count() == 9, what="the dashboard's tabs")
    assert tabs.first.inner_text() == "Compress"
    accuracy = dashboard.locator(".wb-preview-accuracy div").first
    start = wait_until(lambda: "%" in accuracy.inner_text() and accuracy.inner_text(),
                       timeout=300, what="the preview accuracy")
    handle = dashboard.locator(".wb-sparsity .noUi-handle")
    assert handle.count() == 1
    preview = dashboard.locator(".main-svg")  # the Compress tab's per-layer sparsity figure
    wait_until(lambda: preview.count() > 0, what="the dashboard's preview figure")
    handle.scroll_into_view_if_needed()
    shot(page, "02-dashboard")

    # --- the dashboard responds: slider → preview, Apply → a new variant in the sidebar ------
    handle.focus()
    for _ in range(10):  # 0.50 → 0.60
        page.keyboard.press("ArrowRight")
    assert handle.get_attribute("aria-valuenow") in ("0.6", "0.60")
    moved = wait_until(lambda: accuracy.inner_text() != start and accuracy.inner_text(),
                       timeout=300, what="the preview to follow the slider")
    assert moved.strip().endswith("%")
    shot(page, "03-slider-moved")

    options = dashboard.locator(".wb-variant-list select")
    names = options.evaluate("e => [...e.options].map(o => o.text)")
    dashboard.locator(".wb-apply button").click()
    after = wait_until(lambda: (lambda now: len(now) > len(names) and now)(
        options.evaluate("e => [...e.options].map(o => o.text)")),
        timeout=300, what="Apply to add a variant")
    added = [n for n in after if n not in names]
    assert len(added) == 1 and added[0].startswith("magnitude"), added
    shot(page, "04-applied")
    assert errors == []
    page.close()

"""In Chromium: the Cancel button of a served analysis panel, and a figure's HTML/PNG download."""

from __future__ import annotations

import sys
import textwrap

import pytest

from serving import free_port, running, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 120_000

APP = textwrap.dedent("""
    import panel as pn
    import workbench
    from workbench.panels.dashboard import load_extensions
    from workbench.panels.landscape import LandscapePanel
    from workbench.panels.state import SessionState

    load_extensions()
    state = SessionState(session=workbench.Session.default(progress=False))
    big = LandscapePanel(state=state, steps=121, samples=128)    # 14641 points: long
    small = LandscapePanel(state=state, steps=5, samples=32)
    pn.Column(pn.Column(big, css_classes=["big"]), pn.Column(small, css_classes=["small"]),
              sizing_mode="stretch_width").servable()
""")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    script = tmp_path_factory.mktemp("app") / "cancel_app.py"
    script.write_text(APP)
    port = free_port()
    url = f"http://127.0.0.1:{port}/cancel_app"
    with running([sys.executable, "-m", "panel", "serve", str(script), "--port", str(port),
                  "--allow-websocket-origin", f"127.0.0.1:{port}"], url):
        yield url



def test_cancel_then_run_and_download(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)

    run = page.locator(".big .wb-run button")
    cancel = page.locator(".big .wb-cancel button")
    status = page.locator(".big .wb-status div").first
    run.click()
    cancel.wait_for(state="visible")
    cancel.click()
    wait_until(lambda: "Cancelled" in status.inner_text(), what="the cancelled status")
    cancel.wait_for(state="hidden")

    page.locator(".small .wb-run button").click()
    html_button = page.locator(".small .wb-export-html button")
    html_button.wait_for(state="visible")
    with page.expect_download() as info:
        html_button.click()
    html = tmp_path / "landscape.html"
    info.value.save_as(html)
    assert info.value.suggested_filename == "landscape-base.html"
    text = html.read_text()
    assert text.startswith("<!doctype html>") and '"type":"contour"' in text

    with page.expect_download() as info:
        page.locator(".small .wb-export-png button").click()
    png = tmp_path / "landscape.png"
    info.value.save_as(png)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # the big panel still runs after the cancel (and can be cancelled again)
    run.click()
    cancel.wait_for(state="visible")
    cancel.click()
    cancel.wait_for(state="hidden")
    assert "Cancelled" in status.inner_text()
    assert errors == []
    page.close()

"""The served dashboard needs nothing from the internet: no CDN, no web font.

Chromium aborts and records every request to anything but loopback while three pages (three
sessions at once: Panel used to hand later sessions CDN stylesheet URLs) open every tab of the
dashboard, served by ``workbench serve`` and by ``panel serve notebooks/dashboard.ipynb``. The
page must also be styled, i.e. the template's own CSS arrived from the server.
"""

from __future__ import annotations

import shutil
import time

import pytest

from serving import free_port, running, workbench_command

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = 3
VIEWPORT = {"width": 1366, "height": 768}
TIMEOUT_MS = 120_000  # per browser action
READY_S = 300.0  # three pages at once on a loaded two-core machine: not a speed test
# [href, loaded] of every stylesheet link, in the page and in the components' shadow roots
STYLESHEETS = """() => {
    const links = [];
    const walk = root => {
        root.querySelectorAll('link[rel="stylesheet"]').forEach(l => links.push(l));
        root.querySelectorAll('*').forEach(e => e.shadowRoot && walk(e.shadowRoot));
    };
    walk(document);
    return links.map(l => [l.href, l.sheet !== null]);
}"""


def is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in ("127.0.0.1", "localhost")


def served_commands(port: int) -> dict:
    panel = shutil.which("panel")
    assert panel, "the 'panel' command is missing"
    return {
        "workbench serve": (workbench_command() + ["serve", "--port", str(port)], "workbench"),
        "panel serve": ([panel, "serve", "notebooks/dashboard.ipynb", "--port", str(port),
                         "--address", "127.0.0.1", "--allow-websocket-origin",
                         f"127.0.0.1:{port}"], "dashboard"),
    }


@pytest.fixture(scope="module", params=["workbench serve", "panel serve"])
def dashboard_url(request):
    port = free_port()
    cmd, app = served_commands(port)[request.param]
    url = f"http://127.0.0.1:{port}/{app}"
    with running(cmd, url):
        yield url


def wait_until(predicate, what: str, timeout: float = TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def test_every_tab_loads_from_the_server_alone_and_is_styled(browser, dashboard_url):
    from workbench.panels.dashboard import TABS

    blocked: list[str] = []

    def block(route):
        blocked.append(route.request.url)
        route.abort()

    contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(PAGES)]
    try:
        pages = []
        for context in contexts:
            context.route(lambda url: not is_loopback_url(url), block)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(dashboard_url, wait_until="commit")  # all three sessions start at once
            pages.append(page)
        for page in pages:
            accuracy = page.locator(".wb-preview-accuracy div").first
            accuracy.wait_for(timeout=READY_S * 1000)
            wait_until(lambda: "%" in accuracy.inner_text(), "the preview accuracy", READY_S)
        for title, _ in TABS[1:]:
            for page in pages:
                page.locator(".wb-tabs .bk-tab").get_by_text(title, exact=True).click()
            for page in pages:  # the tab is built on first opening: wait for its content
                slot = page.locator(".wb-tab-slot").nth([t for t, _ in TABS].index(title))
                wait_until(lambda: "Loading the" not in slot.inner_text(), f"the {title} tab",
                           READY_S)
        page = pages[0]
        page.wait_for_load_state("networkidle")
        sheets = wait_until(lambda: (found := page.evaluate(STYLESHEETS))
                            and all(loaded for _, loaded in found) and found,
                            "every stylesheet to load")
        header = page.evaluate(
            "() => { const s = getComputedStyle(document.querySelector('#header'));"
            " return [s.display, s.paddingTop]; }")
    finally:
        for context in contexts:
            context.close()
    assert blocked == []
    origin = dashboard_url.rsplit("/", 1)[0] + "/"
    assert len(sheets) > 10 and all(href.startswith(origin) for href, _ in sheets), sheets
    assert header == ["flex", "10px"]  # the Fast template's CSS (unstyled: block, 0px)

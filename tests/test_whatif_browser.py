"""The live what-if and the per-layer editor in the served Compress panel (Chromium, Playwright).

The panel is served alone (``tests/compress_app.py``), so the test does not depend on the
dashboard's template and tabs.
"""

from __future__ import annotations

import re

import pytest

import sys

from serving import REPO, free_port, running, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 900}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def dashboard_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}/compress"
    with running([sys.executable, str(REPO / "tests" / "compress_app.py"), str(port)], url):
        yield url



def mean_corruption_error(table) -> str:
    match = re.search(r"mean corruption error\s+([\d.]+%)", table.inner_text())
    return match.group(1) if match else ""


def test_whatif_follows_the_per_layer_editor(browser, dashboard_url):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dashboard_url)

    table = page.locator(".wb-whatif table")  # CSS locators pierce Panel's shadow roots
    table.wait_for()
    start = wait_until(lambda: mean_corruption_error(table), what="the what-if summary")
    assert "negative margins" in table.inner_text() and "mCE vs base" in table.inner_text()

    page.locator(".wb-per-layer input").check()
    handles = page.locator(".wb-le-handle")
    wait_until(lambda: handles.count() == 5, what="one handle per layer")
    assert page.locator(".wb-le-name").all_inner_texts()[2] == "classifier.0"
    details = page.locator(".wb-preview-accuracy div").first
    before = details.inner_text()

    # drag classifier.0 (the largest layer) to nearly all pruned
    track = page.locator(".wb-le-track").nth(2).bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + 0.5 * track["width"], y)
    page.mouse.down()
    page.mouse.move(track["x"] + 0.97 * track["width"], y, steps=5)
    page.mouse.up()
    wait_until(lambda: page.locator(".wb-le-value").nth(2).inner_text() in ("96%", "97%", "98%"),
               what="the dragged value")
    wait_until(lambda: details.inner_text() != before, what="the accuracy preview to follow")
    moved = wait_until(lambda: (v := mean_corruption_error(table)) and v != start and v,
                       what="the what-if to follow")
    assert moved != start
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "whatif-per-layer.png"))

    page.locator(".wb-apply button").click()
    added = page.locator(".wb-added").get_by_text(re.compile(r"magnitude-\d+")).first
    added.wait_for()
    name = re.search(r"magnitude-(\d+)", added.inner_text())
    # the overall sparsity names it: above the uniform 50% since classifier.0 is most weights
    assert name and int(name.group(1)) > 50
    assert errors == []
    page.close()

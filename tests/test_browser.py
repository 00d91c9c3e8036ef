"""Drive the served dashboard in Debian's Chromium through Playwright (screenshots kept).

CI installs ``chromium``; a missing browser is a failure, not a skip.
"""

from __future__ import annotations


import pytest

from serving import REPO, free_port, running, wait_until, workbench_command

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 768}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def dashboard_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}/workbench"
    with running(workbench_command() + ["serve", "--port", str(port)], url):
        yield url


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))



def test_compress_apply_and_compare(browser, dashboard_url):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dashboard_url)

    accuracy = page.locator(".wb-preview-accuracy div").first
    accuracy.wait_for()
    start = wait_until(lambda: "%" in accuracy.inner_text() and accuracy.inner_text(),
                       what="the preview accuracy")
    assert "Accuracy" in start
    shot(page, "01-compress")

    # Move the sparsity slider with the keyboard: 0.50 -> 0.60, one preview per step.
    page.locator(".wb-sparsity .noUi-handle").focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    moved = wait_until(lambda: accuracy.inner_text() != start and accuracy.inner_text(),
                       what="the preview to follow the slider")
    assert moved.strip().endswith("%") and moved != start
    shot(page, "02-slider-moved")

    page.locator(".wb-apply button").click()
    variants = page.locator(".wb-variant-list select")
    names = wait_until(lambda: [n for n in variants.evaluate(
        "e => [...e.options].map(o => o.text)") if n != "base"], what="a new variant")
    assert names[0].startswith("magnitude-")
    page.locator(".wb-added").get_by_text(names[0]).wait_for()
    shot(page, "03-applied")

    page.locator(".wb-tabs").get_by_text("Compare", exact=True).click()
    table = page.locator(".wb-variants-table")
    table.wait_for()
    table.get_by_text(names[0]).first.wait_for()
    assert table.get_by_text("base").count() >= 1
    shot(page, "04-compare")

    # Switching to quantization offers the quantizers, starting with uniform when registered.
    import workbench

    quantizers = workbench.methods("quantize")
    if quantizers:
        page.locator(".wb-tabs").get_by_text("Compress", exact=True).click()
        page.get_by_text("quantize", exact=True).click()
        method = page.locator(".wb-method select")
        expected = "uniform" if "uniform" in quantizers else quantizers[0]
        wait_until(lambda: method.input_value() == expected, what=f"method {expected}")
        shot(page, "05-quantize")
    assert errors == []
    page.close()

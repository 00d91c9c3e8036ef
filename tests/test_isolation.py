"""Served dashboards are isolated: each browser session has its own workbench Session.

``workbench serve`` calls :func:`workbench.app.create_app` once per browser session (Panel makes
a new Bokeh document for every page load), and each call builds a new
:meth:`Session.default`: a deep copy of the default model loaded from the disk cache, so what one
visitor applies never shows in another's variant list, and the cached weights are never
modified. Reloading a page is a new browser session, so it starts again from a fresh Session
(only the base model); keeping work across reloads is what workspaces are for
(:meth:`Session.save`). A failing Apply shows its error in the Compress tab and leaves the
dashboard working.

The browser tests drive Debian's Chromium through Playwright's async API (the page driver is
shared with ``benchmarks/serve_load.py``); every request to anything but loopback is aborted.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from conftest import state_equal
from serving import REPO, free_port, running, workbench_command

sys.path.insert(0, str(REPO / "benchmarks"))

from serve_load import (  # noqa: E402
    ARGS, CHROMIUM, ApplyFailed, DashboardPage, loopback_context)

TIMEOUT = 90.0  # seconds, per browser action
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def dashboard_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}/workbench"
    with running(workbench_command() + ["serve", "--port", str(port)], url):
        yield url


def in_browser(scenario):
    """Run ``await scenario(browser)`` with a fresh headless Chromium; its result."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is expected at {CHROMIUM} (apt-get install chromium)")
    async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")

    async def main():
        async with async_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS,
                                              headless=True)
            try:
                return await asyncio.wait_for(scenario(browser), 6 * TIMEOUT)
            finally:
                await browser.close()

    return asyncio.run(main())


async def open_dashboard(browser, url: str) -> tuple[DashboardPage, list]:
    """A page in its own browser context (own cookies: its own server session); page errors."""
    context = await loopback_context(browser)
    page = await context.new_page()
    errors: list = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dash = DashboardPage(page, TIMEOUT)
    await dash.goto(url)
    return dash, errors


async def failing_apply(dash: DashboardPage) -> str:
    """Press Apply, which must fail: the error it shows (or an AssertionError naming what the
    Apply added instead, with the settings the page shows)."""
    try:
        name = await dash.apply()
    except ApplyFailed as err:
        return str(err)
    method = await dash.page.locator(".wb-method select").input_value()
    extra = await dash.page.locator(".wb-tabs textarea").first.input_value()
    raise AssertionError(f"Apply added {name!r} instead of failing (page shows method "
                         f"{method!r}, extra {extra!r}; variants {await dash.variants()})")


async def shot(dash: DashboardPage, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await dash.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.mark.browser
@pytest.mark.slow
def test_two_browser_sessions_see_only_their_own_variants(dashboard_url):
    async def scenario(browser):
        (a, a_errors), (b, b_errors) = await asyncio.gather(open_dashboard(browser, dashboard_url),
                                                            open_dashboard(browser, dashboard_url))
        assert await a.variants() == ["base"] and await b.variants() == ["base"]

        await a.set_sparsity(0.60)  # A: magnitude 0.6
        await b.choose_method("random")  # B: random 0.3
        await b.set_sparsity(0.30)
        name_a, name_b = await asyncio.gather(a.apply(), b.apply())  # both at once
        assert (name_a, name_b) == ("magnitude-60", "random-30")
        assert await a.variants() == ["base", "magnitude-60"]
        assert await b.variants() == ["base", "random-30"]

        await a.open_tab("Compare")
        await b.open_tab("Compare")
        assert await a.table_names({"base", "magnitude-60"}) == ["base", "magnitude-60"]
        assert await b.table_names({"base", "random-30"}) == ["base", "random-30"]
        await shot(a, "isolation-a")
        await shot(b, "isolation-b")

        # A reload is a new browser session, hence a new workbench Session: only the base model.
        await a.reload()
        assert await a.variants() == ["base"]
        assert await b.variants() == ["base", "random-30"]  # B is unaffected
        assert a_errors == [] and b_errors == []

    in_browser(scenario)


@pytest.mark.browser
@pytest.mark.slow
def test_a_failing_apply_shows_its_error_and_the_rest_keeps_working(dashboard_url):
    async def scenario(browser):
        dash, errors = await open_dashboard(browser, dashboard_url)

        await dash.set_extra("bogus: 1")
        failed = await failing_apply(dash)
        assert failed == ("pruning method 'magnitude' does not take ['bogus']; "
                          "it accepts ['scope', 'exclude', 'per_layer_sparsity']")
        assert await dash.error() == failed  # shown in the Compress tab
        await shot(dash, "isolation-error")

        # N:M 2:4 cannot prune the default model's 25-input first layer ...
        await dash.set_extra("")
        await dash.choose_method("nm")
        failed = await failing_apply(dash)
        assert "features.0" in failed and "not divisible by m=4" in failed
        assert "skip_indivisible=True" in failed
        assert await dash.variants() == ["base"]  # nothing half-added

        # ... and does what the message suggests; the error goes away.
        await dash.set_extra("skip_indivisible: true")
        assert await dash.apply() == "nm-2:4"
        assert await dash.error() == ""
        await dash.choose_method("magnitude")
        await dash.set_extra("")
        await dash.set_sparsity(0.70)
        assert await dash.apply() == "magnitude-70"
        assert await dash.variants() == ["base", "nm-2:4", "magnitude-70"]

        await dash.open_tab("Compare")
        assert await dash.table_names({"base", "nm-2:4", "magnitude-70"}) == [
            "base", "nm-2:4", "magnitude-70"]
        await shot(dash, "isolation-after-error")
        assert errors == []

    in_browser(scenario)


def test_each_app_gets_its_own_session_and_the_cached_weights_stay_untouched(monkeypatch):
    from workbench.app import create_app
    from workbench.models.default import default_model_and_data
    from workbench.panels.dashboard import Dashboard

    made = []
    template = Dashboard.template
    monkeypatch.setattr(Dashboard, "template", lambda self: made.append(self) or template(self))
    cached, _ = default_model_and_data(progress=False)  # the weights in the disk cache
    one, two = create_app(), create_app()
    assert type(one).__name__ == type(two).__name__ == "FastListTemplate" and one is not two
    first, second = (d.session for d in made)
    assert first is not second and first.base is not second.base
    assert first.base.model is not second.base.model and first.base.model is not cached
    ptrs = {t.data_ptr() for t in first.base.model.state_dict().values()}
    assert ptrs.isdisjoint(t.data_ptr() for t in second.base.model.state_dict().values())
    assert state_equal(first.base.model, cached) and state_equal(second.base.model, cached)

    variant = made[0].state.add("prune", "magnitude", sparsity=0.9)  # through the dashboard
    layers = dict(variant.model.named_modules())
    weights = [layers[name].weight for name in variant.masks]
    assert len(weights) == 5  # LeNet-5: 2 conv + 3 linear layers, each pruned to ~90 % zeros
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.9, abs=0.01)
    assert made[0].state.variants == ["base", "magnitude-90"]
    assert made[1].state.variants == ["base"] and list(second.variants) == ["base"]
    assert state_equal(first.base.model, cached) and state_equal(second.base.model, cached)
    reloaded, _ = default_model_and_data(progress=False)
    assert state_equal(reloaded, cached)  # the disk cache is unchanged
    base_layers = dict(first.base.model.named_modules())
    assert all(bool((base_layers[name].weight != 0).all()) for name in variant.masks)

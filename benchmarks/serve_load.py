"""Benchmark: N browser sessions at once on one ``workbench serve`` (loopback only).

One ``workbench serve`` subprocess on a free 127.0.0.1 port, one headless Chromium (Debian's
``/usr/bin/chromium``) driven by Playwright's async API, and N pages, each in its own browser
context (its own cookies, so its own Bokeh session and its own workbench ``Session``). They
arrive ``--ramp`` seconds apart (2; 0 opens all at once) and then run at the same time; each:

1. opens the dashboard and waits for the live preview,
2. moves the sparsity slider to its own value (0.51, 0.52, …) and presses Apply (magnitude),
3. switches to the Compare tab and waits for its new variant in the table,
4. runs the default sweep (3 methods × 10 sparsities, about 2.5 s of CPU) and waits for the plot.

Meanwhile two probes time the server's answers: a GET of the app page every
``--page-interval`` seconds (15; each builds a whole fresh dashboard document, as for a new
visitor, so it is not sent more often: the probe must not become the load) and a GET of a small
static file every ``--static-interval`` seconds (1; its latency is the Tornado event loop's).
The server's resident memory (``VmRSS`` sampled every second, and the peak ``VmHWM``, both from
``/proc/<pid>/status``) is recorded.

Results go to ``benchmarks/results/serve_load.json``: the peak RSS, the per-session completion
times (and the time of each step), the probe latencies, and the machine's load average (on a
shared 2-core box other processes slow every number down).

Run: ``python benchmarks/serve_load.py`` (N=10: about three minutes on two cores shared with other
work at a load average of 10, less on idle ones);
``--sessions 4`` for a quicker run; ``--limit`` caps the wall time of the whole scenario.
``tests/test_load.py`` runs the same scenario with N=10 and asserts on the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serving import free_port, get, running, workbench_command  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "serve_load.json"
ARTIFACTS = REPO / "test-artifacts"  # a screenshot of each failed session
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 768}
ACTION_TIMEOUT_S = 120.0  # one step of one session (open, apply, compare, sweep)
LIMIT_S = 360.0  # the whole scenario
RAMP_S = 2.0  # session i arrives i * RAMP_S seconds after the first (then all run at once)
PAGE_PROBE_INTERVAL_S = 15.0  # each GET of the page builds a whole dashboard: not too often
STATIC_PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 60.0


class ApplyFailed(AssertionError):
    """Apply showed an error in the Compress tab (the text is the Alert's)."""


# --- the server's memory ------------------------------------------------------------------------
def python_pid(pid: int) -> int:
    """The Python process serving: ``pid`` itself, or its first Python descendant (a shim
    may stand in between)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            if "python" in os.path.basename(os.readlink(f"/proc/{p}/exe")):
                return p
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    raise AssertionError(f"no Python process under pid {pid}")


def memory_mb(pid: int) -> dict:
    """``{"rss_mb", "peak_rss_mb"}`` of a process (VmRSS and VmHWM of /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1))
          for k in ("VmRSS", "VmHWM")}
    return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_rss_mb": round(kb["VmHWM"] / 1024, 1)}


def memory_summary(before: dict, after: dict, samples: list, n: int) -> dict:
    """Peak memory of the run: the larger of ``VmHWM`` and the largest sampled ``VmRSS``.

    The kernel updates ``VmHWM`` lazily (RSS counters are cached per thread and folded in
    now and then), so a ``VmRSS`` sample can exceed the ``VmHWM`` read a moment later by a
    few hundred kB.
    """
    sampled = max(samples, default=None)
    peak = max(after["peak_rss_mb"], sampled or 0.0)
    return {"before": before, "after": after, "peak_rss_mb": peak, "max_sampled_rss_mb": sampled,
            "per_session_mb": round((peak - before["rss_mb"]) / n, 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


# --- the browser -------------------------------------------------------------------------------
def is_loopback_url(url: str) -> bool:
    """True for http(s)/ws(s) URLs of 127.0.0.1 or localhost, and for data:/blob: URLs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in ("127.0.0.1", "localhost")


async def loopback_context(browser, blocked: list | None = None):
    """A new browser context that aborts every request to anything but loopback; the
    ``blocked`` list collects them (the dashboard needs none: ``tests/test_offline.py``)."""
    context = await browser.new_context(viewport=VIEWPORT)

    async def block(route):
        if blocked is not None:
            blocked.append(route.request.url)
        await route.abort()

    await context.route(lambda url: not is_loopback_url(url), block)
    return context


# --- driving one dashboard page -----------------------------------------------------------------
async def wait_until(predicate, timeout: float, what: str):
    """Poll the async ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


# Watches an Alert's shadow DOM: "old" (text on show at the last reset), "cleared" (empty since),
# "shown" (text again after being empty). A MutationObserver sees every update the server sends
# (a poll could miss a short one), and the state is read in one evaluation, so it cannot
# interleave with an update the way two separate reads (text, then "was it cleared?") can.
_WATCH_ERROR = """(e, reset) => {
    const root = e.shadowRoot || e;
    const empty = () => !root.querySelector('p, li, pre, code');
    if (e.__wbError === undefined) {
        new MutationObserver(() => {
            if (empty()) e.__wbError = "cleared";
            else if (e.__wbError === "cleared") e.__wbError = "shown";
        }).observe(root, {childList: true, subtree: true, characterData: true});
    }
    if (reset || e.__wbError === undefined) e.__wbError = empty() ? "cleared" : "old";
    return e.__wbError;
}"""


# Whether the Bokeh model behind a text input/area element holds ``text`` (what the server got).
_MODEL_VALUE_IS = """(e, text) => {
    const index = window.Bokeh && window.Bokeh.index;
    if (!index || typeof index.all_views !== "function") return false;
    const view = [...index.all_views()].find(v => v.input_el === e);
    return view !== undefined && view.model.value === text;
}"""
# Set the element's text and fire the events Bokeh listens to ('input', then 'change').
_COMMIT_VALUE = """(e, text) => {
    e.value = text;
    e.dispatchEvent(new Event("input", {bubbles: true}));
    e.dispatchEvent(new Event("change", {bubbles: true}));
}"""


class DashboardPage:
    """The served dashboard in one Playwright page (async API), by its ``wb-*`` CSS classes."""

    def __init__(self, page, timeout: float = ACTION_TIMEOUT_S):
        self.page = page
        self.timeout = timeout
        page.set_default_timeout(timeout * 1000)

    async def goto(self, url: str) -> str:
        """Open the dashboard; the preview's accuracy text once it shows."""
        await self.page.goto(url, wait_until="commit")  # the page's scripts may take a while
        return await self.wait_ready()

    async def reload(self) -> str:
        await self.page.reload(wait_until="commit")
        return await self.wait_ready()

    async def wait_ready(self) -> str:
        accuracy = self.page.locator(".wb-preview-accuracy div").first
        await accuracy.wait_for()

        async def shown():
            text = await accuracy.inner_text()
            return "%" in text and text

        return await wait_until(shown, self.timeout, "the preview accuracy")

    # Compress tab
    async def variants(self) -> list[str]:
        """The names in the sidebar's variant list."""
        return await self.page.locator(".wb-variant-list select").evaluate(
            "e => [...e.options].map(o => o.text)")

    async def sparsity(self) -> float:
        return float(await self.page.locator(".wb-sparsity .bk-slider-value").inner_text())

    async def set_sparsity(self, value: float) -> None:
        """Move the slider with the keyboard (one 0.01 step, one preview, per key press)."""
        steps = round((value - await self.sparsity()) / 0.01)
        await self.page.locator(".wb-sparsity .noUi-handle").focus()
        for _ in range(abs(steps)):
            await self.page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")

        async def moved():
            return abs(await self.sparsity() - value) < 1e-9

        await wait_until(moved, self.timeout, f"the slider at {value:.2f}")

    async def choose_method(self, name: str) -> None:
        select = self.page.locator(".wb-method select")
        await select.select_option(name)

        async def chosen():  # committed: the Select's Bokeh model holds it (see set_extra)
            if await select.evaluate(_MODEL_VALUE_IS, name):
                return True
            if await select.input_value() == name:
                await select.evaluate("e => e.dispatchEvent(new Event('change'))")
            return False

        await wait_until(chosen, self.timeout, f"method {name}")

    async def set_extra(self, text: str) -> None:
        """Type ``text`` into the 'Extra parameters (YAML)' box (the Compress tab's text area)
        and commit it: returns once the box's Bokeh model holds the text.

        A text area sends its value to the server on 'change' (blur). That event can be lost:
        when the box is re-rendered between typing and blur, or after a programmatic update of
        the box, the browser sees no change and Bokeh never sends the value, and a later Apply
        runs with the old text. Once the model holds the value its message has been sent, ahead
        of any later click on the same websocket, and Panel handles pending value changes
        before button events. If it does not after the blur, the text is set again and
        committed with explicit input/change events.
        """
        box = self.page.locator(".wb-tabs textarea").first
        await box.fill(text)
        await box.blur()

        async def committed():
            if await box.evaluate(_MODEL_VALUE_IS, text):
                return True
            await box.evaluate(_COMMIT_VALUE, text)
            return False

        await wait_until(committed, self.timeout, f"the text area to commit {text!r}")

    async def error(self) -> str:
        """The Compress tab's error Alert ('' when hidden)."""
        alert = self.page.locator(".wb-error")
        if not await alert.is_visible():
            return ""
        return (await alert.locator("p, div").first.inner_text()).strip()

    async def _error_state(self, reset: bool = False) -> str:
        """The error Alert since the last ``reset``: "old", "cleared" or "shown" (_WATCH_ERROR)."""
        return await self.page.locator(".wb-error").evaluate(_WATCH_ERROR, reset)

    async def apply(self) -> str:
        """Press Apply; the new variant's name, or :class:`ApplyFailed` with the Alert's text.

        Apply clears the error before it runs, so an error on show counts as this Apply's once
        the Alert showed text again after it was seen empty (or its text is new). Reading the
        text, then separately whether the Alert was cleared, would race with the server: the
        previous error read just before the Apply's clear arrives, "cleared" just after, and a
        stale error taken for this Apply's (the Apply itself had the right settings).
        """
        before = set(await self.variants())
        previous = await self.error()
        await self._error_state(reset=True)
        await self.page.locator(".wb-apply button").click()

        async def outcome():
            new = [n for n in await self.variants() if n not in before]
            if new:
                return ("added", new[0])
            shown = await self._error_state() == "shown"  # then the text on show is new
            err = await self.error()
            if err and (shown or err != previous):
                return ("error", err)
            return None

        kind, value = await wait_until(outcome, self.timeout, "Apply to add a variant or fail")
        if kind == "error":
            raise ApplyFailed(value)
        await self.page.locator(".wb-added").get_by_text(value).wait_for()
        return value

    # tabs
    async def open_tab(self, title: str) -> None:
        await self.page.locator(".wb-tabs .bk-tab").get_by_text(title, exact=True).click()

    # Compare tab
    async def table_names(self, expected: set[str] | None = None) -> list[str]:
        """The ``name`` column of the Compare tab's table (waits for ``expected`` names)."""
        cells = self.page.locator(".wb-variants-table .tabulator-cell[tabulator-field='name']")

        async def names():
            found = [t.strip() for t in await cells.all_inner_texts()]
            return found if found and (expected is None or expected <= set(found)) else None

        return await wait_until(names, self.timeout, f"the Compare table to list {expected}")

    async def sweep(self) -> None:
        """Press Sweep (the default methods and grid) and wait for the plot."""
        await self.page.locator(".wb-sweep button").click()
        await self.page.locator(".js-plotly-plot .gtitle").get_by_text(
            "Accuracy vs sparsity").first.wait_for()


# --- the scenario ------------------------------------------------------------------------------
@dataclass
class SessionResult:
    index: int
    sparsity: float
    variant: str = ""
    variants: list = field(default_factory=list)
    table: list = field(default_factory=list)
    steps: dict = field(default_factory=dict)  # step -> seconds since this session started
    seconds: float | None = None  # completion time (None if it failed)
    error: str = ""
    blocked: list = field(default_factory=list)  # [step being done, URL] of aborted requests


def target_sparsity(i: int) -> float:
    return round(0.51 + 0.01 * (i % 40), 2)


class Blocked:
    """Collects aborted request URLs into ``items``, each with the step the session was in."""

    def __init__(self, items: list):
        self.items, self.step = items, "open"

    def append(self, url: str) -> None:
        self.items.append([self.step, url])


async def one_session(browser, url: str, i: int, timeout: float,
                      delay: float = 0.0) -> SessionResult:
    result = SessionResult(index=i, sparsity=target_sparsity(i))
    await asyncio.sleep(delay)
    start = time.monotonic()
    blocked = Blocked(result.blocked)
    steps = iter(["apply", "compare", "sweep", "done"])

    def mark(step):
        result.steps[step] = round(time.monotonic() - start, 3)
        blocked.step = next(steps)

    context = await loopback_context(browser, blocked)
    dash = None
    try:
        dash = DashboardPage(await context.new_page(), timeout)
        await dash.goto(url)
        mark("ready")
        await dash.set_sparsity(result.sparsity)
        result.variant = await dash.apply()
        result.variants = await dash.variants()
        mark("applied")
        await dash.open_tab("Compare")
        result.table = await dash.table_names({"base", result.variant})
        mark("compared")
        await dash.sweep()
        mark("swept")
        result.seconds = result.steps["swept"]
    except Exception as err:  # noqa: BLE001  reported per session; the others go on
        result.error = f"{type(err).__name__}: {err}".splitlines()[0]
        if dash is not None:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                await dash.page.screenshot(path=str(ARTIFACTS / f"serve-load-{i}.png"),
                                           timeout=10_000)
            except Exception:  # noqa: BLE001  the error above is what counts
                pass
    finally:
        await context.close()
    return result


async def probe(url: str, interval: float, stop: asyncio.Event, out: list, t0: float,
                check=lambda body: True) -> None:
    """GET ``url`` every ``interval`` s until ``stop``; each answer's latency into ``out``."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            status, body = await asyncio.to_thread(get, url, PROBE_TIMEOUT_S)
            ok = status == 200 and check(body)
        except Exception as err:  # noqa: BLE001  a timeout is a result here
            ok, status = False, f"{type(err).__name__}: {err}"
        out.append({"at": round(t - t0, 3), "seconds": round(time.monotonic() - t, 3),
                    "status": status, "ok": ok})
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


async def sample_memory(pid: int, interval: float, stop: asyncio.Event, out: list) -> None:
    while not stop.is_set():
        out.append(memory_mb(pid)["rss_mb"])
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


async def drive(url: str, pid: int, n: int, *, limit: float, timeout: float, ramp: float,
                page_interval: float, static_interval: float) -> dict:
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():
        raise AssertionError(f"Chromium is expected at {CHROMIUM} (apt-get install chromium)")
    out = {"page_probes": [], "static_probes": [], "rss_samples_mb": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS,
                                          headless=True)
        try:
            stop = asyncio.Event()
            t0 = time.monotonic()
            watchers = [
                asyncio.create_task(probe(url, page_interval, stop, out["page_probes"], t0,
                                          check=lambda body: "docs_json" in body)),
                asyncio.create_task(probe(static_url(url), static_interval, stop,
                                          out["static_probes"], t0)),
                asyncio.create_task(sample_memory(pid, 1.0, stop, out["rss_samples_mb"])),
            ]
            tasks = [asyncio.create_task(one_session(browser, url, i, timeout, i * ramp))
                     for i in range(n)]
            done, pending = await asyncio.wait(tasks, timeout=limit)
            for task in pending:
                task.cancel()
            out["wall_seconds"] = round(time.monotonic() - t0, 3)
            stop.set()
            await asyncio.gather(*watchers)
            out["sessions"] = [
                task.result() if task in done else
                SessionResult(index=i, sparsity=target_sparsity(i),
                              error=f"not done within the {limit:.0f} s limit")
                for i, task in enumerate(tasks)]
        finally:
            await browser.close()
    return out


def static_url(url: str) -> str:
    """A small static file of the same server: its latency is the event loop's."""
    root = url.rsplit("/", 1)[0]
    return f"{root}/static/extensions/panel/css/loading.css"


def step_summary(sessions: list, step: str) -> dict:
    """Seconds from a session's start to ``step`` (e.g. 'ready': the page is usable), over the
    sessions that got there; ``reached`` counts them."""
    seconds = sorted(s.steps[step] for s in sessions if step in s.steps)
    return {"reached": len(seconds), "min": seconds[0] if seconds else None,
            "median": seconds[len(seconds) // 2] if seconds else None,
            "max": seconds[-1] if seconds else None}


def latency_summary(probes: list) -> dict:
    seconds = sorted(p["seconds"] for p in probes)
    return {"count": len(seconds), "max": seconds[-1] if seconds else None,
            "median": seconds[len(seconds) // 2] if seconds else None,
            "mean": round(sum(seconds) / len(seconds), 3) if seconds else None,
            "all_ok": all(p["ok"] for p in probes)}


def run(n: int = 10, *, limit: float = LIMIT_S, timeout: float = ACTION_TIMEOUT_S,
        ramp: float = RAMP_S, page_interval: float = PAGE_PROBE_INTERVAL_S,
        static_interval: float = STATIC_PROBE_INTERVAL_S) -> dict:
    """Serve, drive ``n`` sessions at once, measure; the results as a JSON-ready dict."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/workbench"
    with running(workbench_command() + ["serve", "--port", str(port)], url) as (proc, _log):
        pid = python_pid(proc.pid)
        before = memory_mb(pid)  # after startup and the first (readiness) page
        cpu_before = cpu_seconds(pid)
        load_before = os.getloadavg()
        driven = asyncio.run(drive(url, pid, n, limit=limit, timeout=timeout, ramp=ramp,
                                   page_interval=page_interval, static_interval=static_interval))
        after = memory_mb(pid)
        server_cpu = round(cpu_seconds(pid) - cpu_before, 2)
        alive = proc.poll() is None
    sessions = driven["sessions"]
    times = [s.seconds for s in sessions if s.seconds is not None]
    return {
        "sessions": n,
        "completed": len(times),
        "wall_seconds": driven["wall_seconds"],
        "server_alive": alive,
        "server_cpu_seconds": server_cpu,
        "memory": memory_summary(before, after, driven["rss_samples_mb"], n),
        "completion_seconds": {"min": min(times, default=None), "max": max(times, default=None),
                               "mean": round(sum(times) / len(times), 3) if times else None},
        "ready_seconds": step_summary(sessions, "ready"),
        "page_probe_seconds": latency_summary(driven["page_probes"]),
        "static_probe_seconds": latency_summary(driven["static_probes"]),
        "blocked_requests": sorted({url for s in sessions for _, url in s.blocked}),
        "per_session": [asdict(s) for s in sessions],
        "page_probes": driven["page_probes"],
        "static_probes": driven["static_probes"],
        "settings": {"limit_seconds": limit, "action_timeout_seconds": timeout,
                     "ramp_seconds": ramp,
                     "page_probe_interval_seconds": page_interval,
                     "static_probe_interval_seconds": static_interval},
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                    "python": platform.python_version()},
    }


SUMMARY = ("sessions", "completed", "wall_seconds", "server_cpu_seconds", "memory",
           "completion_seconds", "ready_seconds", "page_probe_seconds", "static_probe_seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", "-n", type=int, default=10, help="concurrent sessions (10)")
    parser.add_argument("--limit", type=float, default=LIMIT_S,
                        help=f"wall-time limit of the scenario in seconds ({LIMIT_S:.0f})")
    parser.add_argument("--timeout", type=float, default=ACTION_TIMEOUT_S,
                        help=f"time limit of one step in seconds ({ACTION_TIMEOUT_S:.0f})")
    parser.add_argument("--ramp", type=float, default=RAMP_S,
                        help=f"seconds between two sessions' arrivals ({RAMP_S:g}; 0: all at once)")
    parser.add_argument("--page-interval", type=float, default=PAGE_PROBE_INTERVAL_S,
                        help="seconds between GETs of the app page")
    parser.add_argument("--static-interval", type=float, default=STATIC_PROBE_INTERVAL_S,
                        help="seconds between GETs of a static file")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output ({OUT.name})")
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    result = run(args.sessions, limit=args.limit, timeout=args.timeout, ramp=args.ramp,
                 page_interval=args.page_interval, static_interval=args.static_interval)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in SUMMARY}, indent=2))
    for s in result["per_session"]:
        if s["error"]:
            print(f"session {s['index']}: {s['error']}", file=sys.stderr)
    print(f"written to {args.out}")
    return 0 if result["completed"] == result["sessions"] else 1


if __name__ == "__main__":
    sys.exit(main())

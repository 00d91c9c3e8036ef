"""The served dashboard's layout at a laptop (1366×768) and a projector (1024×768) size.

Every tab is clicked (tabs may build lazily) and, once its controls have settled, checked:
no two visible controls of different widgets overlap, none is cut off at the right edge (unless
a horizontally scrollable container holds it), each is reachable (scrolled into view, its centre
hit-tests to itself, not to something lying on top), and the sidebar does not overlap the main
area. A screenshot per tab and size goes to test-artifacts/layout-<width>-<tab>.png.
"""

from __future__ import annotations

import time

import pytest

from serving import REPO, free_port, running, wait_until, workbench_command

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
SIZES = [(1366, 768), (1024, 768)]
TABS = ["Compress", "Compare", "Landscape", "Hessian", "Subspace", "Geometry", "Relevance",
        "Robustness", "Speed"]
TIMEOUT_MS = 120_000
SLACK = 2  # px of overlap/overhang tolerated (borders, focus rings, sub-pixel rounding)

# Helpers shared by the page-side functions below: walk every shadow root, find the element a
# point hits through nested shadow roots, and test containment across shadow boundaries.
JS_LIB = """
const SEL = 'button, input:not([type=hidden]), select, textarea, .noUi-handle, [role=slider], '
          + '.bk-tab, [role=tab]';
const all = [];
(function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.matches(SEL)) all.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
})(document);
const up = el => el.parentNode instanceof ShadowRoot ? el.parentNode.host
                 : (el.parentElement || (el.getRootNode() instanceof ShadowRoot
                                         ? el.getRootNode().host : null));
const holds = (a, b) => { for (let e = b; e; e = up(e)) if (e === a) return true; return false; };
const visible = el => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0
    && el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
};
const hit = (x, y) => {
  let el = document.elementFromPoint(x, y);
  while (el && el.shadowRoot) {
    const inner = el.shadowRoot.elementFromPoint(x, y);
    if (!inner || inner === el) break;
    el = inner;
  }
  return el;
};
const owner = el => { const r = el.getRootNode(); return r instanceof ShadowRoot ? r.host : null; };
const describe = el => {
  const r = el.getBoundingClientRect();
  const text = el.matches(SEL) ? (el.getAttribute('aria-label') || el.innerText || el.value
                || el.placeholder || '').toString().replace(/\\s+/g, ' ').trim().slice(0, 30) : '';
  const host = owner(el);
  return `${el.tagName.toLowerCase()}${el.className && typeof el.className === 'string'
    ? '.' + el.className.trim().split(/\\s+/).join('.') : ''} "${text}" in `
    + `${host ? host.tagName.toLowerCase() + '.' + [...host.classList].join('.') : 'document'}`
    + ` @${Math.round(r.left)},${Math.round(r.top)} ${Math.round(r.width)}x${Math.round(r.height)}`;
};
const controls = all.filter(visible);
"""

# How many controls are visible and where (a fingerprint to see the tab has settled).
FINGERPRINT = "() => {" + JS_LIB + """
  return controls.map(c => { const r = c.getBoundingClientRect();
    return [c.tagName, Math.round(r.left), Math.round(r.top), Math.round(r.width)].join(); })
    .join('|');
}"""

# Pairs of controls (of different widgets) whose boxes intersect by more than SLACK px.
OVERLAPS = "slack => {" + JS_LIB + """
  const out = [];
  const boxes = controls.map(c => [c, c.getBoundingClientRect(), owner(c)]);
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, ra, oa] = boxes[i], [b, rb, ob] = boxes[j];
    if (oa === ob || holds(a, b) || holds(b, a)) continue;  // parts of one widget
    const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
    const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
    if (w > slack && h > slack) out.push(describe(a) + '  <->  ' + describe(b));
  }
  return out;
}"""

# Controls reaching past the edge of the page or of a clipping container. Only a widget's own
# scroller (a wide table) may hold a control out of sight: a layout that scrolls sideways does
# not count, nor do tab headers scrolled out of sight (headless Chromium, like macOS, shows no
# scrollbar, so nothing tells the user that more tabs exist).
CUT_OFF = "slack => {" + JS_LIB + """
  const page = document.documentElement, out = [];
  for (const c of controls) {
    const r = c.getBoundingClientRect();
    let cut = null;
    for (let e = up(c); e && !cut; e = up(e)) {
      if (getComputedStyle(e).overflowX === 'visible') continue;
      const left = e.getBoundingClientRect().left + e.clientLeft, right = left + e.clientWidth;
      if (r.right > right + slack || r.left < left - slack) cut = e;
    }
    if (!cut && (r.right > page.clientWidth + slack || r.left < -slack)) cut = page;
    if (!cut) continue;
    const own = owner(c), tab = c.matches('.bk-tab, [role=tab]');
    if (cut !== page && own && holds(own, cut) && !tab
        && ['auto', 'scroll'].includes(getComputedStyle(cut).overflowX)) continue;
    out.push(describe(c) + ' reaches past ' + describe(cut));
  }
  return out;
}"""

# Scroll each control into view; report those whose centre hit-tests to something unrelated.
COVERED = "() => {" + JS_LIB + """
  const out = [];
  for (const c of controls) {
    c.scrollIntoView({block: 'center', inline: 'center'});
    const r = c.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) {
      out.push(describe(c) + ' is out of the viewport after scrolling'); continue; }
    const h = hit(x, y);
    if (!h || !(h === c || holds(c, h) || holds(h, c)))
      out.push(describe(c) + ' is covered by ' + (h ? describe(h) : 'nothing'));
  }
  window.scrollTo(0, 0);
  return out;
}"""

BOXES = """() => { const box = s => { const e = document.querySelector(s); if (!e) return null;
  const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, r.width]; };
  return {sidebar: box('#sidebar'), main: box('#main'), width: innerWidth,
          scrollWidth: document.documentElement.scrollWidth}; }"""



def settled(page, what: str, quiet: float = 1.5, timeout: float = 180.0) -> None:
    """Wait until the page's controls stop appearing or moving for ``quiet`` seconds."""
    state = {"print": None, "since": time.monotonic()}

    def still():
        now = page.evaluate(FINGERPRINT)
        if now != state["print"] or not now:
            state.update(print=now, since=time.monotonic())
            return False
        spinning = page.locator(".pn-loading, .bk-loading").evaluate_all(
            "es => es.filter(e => e.checkVisibility()).length")
        return not spinning and time.monotonic() - state["since"] >= quiet

    wait_until(still, timeout=timeout, what=f"{what} to settle")


@pytest.fixture(scope="module")
def dashboard_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}/workbench"
    # readiness is polled on a static file: polling the app would build a session per try
    static = f"http://127.0.0.1:{port}/static/js/bokeh.min.js"
    with running(workbench_command() + ["serve", "--port", str(port)], static, timeout=300):
        yield url


@pytest.mark.parametrize("width,height", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_no_overlap_no_cut_off_controls(browser, dashboard_url, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dashboard_url)
    tabs = page.locator(".wb-tabs .bk-tab")
    wait_until(lambda: tabs.count() == len(TABS), what="the tab headers")
    assert tabs.all_inner_texts() == TABS

    problems = []
    for title in TABS:
        tab = tabs.filter(has_text=title)
        tab.click()
        wait_until(lambda: "bk-active" in (tab.get_attribute("class") or ""),
                   what=f"the {title} tab to become active")
        # the active tab's own content: at least one control below the tab headers
        header_bottom = tab.bounding_box()["y"] + tab.bounding_box()["height"]
        wait_until(lambda: page.locator(".wb-tabs").locator(
            "button, input, select, textarea").evaluate_all(
            "(es, y) => es.filter(e => e.checkVisibility()"
            " && e.getBoundingClientRect().top > y).length", header_bottom),
            what=f"the {title} tab's controls")
        settled(page, f"the {title} tab")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"layout-{width}-{title.lower()}.png"))

        boxes = page.evaluate(BOXES)
        sidebar, main = boxes["sidebar"], boxes["main"]
        assert sidebar and main, "the template's #sidebar and #main are expected"
        if sidebar[4] > 0:  # the sidebar is open
            overlap = sidebar[2] - main[0]
            if overlap > SLACK:
                problems.append(f"{title}: the sidebar overlaps the main area by {overlap:.0f}px")
        if boxes["scrollWidth"] > boxes["width"] + SLACK:
            problems.append(f"{title}: the page scrolls sideways ({boxes['scrollWidth']}px wide)")
        problems += [f"{title}: overlap {p}" for p in page.evaluate(OVERLAPS, SLACK)]
        problems += [f"{title}: cut off {p}" for p in page.evaluate(CUT_OFF, SLACK)]
        problems += [f"{title}: {p}" for p in page.evaluate(COVERED)]
    page.close()
    assert problems == [], f"{len(problems)} layout problems at {width}×{height}:\n" + \
        "\n".join(problems)
    assert errors == []


# A page with one planted defect of each kind, each control in its own shadow root (as Bokeh
# renders them): the checks above must find exactly these, so they cannot pass vacuously.
PLANTED = """<body style="margin:0"><div id="app"></div><script>
const widget = (parent, html, style = '') => {
  const host = document.createElement('div'); host.style.cssText = style;
  parent.appendChild(host); host.attachShadow({mode: 'open'}).innerHTML = html; return host; };
const app = document.getElementById('app');
widget(app, '<button>fine</button>', 'position:absolute; left:10px; top:10px');
widget(app, '<button style="width:80px">under</button>', 'position:absolute; left:10px; top:60px');
widget(app, '<button style="width:80px">over</button>', 'position:absolute; left:50px; top:70px');
const clip = widget(app, '<div style="width:100px; overflow:hidden"><button style="margin-left:'
  + '150px">clipped</button></div>', 'position:absolute; left:10px; top:120px');
widget(app, '<div style="width:100px; overflow-x:scroll"><button style="margin-left:150px">'
  + 'scrolled</button></div>', 'position:absolute; left:10px; top:170px');
widget(app, '<div style="width:100px; overflow-x:auto; display:flex"><div class="bk-tab" '
  + 'style="min-width:80px">one</div><div class="bk-tab" style="min-width:80px">two</div></div>',
  'position:absolute; left:200px; top:10px');
widget(app, '<input value="hidden">', 'position:absolute; left:10px; top:240px');
widget(app, '<div style="width:200px; height:40px; background:red"></div>',
  'position:absolute; left:0; top:230px');
</script></body>"""


def test_checks_find_planted_defects(browser):
    page = browser.new_page(viewport={"width": 400, "height": 400})
    page.set_content(PLANTED)
    overlaps = page.evaluate(OVERLAPS, SLACK)
    assert len(overlaps) == 1 and '"under"' in overlaps[0] and '"over"' in overlaps[0]
    cut = page.evaluate(CUT_OFF, SLACK)
    assert [c.split(" in ")[0] for c in cut] == ['button "clipped"', 'div.bk-tab "two"'], cut
    covered = page.evaluate(COVERED)
    assert [c.split(" in ")[0] for c in covered] == ['button "under"', 'input "hidden"'], covered
    assert "covered by button" in covered[0] and "covered by div" in covered[1]
    page.close()

// LayerEditor: one row per layer. A bar whose length is the layer's weight count and whose
// colour is its sensitivity, and a slider handle for the layer's sparsity (0 … 0.99) or bit width.
// Plain ES module in anywidget's format (no bundler): JupyterLab runs it through anywidget, Panel
// through pn.custom.AnyWidgetComponent. Python bytes arrive as a DataView in both.
// Keys: ← ↓ / → ↑ one step, Page Down / Page Up ten steps, Home / End the ends.

const MAX_SPARSITY = 0.99;
const STEP = 0.01;

/** A DataView over a bytes field (DataView in anywidget and Panel; ArrayBuffer or null too). */
function asView(value) {
  if (value instanceof DataView) return value;
  if (value instanceof ArrayBuffer) return new DataView(value);
  if (ArrayBuffer.isView(value)) return new DataView(value.buffer, value.byteOffset, value.byteLength);
  return new DataView(new ArrayBuffer(0));
}

/** Little-endian float32 values of a bytes field (empty if there are none). */
function floats(value) {
  const view = asView(value);
  const out = new Float32Array(Math.floor(view.byteLength / 4));
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/** Sequential colour for t in [0, 1]: pale yellow (harmless) to deep red (sensitive). */
function heat(t) {
  const c = Math.max(0, Math.min(1, t));
  return `hsl(${Math.round(48 * (1 - c))}, 85%, ${Math.round(86 - 44 * c)}%)`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  return `${Math.round(n)}`;
}

function render({ model, el: host }) {
  const root = el("div", "wb-le");
  host.appendChild(root);
  let rows = [];
  let local = null; // values being dragged, not yet sent to Python
  let dragging = -1;

  const isBits = () => model.get("mode") === "bits";
  const choices = () => [...(model.get("bits_choices") || [8])].map(Number).sort((a, b) => a - b);
  const layers = () => model.get("layers") || [];

  function fallback() {
    return isBits() ? choices()[choices().length - 1] : 0;
  }

  function current() {
    const vals = local || model.get("value") || [];
    return layers().map((_, i) => (vals[i] === undefined || vals[i] === null ? fallback() : Number(vals[i])));
  }

  function toFraction(v) {
    if (!isBits()) return Math.max(0, Math.min(1, v));
    const c = choices();
    const i = c.indexOf(v);
    return c.length > 1 ? Math.max(0, i) / (c.length - 1) : 1;
  }

  function fromFraction(f) {
    const x = Math.max(0, Math.min(1, f));
    if (!isBits()) return Math.min(MAX_SPARSITY, Number((Math.round(x / STEP) * STEP).toFixed(2)));
    const c = choices();
    return c[Math.round(x * (c.length - 1))];
  }

  function stepped(v, steps) {
    if (!isBits()) {
      const next = Math.round((v + steps * STEP) / STEP) * STEP;
      return Math.max(0, Math.min(MAX_SPARSITY, Number(next.toFixed(2))));
    }
    const c = choices();
    const i = Math.max(0, c.indexOf(v));
    return c[Math.max(0, Math.min(c.length - 1, i + steps))];
  }

  function describe(v) {
    if (isBits()) return `${v} bit`;
    return `${Math.round(v * 100)}%`;
  }

  function commit() {
    if (!local) return;
    model.set("value", local.slice());
    model.save_changes();
    local = null;
  }

  function setValue(i, v, send) {
    local = current();
    if (local[i] === v && !send) return;
    local[i] = v;
    paint();
    if (send) commit();
  }

  function paint() {
    const vals = current();
    const sizes = floats(model.get("sizes"));
    rows.forEach((row, i) => {
      const v = vals[i];
      const f = toFraction(v);
      row.fill.style.width = `${100 * f}%`;
      row.handle.style.left = `${100 * f}%`;
      row.handle.setAttribute("aria-valuenow", String(v));
      row.handle.setAttribute("aria-valuetext", describe(v));
      row.value.textContent = describe(v);
      row.value.title = isBits()
        ? `${compact((v * (sizes[i] || 0)) / 8)} bytes of weights`
        : `${compact(v * (sizes[i] || 0))} of ${compact(sizes[i] || 0)} weights pruned`;
    });
    let total = 0;
    let weighted = 0;
    vals.forEach((v, i) => {
      total += sizes[i] || 0;
      weighted += v * (sizes[i] || 0);
    });
    summary.textContent = !total ? "" : isBits()
      ? `average ${(weighted / total).toFixed(2)} bit · ${compact(weighted / 8)} bytes of weights`
      : `overall ${(100 * weighted / total).toFixed(1)}% of ${compact(total)} weights pruned`;
  }

  const summary = el("div", "wb-le-summary");

  function onKey(i, event) {
    const v = current()[i];
    const big = isBits() ? 2 : 10;
    const moves = {
      ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: big, PageDown: -big,
    };
    let next;
    if (event.key in moves) next = stepped(v, moves[event.key]);
    else if (event.key === "Home") next = fromFraction(0);
    else if (event.key === "End") next = fromFraction(1);
    else return;
    event.preventDefault();
    event.stopPropagation();
    if (next !== v) setValue(i, next, true);
  }

  function pointerValue(track, event) {
    const rect = track.getBoundingClientRect();
    return fromFraction(rect.width ? (event.clientX - rect.left) / rect.width : 0);
  }

  function build() {
    root.replaceChildren();
    rows = [];
    const names = layers();
    const sizes = floats(model.get("sizes"));
    const sens = floats(model.get("sensitivity"));
    const hasSens = sens.length === names.length && names.length > 0;
    const maxSize = Math.max(1, ...sizes);
    const maxSens = hasSens ? Math.max(1e-12, ...Array.from(sens, Math.abs)) : 1;
    const what = isBits() ? "bit width" : "sparsity";

    const legend = el("div", "wb-le-legend");
    legend.append(el("span", "", "bar length: weights per layer"));
    if (hasSens) {
      const key = el("span", "wb-le-key");
      key.append(el("span", "wb-le-gradient"), el("span", "", model.get("sensitivity_label") || "sensitivity"));
      legend.append(key);
    }
    root.append(legend);

    const grid = el("div", "wb-le-grid");
    grid.setAttribute("role", "group");
    grid.setAttribute("aria-label", `per-layer ${what}`);
    grid.append(el("div", "wb-le-head", "layer"), el("div", "wb-le-head", "weights"),
      el("div", "wb-le-head", what), el("div", "wb-le-head", ""));
    names.forEach((name, i) => {
      const size = sizes[i] || 0;
      const label = el("div", "wb-le-name", name);
      label.title = name;

      const sizeCell = el("div", "wb-le-size");
      const bar = el("div", "wb-le-bar");
      bar.style.width = `calc(${size / maxSize} * (100% - 5em))`; // the rest: chip, count
      if (hasSens) {
        // the colour twice: on the bar, and on a chip that stays visible for tiny layers
        const chip = el("span", "wb-le-chip");
        chip.style.background = bar.style.background = heat(sens[i] / maxSens);
        sizeCell.title = `${model.get("sensitivity_label") || "sensitivity"}: ${Number(sens[i].toFixed(4))}`;
        sizeCell.dataset.sensitivity = String(sens[i]);
        sizeCell.append(chip);
      }
      sizeCell.append(bar, el("span", "wb-le-count", compact(size)));

      const track = el("div", "wb-le-track");
      const fill = el("div", "wb-le-fill");
      const handle = el("div", "wb-le-handle");
      handle.tabIndex = 0;
      handle.setAttribute("role", "slider");
      handle.setAttribute("aria-label", `${name} ${what}`);
      const c = choices();
      handle.setAttribute("aria-valuemin", String(isBits() ? c[0] : 0));
      handle.setAttribute("aria-valuemax", String(isBits() ? c[c.length - 1] : MAX_SPARSITY));
      handle.addEventListener("keydown", (e) => onKey(i, e));
      track.append(fill, handle);
      track.addEventListener("pointerdown", (e) => {
        if (e.button !== 0) return;
        e.preventDefault();
        handle.focus();
        track.setPointerCapture(e.pointerId);
        dragging = i;
        setValue(i, pointerValue(track, e), model.get("continuous_update"));
      });
      track.addEventListener("pointermove", (e) => {
        if (dragging === i) setValue(i, pointerValue(track, e), model.get("continuous_update"));
      });
      const release = () => {
        if (dragging !== i) return;
        dragging = -1;
        commit();
      };
      track.addEventListener("pointerup", release);
      track.addEventListener("pointercancel", release);
      track.addEventListener("lostpointercapture", release);

      const value = el("div", "wb-le-value");
      const row = { track, fill, handle, value };
      rows.push(row);
      for (const cell of [label, sizeCell, track, value]) cell.dataset.layer = name;
      grid.append(label, sizeCell, track, value);
    });
    root.append(grid, summary);
    paint();
  }

  const rebuildOn = ["layers", "sizes", "sensitivity", "sensitivity_label", "mode", "bits_choices"];
  const onValues = () => {
    if (dragging < 0) {
      local = null;
      paint();
    }
  };
  rebuildOn.forEach((k) => model.on(`change:${k}`, build));
  model.on("change:value", onValues);
  build();
  return () => {
    rebuildOn.forEach((k) => model.off(`change:${k}`, build));
    model.off("change:value", onValues);
  };
}

export default { render };

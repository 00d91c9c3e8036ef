// SampleGrid: samples (columns) × variants (rows). Each cell draws the sample's image on a canvas
// from a binary buffer, optionally with a relevance heatmap on top, and shows the variant's
// prediction and margin. Hover highlights a column; click (or ← → with the grid focused) selects
// it and `selected` goes back to Python; Esc clears. Setting `selected` in Python highlights it.
// Plain ES module in anywidget's format (no bundler): JupyterLab runs it through anywidget, Panel
// through pn.custom.AnyWidgetComponent. Python bytes arrive as a DataView in both.

const HEAT_ALPHA = 0.65;
const POSITIVE = [215, 25, 28];
const NEGATIVE = [44, 123, 182];

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

function bytes(value) {
  const view = asView(value);
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Everything the cells need, decoded once per rebuild. */
function decode(model) {
  const [c, h, w] = (model.get("image_shape") || [1, 1, 1]).map(Number);
  const isFloat = model.get("image_dtype") !== "uint8";
  const images = isFloat ? floats(model.get("images")) : bytes(model.get("images"));
  const per = Math.max(1, c * h * w);
  const n = Math.floor(images.length / per);
  const variants = model.get("variants") || [];
  const heat = floats(model.get("heatmaps"));
  const hw = h * w;
  let heatOf = null;
  if (hw && heat.length === variants.length * n * hw && heat.length) heatOf = (v, i) => (v * n + i) * hw;
  else if (hw && heat.length === n * hw && heat.length) heatOf = (_v, i) => i * hw;
  return {
    c, h, w, n, images, isFloat, variants, heat, heatOf,
    labels: floats(model.get("labels")),
    predictions: floats(model.get("predictions")),
    margins: floats(model.get("margins")),
    indices: model.get("indices") || [],
    classes: model.get("class_names") || [],
    size: Number(model.get("cell_size")) || 56,
    showHeat: !!model.get("show_heatmap"),
  };
}

function draw(canvas, d, v, i) {
  const { c, h, w, images, isFloat } = d;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(w, h);
  const hw = h * w;
  const base = i * c * hw;
  const level = (x) => (isFloat ? 255 * Math.max(0, Math.min(1, x)) : x);
  const start = d.showHeat && d.heatOf ? d.heatOf(v, i) : -1;
  let peak = 0;
  if (start >= 0) for (let p = 0; p < hw; p++) peak = Math.max(peak, Math.abs(d.heat[start + p]));
  for (let p = 0; p < hw; p++) {
    let rgb;
    if (c >= 3) rgb = [level(images[base + p]), level(images[base + hw + p]), level(images[base + 2 * hw + p])];
    else {
      const g = level(images[base + p]);
      rgb = [g, g, g];
    }
    if (peak > 0) {
      const r = d.heat[start + p];
      const a = (HEAT_ALPHA * Math.abs(r)) / peak;
      const tint = r > 0 ? POSITIVE : NEGATIVE;
      rgb = rgb.map((x, k) => (1 - a) * x + a * tint[k]);
    }
    out.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * p);
  }
  ctx.putImageData(out, 0, 0);
  canvas.style.width = `${d.size}px`;
  canvas.style.height = `${Math.round((d.size * h) / Math.max(1, w))}px`;
}

function render({ model, el: host }) {
  const root = el("div", "wb-sg");
  root.tabIndex = 0;
  root.setAttribute("role", "grid");
  root.setAttribute("aria-label", "samples by variants: arrow keys select a sample, Escape clears");
  host.appendChild(root);
  let columns = []; // columns[i] = elements of sample i (header and one cell per variant)
  let hovered = -1;
  let n = 0;

  const selected = () => {
    const s = Number(model.get("selected"));
    return Number.isInteger(s) && s >= 0 && s < n ? s : -1;
  };

  function mark() {
    const s = selected();
    columns.forEach((nodes, i) => {
      for (const node of nodes) {
        node.classList.toggle("wb-sg-selected", i === s);
        node.classList.toggle("wb-sg-hover", i === hovered && i !== s);
        if (node.getAttribute("role") === "gridcell") node.setAttribute("aria-selected", String(i === s));
      }
    });
    root.dataset.selected = String(s);
  }

  function select(i) {
    model.set("selected", i);
    model.save_changes();
    mark();
  }

  const name = (d, k) => (d.classes[k] !== undefined ? d.classes[k] : String(k));

  function build() {
    root.replaceChildren();
    const d = decode(model);
    n = d.n;
    columns = Array.from({ length: n }, () => []);
    let peak = 0; // one scale for every margin bar, so rows (variants) compare
    for (const m of d.margins) if (Number.isFinite(m)) peak = Math.max(peak, Math.abs(m));
    const grid = el("div", "wb-sg-grid");
    grid.style.gridTemplateColumns = `max-content repeat(${n}, ${d.size + 8}px)`;
    grid.append(el("div", "wb-sg-corner", n ? "sample" : "no samples"));
    for (let i = 0; i < n; i++) {
      const head = el("div", "wb-sg-head");
      head.setAttribute("role", "columnheader");
      head.append(el("div", "wb-sg-index", `#${d.indices[i] !== undefined ? d.indices[i] : i}`));
      if (d.labels.length === n) head.append(el("div", "wb-sg-label", `label ${name(d, d.labels[i])}`));
      head.dataset.sample = String(i);
      columns[i].push(head);
      grid.append(head);
    }
    d.variants.forEach((variant, v) => {
      const rowHead = el("div", "wb-sg-variant", variant);
      rowHead.title = variant;
      rowHead.setAttribute("role", "rowheader");
      grid.append(rowHead);
      for (let i = 0; i < n; i++) {
        const cell = el("div", "wb-sg-cell");
        cell.setAttribute("role", "gridcell");
        cell.dataset.sample = String(i);
        cell.dataset.variant = variant;
        const canvas = el("canvas", "wb-sg-image");
        draw(canvas, d, v, i);
        cell.append(canvas);
        const k = v * n + i;
        if (k < d.predictions.length) {
          const pred = d.predictions[k];
          const margin = k < d.margins.length ? d.margins[k] : NaN;
          const line = el("div", "wb-sg-pred");
          line.append(el("span", "wb-sg-class", name(d, pred)));
          if (!Number.isNaN(margin)) line.append(el("span", "wb-sg-margin", margin.toFixed(2)));
          cell.append(line);
          if (!Number.isNaN(margin)) {
            const bar = el("div", "wb-sg-marginbar");
            bar.style.width = `${peak ? (100 * Math.abs(margin)) / peak : 0}%`;
            cell.append(bar);
          }
          if (d.labels.length === n) cell.classList.add(pred === d.labels[i] ? "wb-sg-right" : "wb-sg-wrong");
          cell.title = `${variant}, sample #${d.indices[i] !== undefined ? d.indices[i] : i}: `
            + `predicts ${name(d, pred)}, margin ${Number.isNaN(margin) ? "?" : margin.toFixed(3)}`;
        }
        cell.addEventListener("click", () => select(selected() === i ? -1 : i));
        cell.addEventListener("mouseenter", () => {
          hovered = i;
          mark();
        });
        columns[i].push(cell);
        grid.append(cell);
      }
    });
    columns.forEach((nodes, i) => nodes[0].addEventListener("click", () => select(selected() === i ? -1 : i)));
    root.append(grid);
    mark();
  }

  root.addEventListener("mouseleave", () => {
    hovered = -1;
    mark();
  });
  root.addEventListener("keydown", (event) => {
    if (!n) return;
    const s = selected();
    const moves = {
      ArrowRight: s < 0 ? 0 : Math.min(n - 1, s + 1),
      ArrowLeft: s < 0 ? n - 1 : Math.max(0, s - 1),
      Home: 0,
      End: n - 1,
      Escape: -1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    event.stopPropagation();
    if (moves[event.key] !== s) select(moves[event.key]);
  });

  const rebuildOn = ["images", "image_shape", "image_dtype", "heatmaps", "show_heatmap", "variants",
    "indices", "labels", "class_names", "predictions", "margins", "cell_size"];
  rebuildOn.forEach((k) => model.on(`change:${k}`, build));
  model.on("change:selected", mark);
  build();
  return () => {
    rebuildOn.forEach((k) => model.off(`change:${k}`, build));
    model.off("change:selected", mark);
  };
}

export default { render };

// The Coverage panel: a heat map of every model (rows) against every inference/cloud worker (columns) on one
// <canvas> (heatmap.js), and the same models as a paged table with their coverage and a Distribute button.
// Hovering a cell names its model, worker and state; clicking a row of the map offers to distribute that
// model to the workers missing it, as the table's button does, and the job's bars show under its table row.
// A pinned model's row says how many serving copies its pin wants and how many serve it (GET /api/v1/pins).
import { api } from "./api.js";
import { app } from "./app.js";
import { cluster } from "./cluster.js";
import { $, breakable, clampPage, h, keepFocus, renderPager } from "./dom.js";
import { plural } from "./format.js";
import { HeatMap } from "./heatmap.js";
import { JobWatch } from "./jobwatch.js";
import { countsText, failureGroups, inlineBars, isOver, phaseCounts } from "./progress.js";

const PAGE = 25;
const LABELS_FROM = 14; // px per column from which every column is labelled with its worker's name
// Palette index = cell state (the legend in dashboard.html uses the same colours).
const STATES = ["has", "differs", "missing", "offline"];
const COLORS = ["#2f9e5b", "#d98b1f", "#d64545", "#b9bec7"];
const SAY = { has: "has it", differs: "has another digest", missing: "missing", offline: "missing, worker offline" };

const view = { page: 0, jobs: new Map(), rows: [], cols: [], cells: new Uint8Array(0), map: null, marked: false,
  pins: new Map() };

// Read with every cluster refresh; a failure keeps the last answer (the pin chips are a hint, not the map).
async function loadPins() {
  try {
    const found = await api("GET", "/api/v1/pins");
    view.pins = new Map(found.pins.map((p) => [p.model, p]));
    renderTable();
  } catch { /* the controller's banner already says what is wrong */ }
}

// "pinned ×2 (1 serving)", or "pinned: all" for a pin on every eligible worker.
function pinChip(m) {
  const pin = view.pins.get(m.name);
  if (!pin) return "";
  const wanted = pin.replicas === null ? "all" : `×${pin.replicas}`;
  const short = pin.replicas_serving < pin.replicas_wanted;
  return h("span", { class: `chip pin ${short ? "s-retrying" : "s-completed"}`,
    title: `pin wants ${pin.replicas_wanted} serving ${pin.replicas_wanted === 1 ? "copy" : "copies"}; `
      + `${pin.replicas_serving} serving${pin.serving.length ? `: ${pin.serving.join(", ")}` : ""}`,
    dataset: { replicasWanted: pin.replicas_wanted, replicasServing: pin.replicas_serving } },
  `pinned ${wanted} (${pin.replicas_serving} serving)`);
}

const isOnline = (wid) => Boolean((cluster.byId.get(wid) || {}).online);
const partial = (m) => m.coverage < 100;

function shownModels() {
  const text = $("coverage-filter").value.trim().toLowerCase();
  const partialOnly = $("coverage-partial").checked;
  return cluster.models
    .filter((m) => (!text || m.name.toLowerCase().includes(text)) && (!partialOnly || partial(m)))
    .sort((a, b) => (partial(b) - partial(a)) || a.coverage - b.coverage || a.name.localeCompare(b.name));
}

function workerColumns() {
  const text = $("coverage-workers").value.trim().toLowerCase();
  return cluster.columns.filter((w) => !text || w.toLowerCase().includes(text));
}

// A palette index per cell, row by row: missing (or offline) unless the model's holders say otherwise;
// holders of a digest other than the most common one "differ".
function cellStates(rows, cols) {
  const index = new Map(cols.map((w, i) => [w, i]));
  const lacking = cols.map((w) => STATES.indexOf(isOnline(w) ? "missing" : "offline"));
  const cells = new Uint8Array(rows.length * cols.length);
  rows.forEach((m, r) => {
    const base = r * cols.length;
    cells.set(lacking, base);
    const mark = (workers, state) => {
      for (const w of workers) { const c = index.get(w); if (c !== undefined) cells[base + c] = state; }
    };
    mark(m.workers, 0);
    const groups = Object.values(m.digests || {}).sort((a, b) => b.length - a.length);
    for (const group of groups.slice(1)) mark(group, 1);
  });
  return cells;
}

// The end all the shown names share from a "." on (".example.internal"): said once, not in every label.
function sharedDomain(cols) {
  if (cols.length < 2) return "";
  for (let dot = cols[0].indexOf("."); dot > 0; dot = cols[0].indexOf(".", dot + 1)) {
    const tail = cols[0].slice(dot);
    if (cols.every((c) => c.length > tail.length && c.endsWith(tail))) return tail;
  }
  return "";
}

function renderAxis(cols, width) {
  const labelled = cols.length && width >= LABELS_FROM;
  const domain = labelled ? sharedDomain(cols) : "";
  $("coverage-axis").replaceChildren(...(labelled ? cols.map((wid) => h("span", {
    class: `col-label${isOnline(wid) ? "" : " offline"}`, style: `width:${width}px;flex-basis:${width}px`,
    title: `${wid}${isOnline(wid) ? "" : " (offline)"}`, dataset: { worker: wid } },
  domain ? wid.slice(0, -domain.length) : wid)) : []));
  $("coverage-columns").textContent = !cols.length ? "" : labelled
    ? `${plural(cols.length, "worker")}${domain ? ` (names end in ${domain})` : ""}`
    : `${plural(cols.length, "worker")}, ${width} px each: point at a cell for its worker`;
}

function drawMap() {
  const { rows, cols } = view;
  view.cells = cellStates(rows, cols);
  hideTip();
  view.map.draw(rows.length, cols.length, view.cells, COLORS, ($("coverage-map").clientWidth || 600) - 2);
  renderAxis(cols, view.map.cw);
  const gaps = rows.filter(partial).length;
  $("coverage-canvas").setAttribute("aria-label", `coverage of ${plural(rows.length, "model")} on `
    + `${plural(cols.length, "worker")}: ${gaps} partly covered (the table below lists them)`);
  if (!view.marked && cluster.loaded) { // for whoever profiles the page (the fleet browser test reads it)
    performance.mark("eldric:coverage-drawn");
    view.marked = true;
  }
}

// ---- the tooltip -------------------------------------------------------------------------------------
function showTip(r, c, e) {
  const model = view.rows[r], worker = view.cols[c];
  const state = STATES[view.cells[r * view.cols.length + c]];
  const note = state !== "offline" && !isOnline(worker) ? " (worker offline)" : "";
  const tip = $("coverage-tip");
  const pin = view.pins.get(model.name);
  tip.replaceChildren(h("strong", {}, model.name), h("br"), `${worker}: ${SAY[state]}${note}`,
    pin ? h("span", {}, h("br"), `pinned: ${pin.replicas_wanted} wanted, ${pin.replicas_serving} serving`) : "",
    model.missing.length ? h("span", { class: "muted" }, h("br"), "click: distribute to the workers missing it") : "");
  Object.assign(tip.dataset, { model: model.name, worker, state });
  tip.hidden = false;
  const x = e.clientX + 14 + tip.offsetWidth > window.innerWidth ? e.clientX - 14 - tip.offsetWidth : e.clientX + 14;
  Object.assign(tip.style, { left: `${Math.max(0, x)}px`, top: `${e.clientY + 16}px` });
  $("coverage-canvas").style.cursor = model.missing.length ? "pointer" : "default";
}

function hideTip() { $("coverage-tip").hidden = true; }

// ---- distributing to the workers missing a model -----------------------------------------------------
function distributeSource(model) {
  const holders = model.workers.filter(isOnline);
  if (holders.length) return { type: "worker", worker: holders[0] };
  return { type: "ollama" };
}

function offerDistribution(r) {
  const model = view.rows[r];
  if (!model || !model.missing.length) return;
  view.page = Math.floor(r / PAGE); // its table row, where the job's bars show
  const slot = view.jobs.get(model.name);
  if (!slot || slot.over) {
    const offline = model.missing.filter((w) => !isOnline(w)).length;
    const from = distributeSource(model);
    const question = `Distribute ${model.name} to the ${plural(model.missing.length, "worker")} missing it`
      + `${offline ? ` (${offline} of them offline)` : ""}, copied from ${from.type === "worker" ? `worker ${from.worker}` : "Ollama's registry"}?`;
    if (!window.confirm(question)) return;
    distributeMissing(model);
  }
  renderTable();
  const row = document.querySelector(`#coverage-table tr[data-model="${CSS.escape(model.name)}"]`);
  if (row) row.scrollIntoView({ block: "nearest" });
}

async function distributeMissing(model) {
  if (view.jobs.has(model.name) && !view.jobs.get(model.name).over) return; // already on its way
  const slot = { state: "starting", over: false };
  view.jobs.set(model.name, slot);
  renderTable();
  try {
    const job = await api("POST", "/api/v1/models/distribute",
      { model: model.name, source: distributeSource(model), workers: model.missing });
    slot.watch = new JobWatch(job, (watch) => {
      slot.state = watch.job.state;
      slot.over = watch.closed && isOver(watch.job);
      if (slot.over) { app.refreshSoon(); app.loadJobs(); }
      renderTable();
    });
    app.loadJobs();
  } catch (err) {
    Object.assign(slot, { state: "failed", over: true, error: err.message });
    renderTable();
  }
}

// ---- the table ---------------------------------------------------------------------------------------
// The button keeps its place (and the keyboard focus) while the job runs: aria-disabled, not removed.
function coverageAction(model) {
  const key = `coverage:${model.name}`;
  const slot = view.jobs.get(model.name);
  if (model.coverage >= 100 || !model.missing.length) {
    view.jobs.delete(model.name);
    return h("span", { class: "muted", tabindex: -1, dataset: { focus: key } }, "everywhere");
  }
  const running = slot && !slot.over;
  const button = h("button", { type: "button", class: "distribute", "aria-disabled": running ? "true" : null,
    dataset: { focus: key }, onclick: () => distributeMissing(model) }, `Distribute to ${model.missing.length} missing`);
  if (!slot) return button;
  const records = slot.watch ? [...slot.watch.records.values()] : [];
  let text;
  if (running) text = `distributing… ${countsText(phaseCounts(records))}`;
  else if (slot.state === "completed") text = "completed; waiting for the inventory";
  else text = `failed: ${slot.error || failureGroups(records).map((g) => g.reason).join("; ")}`;
  return [button, h("span", { class: `job-status s-${slot.state}`, dataset: { jobState: slot.state } }, text)];
}

function modelRows(m) {
  const row = h("tr", { class: partial(m) ? "partial" : "", dataset: { model: m.name, coverage: m.coverage } },
    h("td", { class: "name", "data-label": "Model" }, breakable(m.name),
      m.consistent ? "" : h("span", { class: "chip s-retrying", title: "workers hold different digests" }, "digests differ"),
      pinChip(m)),
    h("td", { class: "cov", "data-label": "Coverage" }, h("span", { class: "cov-pct" }, `${m.coverage}%`),
      h("span", { class: "muted" }, ` ${m.workers.length}/${cluster.eligible}`)),
    h("td", { class: "actions" }, coverageAction(m)));
  const slot = view.jobs.get(m.name);
  if (!slot || !slot.watch) return [row];
  return [row, h("tr", { class: "bars-row", dataset: { barsFor: m.name } }, h("td", { colspan: 3 }, inlineBars(slot.watch)))];
}

function renderTable() {
  const rows = view.rows;
  view.page = clampPage(view.page, rows.length, PAGE);
  const body = $("coverage-table").tBodies[0];
  keepFocus(body, () => {
    body.replaceChildren(...rows.slice(view.page * PAGE, (view.page + 1) * PAGE).flatMap(modelRows));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, cluster.loaded ? "no models" : "loading…")));
  });
  keepFocus($("coverage-pager"), () => renderPager($("coverage-pager"), view.page, Math.ceil(rows.length / PAGE),
    (p) => { view.page = p; renderTable(); }));
}

export function renderCoverage() {
  view.rows = shownModels();
  view.cols = workerColumns();
  const gaps = cluster.models.filter(partial).length;
  $("coverage-stats").textContent = `${plural(cluster.models.length, "model")} × ${plural(cluster.eligible, "eligible worker")} · ${gaps} partly covered`;
  drawMap();
  renderTable();
}

export function initCoverage() {
  view.map = new HeatMap($("coverage-canvas"), $("coverage-row"), { onHover: showTip, onLeave: hideTip, onRowClick: offerDistribution });
  $("coverage-filter").addEventListener("input", () => { view.page = 0; renderCoverage(); });
  $("coverage-workers").addEventListener("input", renderCoverage);
  $("coverage-partial").addEventListener("change", () => { view.page = 0; renderCoverage(); });
  cluster.listeners.push(loadPins);
  let resize = null;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(drawMap, 150); });
}

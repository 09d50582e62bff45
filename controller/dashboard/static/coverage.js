// The Coverage panel: every model against every inference/cloud worker. One <canvas> strip per model row,
// one cell per worker, under a header that names each worker's column. When the workers do not fit the panel,
// the columns come in windows ("workers 1–20 of 200", ‹ ›) and a filter picks them by name: every column a
// strip shows is labelled, for 3 workers or 1,000.
import { api } from "./api.js";
import { app } from "./app.js";
import { cluster } from "./cluster.js";
import { $, breakable, clampPage, h, keepFocus, renderPager } from "./dom.js";
import { plural } from "./format.js";
import { JobWatch } from "./jobwatch.js";
import { countsText, failureGroups, inlineBars, isOver, phaseCounts } from "./progress.js";

const PAGE = 25;
const CELL = 16; // px per worker column: the strip's cell and the label above it
const COLORS = { has: "#2f9e5b", differs: "#d98b1f", missing: "#d64545", offline: "#b9bec7" };

const view = { page: 0, colPage: 0, perView: 0, jobs: new Map() };

function workerColumns() {
  const text = $("coverage-workers").value.trim().toLowerCase();
  return cluster.columns.filter((w) => !text || w.toLowerCase().includes(text));
}

// As many columns as the panel has room for beside the other cells (under them on a phone): a first guess
// from the panel's width, then fewer while the table is wider than its card (fitColumns); again on resize.
function columnsPerView() {
  if (view.perView) return view.perView;
  const stacked = window.matchMedia("(max-width: 640px)").matches;
  const room = ($("coverage-panel").clientWidth || 600) - (stacked ? 48 : 460);
  view.perView = Math.max(6, Math.min(60, Math.floor(room / CELL)));
  return view.perView;
}

function fitColumns() {
  const wrap = $("coverage-table").parentElement;
  const over = wrap.scrollWidth - wrap.clientWidth;
  if (over > 0 && view.perView > 6) {
    view.perView = Math.max(6, view.perView - Math.ceil(over / CELL));
    renderCoverage();
  }
}

function cellState(model, wid, has, minority) {
  if (has.has(wid)) return minority.has(wid) ? "differs" : "has";
  return (cluster.byId.get(wid) || {}).online ? "missing" : "offline";
}

function drawStrip(canvas, model, cols) {
  const has = new Set(model.workers);
  const minority = new Set();
  const groups = Object.values(model.digests || {}).sort((a, b) => b.length - a.length);
  for (const group of groups.slice(1)) group.forEach((w) => minority.add(w));
  canvas.width = Math.max(1, cols.length * CELL);
  canvas.height = 14;
  canvas.style.width = `${canvas.width}px`;
  const ctx = canvas.getContext("2d");
  const states = cols.map((wid) => cellState(model, wid, has, minority));
  states.forEach((state, i) => {
    ctx.fillStyle = COLORS[state];
    ctx.fillRect(i * CELL, 0, CELL - 2, 14);
  });
  const say = { has: "has it", differs: "has a different digest", missing: "missing", offline: "missing (offline)" };
  canvas.onmousemove = (e) => {
    const i = Math.max(0, Math.min(cols.length - 1, Math.floor(e.offsetX / CELL)));
    canvas.title = cols[i] ? `${cols[i]}: ${say[states[i]]}` : "";
  };
  const missing = cols.filter((_, i) => states[i] === "missing" || states[i] === "offline");
  canvas.setAttribute("aria-label", `${model.name}: missing on ${missing.length ? missing.join(", ") : "none"} of the ${cols.length} workers shown`);
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

function axis(cols, domain) {
  return h("div", { class: "axis", style: `width:${cols.length * CELL}px` }, cols.map((wid) => {
    const online = (cluster.byId.get(wid) || {}).online;
    return h("span", { class: `col-label${online ? "" : " offline"}`, title: `${wid}${online ? "" : " (offline)"}`,
      dataset: { worker: wid } }, domain ? wid.slice(0, -domain.length) : wid);
  }));
}

function renderColumnPager(total, page, size, domain) {
  const el = $("coverage-columns");
  keepFocus(el, () => {
    el.replaceChildren();
    if (!total) return;
    const first = page * size + 1, last = Math.min(total, (page + 1) * size);
    el.append(h("span", { class: "muted" }, `workers ${first}–${last} of ${total}${domain ? ` (names end in ${domain})` : ""}`));
    if (total <= size) return;
    el.append(
      h("button", { type: "button", disabled: page <= 0, "aria-label": "previous workers", dataset: { focus: "cols:prev" },
        onclick: () => { view.colPage -= 1; renderCoverage(); } }, "‹"),
      h("button", { type: "button", disabled: last >= total, "aria-label": "next workers", dataset: { focus: "cols:next" },
        onclick: () => { view.colPage += 1; renderCoverage(); } }, "›"));
  });
}

function distributeSource(model) {
  const holders = model.workers.filter((w) => (cluster.byId.get(w) || {}).online);
  if (holders.length) return { type: "worker", worker: holders[0] };
  return { type: "ollama" };
}

async function distributeMissing(model) {
  if (view.jobs.has(model.name) && !view.jobs.get(model.name).over) return; // already on its way
  const slot = { state: "starting", over: false };
  view.jobs.set(model.name, slot);
  renderCoverage();
  try {
    const job = await api("POST", "/api/v1/models/distribute",
      { model: model.name, source: distributeSource(model), workers: model.missing });
    slot.watch = new JobWatch(job, (watch) => {
      slot.state = watch.job.state;
      slot.over = watch.closed && isOver(slot.state);
      if (slot.over) { app.refreshSoon(); app.loadJobs(); }
      renderCoverage();
    });
    app.loadJobs();
  } catch (err) {
    Object.assign(slot, { state: "failed", over: true, error: err.message });
    renderCoverage();
  }
}

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

function modelRows(m, cols) {
  const canvas = h("canvas", { class: "strip", role: "img" });
  drawStrip(canvas, m, cols);
  const partial = m.coverage < 100;
  const row = h("tr", { class: partial ? "partial" : "", dataset: { model: m.name, coverage: m.coverage } },
    h("td", { class: "name", "data-label": "Model" }, breakable(m.name),
      m.consistent ? "" : h("span", { class: "chip s-retrying", title: "workers hold different digests" }, "digests differ")),
    h("td", { class: "cov", "data-label": "Coverage" }, h("span", { class: "cov-pct" }, `${m.coverage}%`),
      h("span", { class: "muted" }, ` ${m.workers.length}/${cluster.eligible}`)),
    h("td", { class: "strip-cell" }, canvas),
    h("td", { class: "actions" }, coverageAction(m)));
  const slot = view.jobs.get(m.name);
  if (!slot || !slot.watch) return [row];
  return [row, h("tr", { class: "bars-row", dataset: { barsFor: m.name } }, h("td", { colspan: 4 }, inlineBars(slot.watch)))];
}

export function renderCoverage() {
  const text = $("coverage-filter").value.trim().toLowerCase();
  const partialOnly = $("coverage-partial").checked;
  const partial = (m) => m.coverage < 100;
  const rows = cluster.models
    .filter((m) => (!text || m.name.toLowerCase().includes(text)) && (!partialOnly || partial(m)))
    .sort((a, b) => (partial(b) - partial(a)) || a.coverage - b.coverage || a.name.localeCompare(b.name));
  const partCount = cluster.models.filter(partial).length;
  $("coverage-stats").textContent = `${plural(cluster.models.length, "model")} × ${plural(cluster.eligible, "eligible worker")} · ${partCount} partly covered`;
  const allCols = workerColumns();
  const size = columnsPerView();
  view.colPage = clampPage(view.colPage, allCols.length, size);
  const cols = allCols.slice(view.colPage * size, (view.colPage + 1) * size);
  const domain = sharedDomain(cols);
  renderColumnPager(allCols.length, view.colPage, size, domain);
  $("coverage-axis").replaceChildren(axis(cols, domain));
  view.page = clampPage(view.page, rows.length, PAGE);
  const body = $("coverage-table").tBodies[0];
  keepFocus(body, () => {
    body.replaceChildren(...rows.slice(view.page * PAGE, (view.page + 1) * PAGE).flatMap((m) => modelRows(m, cols)));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, cluster.loaded ? "no models" : "loading…")));
  });
  keepFocus($("coverage-pager"), () => renderPager($("coverage-pager"), view.page, Math.ceil(rows.length / PAGE),
    (p) => { view.page = p; renderCoverage(); }));
  fitColumns();
}

export function initCoverage() {
  $("coverage-filter").addEventListener("input", () => { view.page = 0; renderCoverage(); });
  $("coverage-workers").addEventListener("input", () => { view.colPage = 0; renderCoverage(); });
  $("coverage-partial").addEventListener("change", () => { view.page = 0; renderCoverage(); });
  let resize = null;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => { view.perView = 0; renderCoverage(); }, 150); });
}

// The cluster's models and workers (one GET each, every 10 s), shared by Coverage, Cluster models and Workers;
// the Cluster models and Workers panels.
import { api, banner, token } from "./api.js";
import { diskBar, gpusText, labelChips, labelsText } from "./capacity.js";
import { $, breakable, clampPage, h, keepFocus, renderPager } from "./dom.js";
import { fmtAgo, fmtBytes, fmtTime, shortDigest } from "./format.js";

const PAGE = 25;
const ELIGIBLE_TYPES = new Set(["inference", "cloud"]);

export const cluster = { models: [], eligible: 0, workers: [], byId: new Map(), columns: [], loaded: false,
  modelsRaw: null, listeners: [] };

export async function loadCluster() {
  try {
    const [models, workers] = await Promise.all([api("GET", "/api/v1/models"), api("GET", "/api/v1/workers")]);
    Object.assign(cluster, {
      models: models.models, eligible: models.eligible_workers, modelsRaw: models, workers: workers.workers,
      byId: new Map(workers.workers.map((w) => [w.id, w])),
      columns: workers.workers.filter((w) => ELIGIBLE_TYPES.has(w.type)).map((w) => w.id), loaded: true,
    });
    $("conn").textContent = `${workers.online} of ${workers.total} workers online`;
    $("conn").className = "conn ok";
    if (token() || !$("banner").textContent.includes("token")) banner("");
    for (const listener of cluster.listeners) listener();
  } catch (err) {
    $("conn").textContent = `controller: ${err.message}`;
    $("conn").className = "conn bad";
  }
}

// The worker's backends that serve a model of its inventory; an agent before per-backend inventories sends `backend`.
const servedBy = (m) => (Array.isArray(m.backends) ? m.backends.join(", ") || "stored, not served" : m.backend || "–");

// ---- Cluster models -------------------------------------------------------------------------------
const modelsView = { page: 0 };

function detailsText(d) {
  if (!d) return "";
  return ["family", "parameter_size", "quantization_level", "architecture"].filter((k) => d[k]).map((k) => d[k]).join(" · ");
}

export function renderModels() {
  const text = $("models-filter").value.trim().toLowerCase();
  const rows = cluster.models.filter((m) => !text || m.name.toLowerCase().includes(text));
  $("models-stats").textContent = `total ${cluster.modelsRaw ? cluster.modelsRaw.total : 0} · eligible workers ${cluster.eligible}`;
  modelsView.page = clampPage(modelsView.page, rows.length, PAGE);
  const page = rows.slice(modelsView.page * PAGE, (modelsView.page + 1) * PAGE);
  const cap = (list) => (list.length > 20 ? `${list.slice(0, 20).join(", ")} … +${list.length - 20}` : list.join(", "));
  $("models-table").tBodies[0].replaceChildren(...page.map((m) => h("tr", { dataset: { model: m.name } },
    h("td", { class: "name" }, breakable(m.name)), h("td", {}, fmtBytes(m.size)), h("td", {}, m.format || "–"),
    h("td", { class: "mono", title: m.digest || "" }, shortDigest(m.digest)), h("td", {}, fmtTime(m.modified_at)),
    h("td", { title: cap(m.workers) }, String(m.workers.length)),
    h("td", { title: cap(m.missing) }, String(m.missing.length)),
    h("td", { dataset: { col: "coverage" },
      title: m.stored_not_served && m.stored_not_served.length ? `stored, not served on ${cap(m.stored_not_served)}` : "" },
      m.status === "stored, not served" ? `${m.coverage}% · stored, not served` : `${m.coverage}%`),
    h("td", {}, m.consistent ? "yes" : "no"),
    h("td", { class: "muted" }, detailsText(m.details)))));
  $("models-json").textContent = JSON.stringify({ ...(cluster.modelsRaw || {}), models: page }, null, 1);
  keepFocus($("models-pager"), () => renderPager($("models-pager"), modelsView.page, Math.ceil(rows.length / PAGE),
    (p) => { modelsView.page = p; renderModels(); }));
}

export function initClusterPanels() {
  $("models-filter").addEventListener("input", () => { modelsView.page = 0; renderModels(); });
  $("workers-filter").addEventListener("input", () => { workersView.page = 0; renderWorkers(); });
}

// ---- Workers --------------------------------------------------------------------------------------
const workersView = { page: 0, selected: null, detailPage: 0, detailModels: [], worker: null };

const onlineChip = (w) => h("span", { class: `chip ${w.online ? "s-completed" : "s-offline"}` }, w.online ? "online" : "offline");

export function renderWorkers() {
  const text = $("workers-filter").value.trim().toLowerCase();
  const rows = cluster.workers.filter((w) => !text || w.id.toLowerCase().includes(text) || (w.type || "").includes(text)
    || labelsText(w).toLowerCase().includes(text));
  const online = cluster.workers.filter((w) => w.online).length;
  $("workers-stats").textContent = `${cluster.workers.length} workers · ${online} online`;
  workersView.page = clampPage(workersView.page, rows.length, PAGE);
  const body = $("workers-table").tBodies[0];
  keepFocus(body, () => body.replaceChildren(...rows.slice(workersView.page * PAGE, (workersView.page + 1) * PAGE)
    .map((w) => h("tr", {
      class: w.id === workersView.selected ? "selected" : "", dataset: { worker: w.id, focus: `worker:${w.id}` }, tabindex: 0,
      onclick: () => openWorker(w.id), onkeydown: (e) => { if (e.key === "Enter") openWorker(w.id); },
    },
    h("td", { class: "name", "data-label": "Worker" }, breakable(w.id)), h("td", { "data-label": "Type" }, w.type),
    h("td", { "data-label": "Online" }, onlineChip(w)),
    h("td", { "data-label": "Backends" }, (w.backends || []).join(", ") || "–"),
    h("td", { "data-label": "Labels", dataset: { col: "labels" } }, labelChips(w)),
    h("td", { "data-label": "Disk", dataset: { col: "disk" } }, diskBar(w)),
    h("td", { "data-label": "Models" }, String(w.models)), h("td", { "data-label": "Last seen" }, fmtAgo(w.last_seen))))));
  keepFocus($("workers-pager"), () => renderPager($("workers-pager"), workersView.page, Math.ceil(rows.length / PAGE),
    (p) => { workersView.page = p; renderWorkers(); }));
}

async function openWorker(id) {
  workersView.selected = id;
  workersView.detailPage = 0;
  renderWorkers();
  const box = $("worker-detail");
  box.hidden = false;
  box.replaceChildren(h("p", { class: "muted" }, `loading ${id}…`));
  try {
    const enc = encodeURIComponent(id);
    const [worker, models] = await Promise.all([api("GET", `/api/v1/workers/${enc}`), api("GET", `/api/v1/workers/${enc}/models`)]);
    workersView.worker = worker;
    workersView.detailModels = models.models;
    renderWorkerDetail();
  } catch (err) {
    box.replaceChildren(h("p", { class: "error" }, `${id}: ${err.message}`));
  }
}

function closeWorker() {
  const id = workersView.selected;
  workersView.selected = null;
  $("worker-detail").hidden = true;
  renderWorkers();
  const row = document.querySelector(`#workers-table tr[data-worker="${CSS.escape(id)}"]`);
  if (row) row.focus({ preventScroll: true }); // back to the row that opened it
}

async function removeWorker(w) {
  const question = w.online
    ? `${w.id} is online. Remove it anyway? A running agent registers itself again at its next heartbeat.`
    : `Remove ${w.id} from the cluster? Its record, inventory and catch-ups are forgotten.`;
  if (!window.confirm(question)) return;
  try {
    await api("DELETE", `/api/v1/workers/${encodeURIComponent(w.id)}${w.online ? "?force=true" : ""}`);
  } catch (err) {
    window.alert(`Could not remove ${w.id}: ${err.message}`);
    return;
  }
  workersView.selected = null;
  $("worker-detail").hidden = true;
  await loadCluster();
  $("workers-filter").focus({ preventScroll: true }); // the row it was on is gone
}

function renderWorkerDetail() {
  const w = workersView.worker;
  const models = workersView.detailModels;
  const size = 50;
  const page = models.slice(workersView.detailPage * size, (workersView.detailPage + 1) * size);
  const pager = h("div", { class: "pager", id: "worker-detail-pager" });
  renderPager(pager, workersView.detailPage, Math.ceil(models.length / size), (p) => { workersView.detailPage = p; renderWorkerDetail(); });
  const box = $("worker-detail");
  keepFocus(box, () => box.replaceChildren(
    h("h3", {}, h("span", { class: "name" }, breakable(w.id)), " ", onlineChip(w),
      h("button", { type: "button", class: "right", dataset: { focus: "worker-detail:close" }, onclick: closeWorker }, "close"),
      h("button", { type: "button", class: "right danger remove", dataset: { focus: "worker-detail:remove" },
        title: "forget this decommissioned worker", onclick: () => removeWorker(w) }, "remove")),
    h("dl", { class: "facts" },
      h("dt", {}, "type"), h("dd", {}, w.type),
      h("dt", {}, "backends"), h("dd", { dataset: { fact: "backends" } }, (w.backends || []).join(", ") || "–"),
      h("dt", {}, "free disk"), h("dd", { dataset: { fact: "free_disk" } }, fmtBytes(w.free_disk)),
      h("dt", {}, "disk"), h("dd", { dataset: { fact: "disk" } }, diskBar(w)),
      h("dt", {}, "labels"), h("dd", { dataset: { fact: "labels" } }, labelChips(w)),
      h("dt", {}, "GPUs"), h("dd", { dataset: { fact: "gpus" } }, gpusText(w)),
      h("dt", {}, "address"), h("dd", { class: "name" }, breakable(w.address || "–")),
      h("dt", {}, "host"), h("dd", { class: "name" }, breakable(w.hostname || "–")),
      h("dt", {}, "last seen"), h("dd", {}, fmtAgo(w.last_seen))),
    h("div", { class: "table-wrap" }, h("table", { class: "table compact" },
      h("thead", {}, h("tr", {}, ["Model", "Size", "Modified", "Format", "Backends", "Digest"].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.length ? page.map((m) => h("tr", { dataset: { model: m.name } },
        h("td", { class: "name" }, breakable(m.name)), h("td", {}, fmtBytes(m.size)), h("td", {}, fmtTime(m.modified_at)),
        h("td", {}, m.format || "–"), h("td", { dataset: { col: "backends" } }, servedBy(m)),
        h("td", { class: "mono" }, shortDigest(m.digest))))
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no local models"))))),
    pager));
}

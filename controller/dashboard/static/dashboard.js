// The Models tab: six panels over the /api/v1 REST API. No framework, no build step: ES modules.
// Every list is paged or capped (the cluster may have 200 workers and 300 models, or 1,000 workers),
// and the coverage matrix is one <canvas> strip per visible model, drawn from the one GET /api/v1/models.
import { api, banner, saveToken, token } from "./api.js";
import { app } from "./app.js";
import { cluster, initClusterPanels, loadCluster, renderModels, renderWorkers } from "./cluster.js";
import { initCoverage, renderCoverage } from "./coverage.js";
import { $, clampPage, h, isBusy, renderPager, setBusy, sleep } from "./dom.js";
import { jobsActive, kindText, loadJobs, schedule as scheduleJobs } from "./jobs.js";
import { JobWatch } from "./jobwatch.js";
import { barRow, countsText, figuresNodes, isOver, jobFigures, phaseCounts } from "./progress.js";
import { initRegistry, loadRegistry } from "./registry.js";

const BAR_PAGE = 50;

// ---- Pull to All Workers: one bar per worker ---------------------------------------------------------
const pull = { watch: null, page: 0 };

function renderPull(watch) {
  if (watch !== pull.watch) return;
  const filter = $("pull-filter").value;
  const keep = (r) => filter === "all" || (filter === "active" ? !isOver(r.state) : r.state === filter);
  const records = [...watch.records.values()];
  const rows = records.filter(keep);
  pull.page = clampPage(pull.page, rows.length, BAR_PAGE);
  const counts = phaseCounts(records);
  const job = watch.job;
  $("pull-summary").replaceChildren(
    h("strong", {}, job.model), ` · ${kindText(job)} · job ${job.id.slice(0, 8)} · `,
    h("span", { class: `chip s-${job.state}`, dataset: { jobState: job.state } }, job.state),
    ` · ${records.length} worker${records.length === 1 ? "" : "s"}: ${countsText(counts)}`,
    ...figuresNodes(jobFigures(job.id, records), counts),
    watch.mode === "polling" ? h("span", { class: "muted" }, " (polling)") : "");
  $("pull-filter").hidden = records.length <= 8;
  const page = rows.slice(pull.page * BAR_PAGE, (pull.page + 1) * BAR_PAGE);
  $("pull-bars").replaceChildren(...page.map((r) => barRow(job.id, r)));
  renderPager($("pull-pager"), pull.page, Math.ceil(rows.length / BAR_PAGE), (p) => { pull.page = p; renderPull(watch); });
  if (watch.closed) { setBusy($("pull-button"), false); app.refreshSoon(); }
}

async function startPull(event) {
  event.preventDefault();
  const model = $("pull-model").value.trim();
  if (!model || isBusy($("pull-button"))) return;
  setBusy($("pull-button"), true);
  $("pull-summary").textContent = `starting the pull of ${model}…`;
  try {
    const job = await api("POST", "/api/v1/models/pull", { model });
    if (pull.watch) pull.watch.close();
    pull.page = 0;
    pull.watch = new JobWatch(job, renderPull);
    loadJobs();
  } catch (err) {
    $("pull-summary").replaceChildren(h("span", { class: "error" }, `could not start the pull: ${err.message}`));
    $("pull-bars").replaceChildren();
    setBusy($("pull-button"), false);
  }
}

// ---- refresh loop ------------------------------------------------------------------------------------
let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { loadCluster(); loadRegistry(); setTimeout(loadCluster, 2000); }, 400);
}

async function loop(fn, interval) {
  for (;;) {
    if (!document.hidden) await fn();
    await sleep(typeof interval === "function" ? interval() : interval);
  }
}

function init() {
  Object.assign(app, { loadJobs, refreshSoon });
  JobWatch.onAnyChange = scheduleJobs;
  cluster.listeners.push(renderCoverage, renderModels, renderWorkers);
  $("token").value = token();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveToken($("token").value.trim());
    banner("");
    loadCluster(); loadJobs(); loadRegistry();
  });
  $("pull-form").addEventListener("submit", startPull);
  $("pull-filter").addEventListener("change", () => { pull.page = 0; if (pull.watch) renderPull(pull.watch); });
  initCoverage();
  initRegistry();
  initClusterPanels();
  loop(loadCluster, 10000);
  loop(loadJobs, () => (jobsActive() ? 2000 : 6000));
  loop(loadRegistry, 30000);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();

// The Models tab: six panels over the /api/v1 REST API. No framework, no build step: ES modules.
// Sized for 1,000 workers x 100 models (issue 13): every table is paged, the coverage heat map is one
// <canvas> drawn from the one GET /api/v1/models, and a job with many targets shows a histogram of its
// progress with bars for only its slowest and failed workers.
import { api, banner, saveToken, token } from "./api.js";
import { app } from "./app.js";
import { cluster, initClusterPanels, loadCluster, renderModels, renderWorkers } from "./cluster.js";
import { initCoverage, renderCoverage } from "./coverage.js";
import { $, h, isBusy, keepFocus, setBusy, sleep } from "./dom.js";
import { jobsActive, kindText, loadJobs, schedule as scheduleJobs } from "./jobs.js";
import { JobWatch } from "./jobwatch.js";
import { histogramNode, isSmallJob, workerBars } from "./jobsummary.js";
import { countsText, figuresNodes, jobFigures, phaseCounts } from "./progress.js";
import { initRegistry, loadRegistry } from "./registry.js";

// ---- Pull to All Workers: a bar per worker (the slowest and the failed of a big job) ----------------
const pull = { watch: null, failedPage: 0 };

function renderPull(watch) {
  if (watch !== pull.watch) return;
  const records = [...watch.records.values()];
  const counts = phaseCounts(records);
  const job = watch.job;
  $("pull-summary").replaceChildren(
    h("strong", {}, job.model), ` · ${kindText(job)} · job ${job.id.slice(0, 8)} · `,
    h("span", { class: `chip s-${job.state}`, dataset: { jobState: job.state } }, job.state),
    ` · ${records.length} worker${records.length === 1 ? "" : "s"}: ${countsText(counts)}`,
    ...figuresNodes(jobFigures(job.id, records), counts),
    watch.mode === "polling" ? h("span", { class: "muted" }, " (polling)") : "");
  const bars = $("pull-bars");
  keepFocus(bars, () => bars.replaceChildren(...(isSmallJob(records) ? [] : [histogramNode(records)]),
    ...workerBars(job.id, records, { failedPage: pull.failedPage, pagerId: "pull-failed-pager",
      onPage: (p) => { pull.failedPage = p; renderPull(watch); } })));
  if (watch.closed) { setBusy($("pull-button"), false); app.refreshSoon(); }
}

// "zone=a, type=inference" -> {zone: "a", type: "inference"}; a part without "=" is refused, naming it.
export function parseSelector(text) {
  const out = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`selector: "${part}" is not key=value`);
    out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return out;
}

// The pull's body: replicas, selector and spread only when given (without them: every worker, as before).
function pullBody(model) {
  const body = { model };
  const replicas = $("pull-replicas").value.trim();
  if (replicas) body.replicas = Number(replicas);
  const selector = parseSelector($("pull-selector").value);
  if (Object.keys(selector).length) body.selector = selector;
  const spread = $("pull-spread").value.trim();
  if (spread) body.spread = spread;
  return body;
}

async function startPull(event) {
  event.preventDefault();
  const model = $("pull-model").value.trim();
  if (!model || isBusy($("pull-button"))) return;
  setBusy($("pull-button"), true);
  $("pull-summary").textContent = `starting the pull of ${model}…`;
  try {
    const job = await api("POST", "/api/v1/models/pull", pullBody(model));
    if (pull.watch) pull.watch.close();
    pull.failedPage = 0;
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
  initCoverage();
  initRegistry();
  initClusterPanels();
  loop(loadCluster, 10000);
  loop(loadJobs, () => (jobsActive() ? 2000 : 6000));
  loop(loadRegistry, 30000);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();

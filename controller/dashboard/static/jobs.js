// The Jobs panel: every job kind (pull, distribute, delete, import), newest first, paged. A row shows one dot
// per worker (a histogram of progress instead when it has many), the counts, bytes, rate and time left, and
// the failure reasons; "per worker" opens its bars (of a big job: the slowest and the failed, jobsummary.js).
import { api } from "./api.js";
import { $, h, keepFocus, renderPager } from "./dom.js";
import { fmtTime, pct } from "./format.js";
import { JobWatch, watches } from "./jobwatch.js";
import { histogramNode, isSmallJob, workerBars } from "./jobsummary.js";
import { countsText, failureList, figuresNodes, isOver, jobFigures, phaseCounts, phaseOf, rates } from "./progress.js";

const view = { page: 0, size: 10, open: new Set(), barPages: new Map(), active: false, data: null, frame: null };

// A job as the live stream knows it, when one is open (fresher than the last poll).
function liveJob(job) {
  const watch = watches.get(job.id);
  if (!watch) return job;
  const workers = [...watch.records.values()].sort((a, b) => a.worker.localeCompare(b.worker));
  return { ...job, state: watch.job.state, workers };
}

export function kindText(job) {
  if (job.kind === "delete") return "delete";
  const from = job.kind === "distribute" && job.source === "worker" && job.options && job.options.from_worker
    ? `worker ${job.options.from_worker}` : job.source || "ollama";
  return `${job.kind || "pull"} from ${from}`;
}

// One dot per worker of a small job (a big one gets the histogram instead).
function dotsOf(workers) {
  return workers.map((w) => {
    const phase = phaseOf(w);
    const extra = w.state === "failed" ? ` (${w.error || w.status})` : ["pulling", "retrying"].includes(phase) ? ` ${pct(w.percent)}` : "";
    return h("span", { class: `dot s-${w.state} p-${phase}`, dataset: { worker: w.worker, state: w.state, phase },
      title: `${w.worker}: ${phase}${extra}` });
  });
}

function perWorker(job, workers) {
  const open = view.open.has(job.id);
  const details = h("details", { class: "per-worker", open: open || null },
    h("summary", { dataset: { focus: `per-worker:${job.id}` } }, `per worker (${workers.length}${isSmallJob(workers) ? "" : ": the slowest and the failed"})`));
  if (open) {
    details.append(...workerBars(job.id, workers, { compact: true, failedPage: view.barPages.get(job.id) || 0,
      onPage: (p) => { view.barPages.set(job.id, p); schedule(); }, pagerId: `job-${job.id}-bars-pager` }));
  }
  details.addEventListener("toggle", () => {
    if (details.open === view.open.has(job.id)) return; // the toggle event of a row just rendered open
    if (details.open) {
      view.open.add(job.id);
      const watch = watches.get(job.id);
      if (!isOver(job) && (!watch || watch.closed)) { // live bars while it is open
        const opened = new JobWatch(job, () => {});
        opened.fromJobsPanel = true;
      }
    } else {
      view.open.delete(job.id);
      const watch = watches.get(job.id);
      if (watch && watch.fromJobsPanel) watch.close();
    }
    schedule();
  });
  return details;
}

function jobItem(polled) {
  const job = liveJob(polled);
  const workers = job.workers || [];
  const counts = phaseCounts(workers);
  const fig = jobFigures(job.id, workers);
  return h("li", { class: `job${isOver(job) ? "" : " active"}`, dataset: { job: job.id, state: job.state, kind: job.kind } },
    h("div", { class: "job-head" },
      h("span", { class: `chip s-${job.state}` }, job.state),
      h("strong", { class: "name" }, job.model), h("span", { class: "muted" }, ` ${kindText(job)}`),
      h("span", { class: "right muted", title: job.id }, fmtTime(job.created_at)),
      isOver(job) ? null : h("button", { type: "button", class: "danger cancel", dataset: { focus: `cancel:${job.id}` },
        title: "stop this job on every worker that has not finished", onclick: () => cancelJob(job) }, "cancel")),
    h("div", { class: "job-body" },
      isSmallJob(workers) ? h("span", { class: "dots" }, dotsOf(workers)) : histogramNode(workers),
      h("span", { class: "muted job-counts" }, ` ${countsText(counts)}`, figuresNodes(fig, counts))),
    failureList(job.id, workers),
    perWorker(job, workers));
}

async function cancelJob(job) {
  if (!window.confirm(`Cancel the ${kindText(job)} of ${job.model}? Workers that have not finished stop and drop their partial data.`)) return;
  try {
    await api("POST", `/api/v1/models/pull-jobs/${encodeURIComponent(job.id)}/cancel`);
  } catch (err) {
    window.alert(`Could not cancel job ${job.id}: ${err.message}`);
  }
  loadJobs();
}

export function schedule() {
  if (view.frame) return;
  view.frame = requestAnimationFrame(() => { view.frame = null; render(); });
}

function render() {
  const data = view.data;
  if (!data) return;
  const list = $("jobs-list");
  keepFocus(list, () => list.replaceChildren(...(data.jobs.length ? data.jobs.map(jobItem)
    : [h("li", { class: "muted" }, "no jobs yet")])));
  keepFocus($("jobs-pager"), () => renderPager($("jobs-pager"), view.page, Math.ceil(data.total / view.size),
    (p) => { view.page = p; loadJobs(); }));
}

export async function loadJobs() {
  try {
    const data = await api("GET", `/api/v1/models/pull-jobs?limit=${view.size}&offset=${view.page * view.size}`);
    for (const job of data.jobs) {
      if (isOver(job)) rates.forget(job.id);
      else for (const w of job.workers) rates.observe(job.id, w);
    }
    view.active = data.jobs.some((j) => !isOver(j));
    view.data = data;
    render();
  } catch (err) {
    $("jobs-list").replaceChildren(h("li", { class: "error" }, `jobs: ${err.message}`));
  }
}

export const jobsActive = () => view.active;

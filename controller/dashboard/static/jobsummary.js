// A job's workers at a glance, for the Pull panel and the Jobs panel. A small job lists every worker; a job
// with many targets (issue 13: 1,000 workers) shows a histogram of progress, bars for only its slowest
// workers (they decide when it ends) and every failed one, paged: a few dozen elements, not thousands.
import { clampPage, h, renderPager } from "./dom.js";
import { plural } from "./format.js";
import { barRow, isOver } from "./progress.js";

export const SMALL_JOB = 20; // up to this many targets, every worker gets its bar
export const SLOWEST = 20;
const BUCKETS = 10;
const FAILED_PAGE = 50;

export const isSmallJob = (records) => records.length <= SMALL_JOB;

const percentOf = (r) => (r.state === "completed" ? 100 : Math.max(0, Math.min(100, Number(r.percent) || 0)));

// Workers by percent in tenths (100% falls in the last); failed, skipped and cancelled ones are not
// progressing and are counted by state instead.
export function histogram(records) {
  const counts = new Array(BUCKETS).fill(0);
  for (const r of records) {
    if (isOver(r) && r.state !== "completed") continue;
    counts[Math.min(BUCKETS - 1, Math.floor(percentOf(r) / (100 / BUCKETS)))] += 1;
  }
  return counts;
}

// The unfinished workers furthest from done: least transferred first, then by name (a stable order
// between re-renders, so the list does not shuffle while they move).
export function slowest(records, n = SLOWEST) {
  return records.filter((r) => !isOver(r))
    .sort((a, b) => percentOf(a) - percentOf(b) || a.worker.localeCompare(b.worker))
    .slice(0, n);
}

export function histogramNode(records) {
  const counts = histogram(records);
  const most = Math.max(1, ...counts);
  const step = 100 / BUCKETS;
  const label = counts.map((c, i) => `${i * step}–${(i + 1) * step}%: ${c}`).join(", ");
  return h("div", { class: "histogram", role: "img", "aria-label": `workers by progress: ${label}` },
    counts.map((count, i) => h("div", { class: "hbin", dataset: { bucket: i, count },
      title: `${i * step}–${(i + 1) * step}%: ${plural(count, "worker")}` },
    h("span", { class: "hcount" }, count ? String(count) : ""),
    h("span", { class: "hbar", style: `height:${Math.round((100 * count) / most)}%` }),
    h("span", { class: "hlabel" }, `${i * step}%`))));
}

// The bars to list: every worker of a small job (in the order given); for a big one the slowest and then
// every failed worker, a page of them at a time (`failedPage`, changed through `onPage`). The histogram
// is the caller's to place (beside the counts).
export function workerBars(jobId, records, { failedPage = 0, onPage = () => {}, compact = false, pagerId } = {}) {
  const list = (rows, kind) => h("ol", { class: `bars${compact ? " compact" : ""}`, dataset: { list: kind } },
    rows.map((r) => barRow(jobId, r)));
  if (isSmallJob(records)) return [list(records, "all")];
  const out = [];
  const open = records.filter((r) => !isOver(r)).length;
  const slow = slowest(records);
  if (slow.length) {
    out.push(h("h3", { class: "bars-head" }, `slowest ${slow.length} of ${plural(open, "worker")} under way`),
      list(slow, "slowest"));
  }
  const failed = records.filter((r) => r.state === "failed");
  if (failed.length) {
    const page = clampPage(failedPage, failed.length, FAILED_PAGE);
    const pager = h("div", { class: "pager", id: pagerId || null });
    renderPager(pager, page, Math.ceil(failed.length / FAILED_PAGE), onPage, "failed page");
    out.push(h("h3", { class: "bars-head error" }, `failed: ${plural(failed.length, "worker")}`),
      list(failed.slice(page * FAILED_PAGE, (page + 1) * FAILED_PAGE), "failed"), pager);
  }
  return out;
}

// What a job's per-worker records mean on screen: phases, rates and time left, bars, failure reasons.
// Everything here is computed in the browser from the records the API and the event stream give
// (`state`, `status`, `completed`, `total`, `updated_at`, `error`; `upstream_bytes`, `peer_bytes`, `peers`
// and the agent's `rate` under fan-out; `resumed_bytes`, taken from a partial download on the worker's disk).
import { breakable, h } from "./dom.js";
import { fmtBytes, fmtDuration, fmtRate, pct } from "./format.js";

// Whether a job or a worker's part has ended: the API says so (`final`, on jobs, records and events), the
// dashboard never derives it from a state's name.
export const isOver = (jobOrRecord) => Boolean(jobOrRecord && jobOrRecord.final);

// What a worker is doing. The agent keeps the state `pulling` for a whole distribution and says in `status`
// when the bytes are in and it installs them for its backends ("installing"; "shared" when the registry's
// storage is mounted and nothing moves: worker_agent/distributing.py), deletes (worker_agent/job_runner.py)
// or verifies (worker_agent/pulling.py, registry/imports.py); a state the API names itself wins.
export function phaseOf(r) {
  const state = r.state || "pending";
  if (state !== "pulling") return state;
  const status = String(r.status || "").toLowerCase();
  if (status.startsWith("installing") || status === "shared") return "installing";
  if (status.startsWith("deleting")) return "deleting";
  if (/^(verifying|writing manifest|checking)/.test(status)) return "verifying";
  return "pulling";
}
const TRANSFER = new Set(["pulling", "retrying"]);
const AFTER_TRANSFER = new Set(["installing", "verifying"]);

// ---- rate and time left, from successive records of the same worker ------------------------------
const SMOOTHING_SECONDS = 3; // time constant of the moving average over the reports
const STALLED_MS = 15000; // no new bytes for this long: the rate reads "stalled", the time left is unknown

class Rates {
  constructor() { this.parts = new Map(); }

  // Feed every record seen (events and polls alike); older and repeated records change nothing.
  observe(jobId, r) {
    const key = `${jobId}/${r.worker}`;
    const at = Number(r.updated_at) || 0;
    const done = Number(r.completed) || 0;
    const prev = this.parts.get(key);
    if (!prev || (at > prev.at && done < prev.done)) { // first sight, or the part started over
      this.parts.set(key, { at, done, rate: null, movedAt: performance.now() });
      return;
    }
    if (at <= prev.at) return;
    const dt = at - prev.at;
    const now = (done - prev.done) / dt;
    const weight = 1 - Math.exp(-dt / SMOOTHING_SECONDS); // time-weighted: report intervals may vary
    prev.rate = prev.rate === null ? now : prev.rate + weight * (now - prev.rate);
    if (done > prev.done) prev.movedAt = performance.now();
    Object.assign(prev, { at, done });
  }

  // {rate, left, stalled} while the worker transfers; null before its second report.
  of(jobId, r) {
    if (!TRANSFER.has(phaseOf(r))) return null;
    const part = this.parts.get(`${jobId}/${r.worker}`);
    if (!part || part.rate === null) return null;
    if (performance.now() - part.movedAt > STALLED_MS) return { rate: 0, left: null, stalled: true };
    const remaining = Math.max(0, (Number(r.total) || 0) - (Number(r.completed) || 0));
    return { rate: part.rate, left: part.rate > 0 && Number(r.total) ? remaining / part.rate : null, stalled: false };
  }

  forget(jobId) {
    for (const key of this.parts.keys()) if (key.startsWith(`${jobId}/`)) this.parts.delete(key);
  }
}
export const rates = new Rates();

// The job's bytes, its current rate (the sum of its workers') and time left (its slowest worker's),
// known only once no worker waits to start.
export function jobFigures(jobId, records) {
  let completed = 0, total = 0, rate = 0, left = 0, moving = 0, known = true;
  for (const r of records) {
    const phase = phaseOf(r);
    completed += Number(r.state === "completed" ? r.total : r.completed) || 0;
    total += Number(r.total) || 0;
    if (phase === "pending" || phase === "offline") known = false;
    if (!TRANSFER.has(phase)) continue;
    const est = rates.of(jobId, r);
    if (!est || est.left === null) { known = false; if (!est) continue; }
    rate += est.rate;
    left = Math.max(left, est.left || 0);
    moving += 1;
  }
  return { completed, total, percent: total ? (100 * completed) / total : 0,
    rate: moving ? rate : null, left: moving && known ? left : null };
}

// " · 40.0% of 12.6 MB · 3.1 MB/s · 4 s left" as nodes (classes job-bytes, job-rate, job-left).
export function figuresNodes(fig, counts) {
  const out = [];
  if (fig.total) {
    const after = (counts.installing || 0) + (counts.verifying || 0);
    const word = after && fig.completed >= fig.total ? `transferred, ${after} still finishing` : "";
    out.push(" · ", h("span", { class: "job-bytes" }, `${pct(fig.percent)} of ${fmtBytes(fig.total)}${word ? ` ${word}` : ""}`));
  }
  if (fig.rate !== null) out.push(" · ", h("span", { class: "job-rate" }, fmtRate(fig.rate)));
  if (fig.left !== null) out.push(" · ", h("span", { class: "job-left" }, `${fmtDuration(fig.left)} left`));
  return out;
}

// ---- counts ------------------------------------------------------------------------------------
const ORDER = ["completed", "failed", "skipped", "cancelled", "installing", "verifying", "deleting", "pulling",
  "retrying", "pending", "offline"];

export function phaseCounts(records) {
  const counts = {};
  for (const r of records) { const p = phaseOf(r); counts[p] = (counts[p] || 0) + 1; }
  return counts;
}

export function countsText(counts) {
  const known = ORDER.filter((s) => counts[s]);
  const other = Object.keys(counts).filter((s) => !ORDER.includes(s) && counts[s]).sort();
  return [...known, ...other].map((s) => `${counts[s]} ${s}`).join(" · ");
}

// ---- one bar per worker ------------------------------------------------------------------------
export function barRow(jobId, r) {
  const phase = phaseOf(r);
  const done = r.state === "completed";
  const percent = done ? 100 : Number(r.percent) || 0;
  const busy = AFTER_TRANSFER.has(phase) || phase === "deleting";
  const label = busy ? phase : pct(percent);
  const total = Number(r.total) || 0;
  const bytes = total ? `${fmtBytes(done ? total : r.completed)} / ${fmtBytes(total)}` : "";
  const reason = r.error || r.status;
  const status = r.state === "failed" ? `failed: ${reason || "unknown reason"}`
    : done ? "completed" : isOver(r) ? `${r.state}${reason ? `: ${reason}` : ""}` : (r.status || r.state);
  const est = rates.of(jobId, r);
  const split = sourceSplit(r);
  const rate = est ? (est.stalled ? "stalled" : fmtRate(est.rate))
    : TRANSFER.has(phase) && Number(r.rate) > 0 ? fmtRate(Number(r.rate)) : "";
  return h("li", { class: `bar-row s-${r.state} p-${phase}`, dataset: { worker: r.worker, state: r.state, phase } },
    h("span", { class: "who", title: r.worker }, breakable(r.worker)),
    h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent,
      "aria-valuetext": busy ? `${phase}, ${pct(percent)} transferred` : null, "aria-label": `${r.worker} progress` },
    h("div", { class: "fill", style: `width:${busy ? 100 : percent}%` },
      split ? h("div", { class: "peer-part", style: `width:${split.peerShare}%` }) : "")),
    h("span", { class: "pct" }, label),
    h("span", { class: "bytes" }, bytes),
    split ? h("span", { class: "split", title: split.text }, split.text) : "",
    h("span", { class: "speed" },
      h("span", { class: "rate" }, rate),
      h("span", { class: "left" }, est && est.left !== null ? `${fmtDuration(est.left)} left` : "")),
    h("span", { class: "status", title: status }, status));
}

// Where a worker's bytes came from under fan-out (worker_agent/fanout.py): the bar's peer share is drawn in
// another colour, and the text names the upstream and peer bytes (and peers dropped for bad bytes), and the
// bytes resumed from a partial download on the worker's disk, which crossed no network this time.
export function sourceSplit(r) {
  const up = Number(r.upstream_bytes) || 0;
  const peer = Number(r.peer_bytes) || 0;
  const resumed = Number(r.resumed_bytes) || 0;
  if (!up && !peer && !resumed) return null;
  const peers = Object.keys(r.peers || {}).length;
  const bad = Object.keys(r.bad_peers || {});
  const text = `${fmtBytes(up)} upstream, ${fmtBytes(peer)} from ${peers} peer${peers === 1 ? "" : "s"}`
    + (resumed ? `, ${fmtBytes(resumed)} resumed from disk` : "")
    + (bad.length ? ` (dropped ${bad.join(", ")}: bad bytes)` : "")
    + (r.alone ? " (without peers: swarm board unreachable)" : "");
  return { peerShare: up + peer ? (100 * peer) / (up + peer) : 0, text };
}

// The few bars worth a glance first: under way, then failed, then the rest.
export function interestingFirst(records) {
  const rank = (r) => (!isOver(r) ? 0 : r.state === "failed" ? 1 : 2);
  return [...records].sort((a, b) => rank(a) - rank(b) || a.worker.localeCompare(b.worker));
}

// ---- failure reasons in the job's row ----------------------------------------------------------
const expanded = new Set(); // "job id\nreason" of the reasons the operator opened (rows re-render every few seconds)

// Failed workers grouped by reason, the most common first: 200 workers failing alike read as one line.
export function failureGroups(records) {
  const groups = new Map();
  for (const r of records) {
    if (r.state !== "failed") continue;
    const why = r.error || r.status || "unknown reason";
    if (!groups.has(why)) groups.set(why, []);
    groups.get(why).push(r.worker);
  }
  return [...groups].map(([reason, workers]) => ({ reason, workers })).sort((a, b) => b.workers.length - a.workers.length);
}

function workersText(workers, max = 4) {
  const shown = workers.slice(0, max).join(", ");
  return workers.length > max ? `${shown} and ${workers.length - max} more` : shown;
}

// Each reason wrapped, at most three lines until clicked (the whole text is also its tooltip).
export function failureList(jobId, records, maxGroups = 3) {
  const groups = failureGroups(records);
  if (!groups.length) return null;
  const items = groups.slice(0, maxGroups).map(({ reason, workers }) => {
    const key = `${jobId}\n${reason}`;
    const open = expanded.has(key);
    return h("li", { class: "failure", dataset: { workers: workers.join(" ") } },
      h("button", { type: "button", class: `reason${open ? " expanded" : ""}`, title: reason, "aria-expanded": String(open),
        dataset: { focus: `reason:${key}` },
        onclick: (e) => {
          const now = !expanded.has(key);
          if (now) expanded.add(key); else expanded.delete(key);
          e.currentTarget.classList.toggle("expanded", now);
          e.currentTarget.setAttribute("aria-expanded", String(now));
        } }, reason),
      h("span", { class: "on" }, ` on ${workersText(workers)}`));
  });
  if (groups.length > maxGroups) items.push(h("li", { class: "muted" }, `+${groups.length - maxGroups} other reasons (per worker, below)`));
  return h("ul", { class: "failures", "aria-label": "failure reasons" }, items);
}

// A job's bars under the row that started it (Coverage, Registry): its summary and the first few bars,
// the ones under way first; the Jobs panel has every worker's.
const INLINE_BARS = 8;

export function inlineBars(watch, onHide) {
  const records = [...watch.records.values()];
  const counts = phaseCounts(records);
  const shown = interestingFirst(records).slice(0, INLINE_BARS);
  const state = watch.job.state;
  return h("div", { class: "inline-bars", dataset: { job: watch.id, jobState: state } },
    h("div", { class: "summary" }, h("span", { class: `chip s-${state}` }, state), ` ${countsText(counts)}`,
      figuresNodes(jobFigures(watch.id, records), counts),
      onHide && isOver(watch.job) ? h("button", { type: "button", class: "link", onclick: onHide }, "hide") : ""),
    h("ol", { class: "bars compact" }, shown.map((r) => barRow(watch.id, r))),
    records.length > shown.length
      ? h("p", { class: "muted" }, `and ${records.length - shown.length} more workers (Jobs panel, per worker)`) : "");
}

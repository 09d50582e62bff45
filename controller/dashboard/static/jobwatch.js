// Live progress of one job: the event stream read with fetch (so the bearer token goes along),
// polling GET /api/v1/models/pull-jobs/{id} each second when the stream is unavailable.
import { api, authHeaders } from "./api.js";
import { sleep } from "./dom.js";
import { isOver, rates } from "./progress.js";

export const watches = new Map(); // job id -> JobWatch: the jobs panel shows these live too

export class JobWatch {
  static onAnyChange = () => {};

  constructor(job, onChange) {
    this.id = job.id;
    watches.set(job.id, this);
    this.onChange = onChange;
    this.closed = false;
    this.mode = "live";
    this.apply(job);
    this.run();
  }

  apply(job) {
    this.job = job;
    for (const r of job.workers) rates.observe(job.id, r);
    this.records = new Map(job.workers.map((w) => [w.worker, w]));
    this.changed();
  }

  // A published record carries the job's state after its write (`job_state` and `job_final`,
  // eldric/cluster/jobs/store.py); the records the controller re-reads for states only readers derive carry
  // none and leave it as it was.
  merge(records) {
    let { state, final } = this.job;
    for (const r of records) {
      const old = this.records.get(r.worker);
      if (old && (r.updated_at || 0) < (old.updated_at || 0) && !isOver(r)) continue; // an older echo
      rates.observe(this.id, r);
      this.records.set(r.worker, r);
      if (r.job_state) { state = r.job_state; final = Boolean(r.job_final); }
    }
    this.job = { ...this.job, state, final };
    this.changed();
  }

  changed() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.onChange(this); JobWatch.onAnyChange(this); });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.abort) this.abort.abort();
    this.changed(); // it stays in `watches`: its final records are fresher than the last poll of the list
  }

  async run() {
    for (let attempt = 0; !this.closed && attempt < 3;) {
      let ended;
      try {
        ended = await this.stream();
      } catch (err) {
        ended = "error";
      }
      if (this.closed || ended === "final") return;
      // The events already said the job ended (the stream was cut before its `done`): nothing left to wait for.
      if (isOver(this.job)) { this.close(); return; }
      if (ended === "lifetime") continue; // the server ended a healthy stream (`end`): reconnect at once
      attempt = ended === "progressed" ? 1 : attempt + 1; // a cut after progress is a fresh start
      await sleep(1000); // never reconnect in a tight loop to a stream that keeps breaking
    }
    if (!this.closed) await this.poll();
  }

  // "final" once the job is over; "lifetime" when the server ended the stream (`end`);
  // "progressed" or "cut" when the connection ended without either, with or without progress on the way.
  async stream() {
    this.abort = new AbortController();
    const resp = await fetch(`/api/v1/models/pull-jobs/${encodeURIComponent(this.id)}/events`, {
      headers: { ...authHeaders(), Accept: "text/event-stream" }, signal: this.abort.signal,
    });
    if (!resp.ok || !resp.body) throw new Error(`event stream: HTTP ${resp.status}`);
    this.mode = "live";
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let progressed = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return progressed ? "progressed" : "cut";
      buffer += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const outcome = this.handle(block);
        if (outcome === "progress") progressed = true;
        else if (outcome) { this.abort.abort(); return outcome; }
      }
    }
  }

  handle(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    if (!data.length) return null;
    const payload = JSON.parse(data.join("\n"));
    if (event === "snapshot") this.apply(payload);
    else if (event === "progress") { this.merge(payload.workers || []); return "progress"; }
    else if (event === "done") { this.apply(payload); this.close(); return "final"; }
    else if (event === "end" && payload.reason === "gone") { this.close(); return "final"; } // the job was pruned
    else if (event === "end") return "lifetime";
    return null;
  }

  async poll() {
    this.mode = "polling";
    this.changed();
    while (!this.closed) {
      try {
        const job = await api("GET", `/api/v1/models/pull-jobs/${encodeURIComponent(this.id)}`);
        this.apply(job);
        if (isOver(job)) { this.close(); return; }
      } catch (err) {
        if (err.status === 404) { this.close(); return; } // the job is gone
        // otherwise keep polling: the controller may be restarting
      }
      await sleep(1000);
    }
  }
}

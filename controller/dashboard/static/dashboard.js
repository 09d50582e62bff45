// The Models tab: six panels over the /api/v1 REST API. No framework, no build step.
// Every list is paged or capped (the cluster may have 200 workers and 300 models), and the
// coverage matrix is one <canvas> strip per visible model, drawn from the one GET /api/v1/models.
"use strict";

(() => {
  const TOKEN_KEY = "eldric.apiToken";
  const PAGE = 25;
  const BAR_PAGE = 50;
  const DOT_CAP = 120;
  const FINAL = new Set(["completed", "failed"]);
  const ELIGIBLE_TYPES = new Set(["inference", "cloud"]);

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  // ---- formatting -------------------------------------------------------------------------
  function fmtBytes(n) {
    n = Number(n) || 0;
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[i]}`;
  }
  function fmtTime(t) {
    if (t === null || t === undefined || t === "" || t === 0) return "–";
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
  }
  function fmtAgo(epoch) {
    if (!epoch) return "never";
    const s = Math.max(0, Date.now() / 1000 - epoch);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return fmtTime(epoch);
  }
  const shortDigest = (d) => (d ? String(d).replace("sha256:", "").slice(0, 12) : "–");
  const pct = (p) => `${(Number(p) || 0).toFixed(1)}%`;

  // ---- API --------------------------------------------------------------------------------
  const token = () => localStorage.getItem(TOKEN_KEY) || "";
  const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

  function errorText(body, status) {
    if (body && body.message) return body.message;
    if (body && body.errors) {
      const parts = [];
      for (const where of Object.values(body.errors)) {
        for (const [field, msgs] of Object.entries(where || {})) parts.push(`${field}: ${[].concat(msgs).join(" ")}`);
      }
      if (parts.length) return parts.join("; ");
    }
    return `HTTP ${status}`;
  }

  async function api(method, path, body) {
    const init = { method, headers: { ...authHeaders() } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (resp.status === 401) banner("The controller asks for an API token: enter ELDRIC_API_TOKEN above and press Save.");
    if (!resp.ok) throw Object.assign(new Error(errorText(data, resp.status)), { status: resp.status });
    return data;
  }

  function banner(message) {
    const el = $("banner");
    el.textContent = message || "";
    el.hidden = !message;
  }

  // ---- pagers -----------------------------------------------------------------------------
  function renderPager(el, page, pages, onPage) {
    el.replaceChildren();
    if (pages <= 1) return;
    el.append(
      h("button", { type: "button", disabled: page <= 0, onclick: () => onPage(page - 1) }, "‹ prev"),
      h("span", {}, ` page ${page + 1} of ${pages} `),
      h("button", { type: "button", disabled: page >= pages - 1, onclick: () => onPage(page + 1) }, "next ›"),
    );
  }
  const clampPage = (page, total, size) => Math.max(0, Math.min(page, Math.max(0, Math.ceil(total / size) - 1)));

  // ---- live job progress: SSE over fetch (so the token header goes along), polling as fallback --------
  const watches = new Map(); // job id -> JobWatch: the jobs panel shows these live too

  class JobWatch {
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
      this.records = new Map(job.workers.map((w) => [w.worker, w]));
      this.changed();
    }

    // A published record carries the job's state after its write (`job_state`, eldric/cluster/jobstore.py);
    // the records the controller re-reads for states only readers derive carry none and leave it as it was.
    merge(records) {
      let state = this.job.state;
      for (const r of records) {
        const old = this.records.get(r.worker);
        if (old && (r.updated_at || 0) < (old.updated_at || 0) && !FINAL.has(r.state)) continue; // an older echo
        this.records.set(r.worker, r);
        if (r.job_state) state = r.job_state;
      }
      this.job = { ...this.job, state };
      this.changed();
    }

    changed() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => { this.frame = null; this.onChange(this); scheduleJobs(); });
    }

    get finished() { return FINAL.has(this.job.state) && this.closed; }

    close() {
      this.closed = true;
      if (this.abort) this.abort.abort();
      this.changed();
    }

    async run() {
      for (let attempt = 0; !this.closed && attempt < 3; attempt += 1) {
        try {
          if (await this.stream()) return;
          attempt = 0; // the server ended a healthy stream (lifetime): reconnect at once
        } catch (err) {
          if (this.closed) return;
          if (!FINAL.has(this.job.state)) await sleep(500);
        }
        // The events already said the job ended (the stream was cut before its `done`): nothing left to wait for.
        if (FINAL.has(this.job.state)) { this.close(); return; }
      }
      if (!this.closed) await this.poll();
    }

    // Returns true once the job is final; false when the server ended the stream early.
    async stream() {
      this.abort = new AbortController();
      const resp = await fetch(`/api/v1/models/pull-jobs/${encodeURIComponent(this.id)}/events`, {
        headers: { ...authHeaders(), Accept: "text/event-stream" }, signal: this.abort.signal,
      });
      if (!resp.ok || !resp.body) throw new Error(`event stream: HTTP ${resp.status}`);
      this.mode = "live";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (this.handle(block)) { this.abort.abort(); return true; }
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
      if (!data.length) return false;
      const payload = JSON.parse(data.join("\n"));
      if (event === "snapshot") this.apply(payload);
      else if (event === "progress") this.merge(payload.workers || []);
      else if (event === "done") { this.apply(payload); this.close(); return true; }
      else if (event === "end" && payload.reason === "gone") { this.close(); return true; } // the job was pruned
      return false;
    }

    async poll() {
      this.mode = "polling";
      this.changed();
      while (!this.closed) {
        try {
          const job = await api("GET", `/api/v1/models/pull-jobs/${encodeURIComponent(this.id)}`);
          this.apply(job);
          if (FINAL.has(job.state)) { this.close(); return; }
        } catch (err) {
          if (err.status === 404) { this.close(); return; } // the job is gone
          // otherwise keep polling: the controller may be restarting
        }
        await sleep(1000);
      }
    }

    counts() {
      const counts = {};
      for (const r of this.records.values()) counts[r.state] = (counts[r.state] || 0) + 1;
      return counts;
    }
  }

  function failureText(watch) {
    const failed = [...watch.records.values()].filter((r) => r.state === "failed");
    const shown = failed.slice(0, 3).map((r) => `${r.worker}: ${r.error || r.status}`);
    return shown.join("; ") + (failed.length > 3 ? ` (+${failed.length - 3} more)` : "");
  }

  function countsText(counts) {
    const order = ["completed", "failed", "pulling", "retrying", "pending", "offline"];
    return order.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(" · ");
  }

  // ---- 1. Pull to All Workers --------------------------------------------------------------
  const pull = { watch: null, page: 0 };

  function barRow(r) {
    const done = r.state === "completed";
    const percent = done ? 100 : Number(r.percent) || 0;
    const bytes = r.total ? `${fmtBytes(done ? r.total : r.completed)} / ${fmtBytes(r.total)}` : "";
    const status = r.state === "failed" ? `failed: ${r.error || r.status || "unknown reason"}`
      : done ? "completed" : (r.status || r.state);
    return h("li", { class: `bar-row s-${r.state}`, dataset: { worker: r.worker, state: r.state } },
      h("span", { class: "who", title: r.worker }, r.worker),
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": percent, "aria-label": `${r.worker} progress` },
      h("div", { class: "fill", style: `width:${percent}%` })),
      h("span", { class: "pct" }, pct(percent)),
      h("span", { class: "bytes" }, bytes),
      h("span", { class: "status", title: status }, status));
  }

  function renderPull(watch) {
    if (watch !== pull.watch) return;
    const filter = $("pull-filter").value;
    const keep = (r) => filter === "all" || (filter === "active" ? !FINAL.has(r.state) : r.state === filter);
    const rows = [...watch.records.values()].filter(keep);
    pull.page = clampPage(pull.page, rows.length, BAR_PAGE);
    const counts = watch.counts();
    const job = watch.job;
    $("pull-summary").replaceChildren(
      h("strong", {}, job.model), ` · job ${job.id.slice(0, 8)} · `,
      h("span", { class: `chip s-${job.state}`, dataset: { jobState: job.state } }, job.state),
      ` · ${watch.records.size} worker${watch.records.size === 1 ? "" : "s"}: ${countsText(counts)}`,
      watch.mode === "polling" ? h("span", { class: "muted" }, " (polling)") : "");
    $("pull-filter").hidden = watch.records.size <= 8;
    const page = rows.slice(pull.page * BAR_PAGE, (pull.page + 1) * BAR_PAGE);
    $("pull-bars").replaceChildren(...page.map(barRow));
    renderPager($("pull-pager"), pull.page, Math.ceil(rows.length / BAR_PAGE), (p) => { pull.page = p; renderPull(watch); });
    if (watch.closed) { $("pull-button").disabled = false; refreshSoon(); }
  }

  async function startPull(event) {
    event.preventDefault();
    const model = $("pull-model").value.trim();
    if (!model) return;
    $("pull-button").disabled = true;
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
      $("pull-button").disabled = false;
    }
  }

  // ---- 2. Pull jobs ------------------------------------------------------------------------
  const jobsView = { page: 0, size: 10, open: new Set(), active: false };

  // A job as the live stream knows it, when one is open (fresher than the last poll).
  function liveJob(job) {
    const watch = watches.get(job.id);
    if (!watch) return job;
    const workers = [...watch.records.values()].sort((a, b) => a.worker.localeCompare(b.worker));
    const completed = workers.reduce((n, w) => n + (Number(w.completed) || 0), 0);
    const total = workers.reduce((n, w) => n + (Number(w.total) || 0), 0);
    return { ...job, state: watch.job.state, workers,
      summary: { counts: watch.counts(), completed, total, percent: total ? (100 * completed) / total : 0 } };
  }

  function jobItem(job) {
    job = liveJob(job);
    const active = !FINAL.has(job.state);
    const workers = job.workers || [];
    const dots = workers.slice(0, DOT_CAP).map((w) => h("span", {
      class: `dot s-${w.state}`, dataset: { worker: w.worker, state: w.state },
      title: `${w.worker}: ${w.state}${w.state === "failed" ? ` (${w.error || w.status})` : ""}${
        ["pulling", "retrying"].includes(w.state) ? ` ${pct(w.percent)}` : ""}`,
    }));
    if (workers.length > DOT_CAP) dots.push(h("span", { class: "muted" }, ` +${workers.length - DOT_CAP} more`));
    const summary = job.summary || {};
    const details = h("details", { open: jobsView.open.has(job.id) || null },
      h("summary", {}, "per worker"),
      h("table", { class: "table compact" },
        h("tbody", {}, workers.slice(0, 200).map((w) => h("tr", { dataset: { worker: w.worker, state: w.state } },
          h("td", {}, w.worker), h("td", {}, h("span", { class: `chip s-${w.state}` }, w.state)),
          h("td", {}, FINAL.has(w.state) && w.state === "completed" ? fmtBytes(w.total) : pct(w.percent)),
          h("td", { class: "status" }, w.error || w.status || ""))))),
      workers.length > 200 ? h("p", { class: "muted" }, `first 200 of ${workers.length} workers`) : "");
    details.addEventListener("toggle", () => (details.open ? jobsView.open.add(job.id) : jobsView.open.delete(job.id)));
    return h("li", { class: `job${active ? " active" : ""}`, dataset: { job: job.id, state: job.state } },
      h("div", { class: "job-head" },
        h("span", { class: `chip s-${job.state}` }, job.state),
        h("strong", {}, job.model), h("span", { class: "muted" }, ` ${job.kind} from ${job.source || "ollama"}`),
        h("span", { class: "right muted", title: job.id }, fmtTime(job.created_at))),
      h("div", { class: "job-body" },
        h("span", { class: "dots" }, dots),
        h("span", { class: "muted" }, ` ${countsText(summary.counts || {})}`,
          summary.total ? ` · ${pct(summary.percent)} of ${fmtBytes(summary.total)}` : "")),
      details);
  }

  function scheduleJobs() {
    if (jobsView.frame) return;
    jobsView.frame = requestAnimationFrame(() => { jobsView.frame = null; renderJobs(); });
  }

  function renderJobs() {
    const data = jobsView.data;
    if (!data) return;
    $("jobs-list").replaceChildren(...(data.jobs.length ? data.jobs.map(jobItem) : [h("li", { class: "muted" }, "no jobs yet")]));
    renderPager($("jobs-pager"), jobsView.page, Math.ceil(data.total / jobsView.size),
      (p) => { jobsView.page = p; loadJobs(); });
  }

  async function loadJobs() {
    try {
      const data = await api("GET", `/api/v1/models/pull-jobs?limit=${jobsView.size}&offset=${jobsView.page * jobsView.size}`);
      jobsView.active = data.jobs.some((j) => !FINAL.has(j.state));
      jobsView.data = data;
      renderJobs();
    } catch (err) {
      $("jobs-list").replaceChildren(h("li", { class: "error" }, `jobs: ${err.message}`));
    }
  }

  // ---- cluster data shared by Coverage, Cluster models and Workers -----------------------------
  const cluster = { models: [], eligible: 0, workers: [], byId: new Map(), columns: [], loaded: false };

  async function loadCluster() {
    try {
      const [models, workers] = await Promise.all([api("GET", "/api/v1/models"), api("GET", "/api/v1/workers")]);
      cluster.models = models.models;
      cluster.eligible = models.eligible_workers;
      cluster.modelsRaw = models;
      cluster.workers = workers.workers;
      cluster.byId = new Map(workers.workers.map((w) => [w.id, w]));
      cluster.columns = workers.workers.filter((w) => ELIGIBLE_TYPES.has(w.type)).map((w) => w.id);
      cluster.loaded = true;
      $("conn").textContent = `${workers.online} of ${workers.total} workers online`;
      $("conn").className = "conn ok";
      if (token() || !$("banner").textContent.includes("token")) banner("");
      renderCoverage();
      renderModels();
      renderWorkers();
    } catch (err) {
      $("conn").textContent = `controller: ${err.message}`;
      $("conn").className = "conn bad";
    }
  }

  // ---- 3. Coverage -------------------------------------------------------------------------
  const coverage = { page: 0, jobs: new Map() };

  function drawStrip(canvas, model) {
    const cols = cluster.columns;
    const has = new Set(model.workers);
    const minority = new Set();
    const groups = Object.values(model.digests || {}).sort((a, b) => b.length - a.length);
    for (const group of groups.slice(1)) group.forEach((w) => minority.add(w));
    const cell = Math.max(2, Math.min(10, Math.floor(400 / Math.max(1, cols.length))));
    canvas.width = Math.max(1, cols.length * cell);
    canvas.height = 14;
    const ctx = canvas.getContext("2d");
    cols.forEach((wid, i) => {
      const online = (cluster.byId.get(wid) || {}).online;
      ctx.fillStyle = has.has(wid) ? (minority.has(wid) ? "#d98b1f" : "#2f9e5b") : online ? "#d64545" : "#b9bec7";
      ctx.fillRect(i * cell, 0, Math.max(1, cell - (cell > 3 ? 1 : 0)), 14);
    });
    canvas.onmousemove = (e) => {
      const i = Math.floor((e.offsetX / canvas.clientWidth) * cols.length);
      const wid = cols[Math.max(0, Math.min(cols.length - 1, i))];
      canvas.title = wid ? `${wid}: ${has.has(wid) ? "has it" : "missing"}` : "";
    };
  }

  function distributeSource(model) {
    const holders = model.workers.filter((w) => (cluster.byId.get(w) || {}).online);
    if (holders.length) return { type: "worker", worker: holders[0] };
    return { type: "ollama" };
  }

  async function distributeMissing(model) {
    const slot = { state: "starting" };
    coverage.jobs.set(model.name, slot);
    renderCoverage();
    try {
      const job = await api("POST", "/api/v1/models/distribute",
        { model: model.name, source: distributeSource(model), workers: model.missing });
      slot.watch = new JobWatch(job, (watch) => {
        slot.state = watch.job.state;
        slot.text = watch.job.state === "failed" ? failureText(watch) : countsText(watch.counts());
        if (watch.closed) { refreshSoon(); loadJobs(); }
        renderCoverage();
      });
      loadJobs();
    } catch (err) {
      slot.state = "failed";
      slot.text = err.message;
      renderCoverage();
    }
  }

  function coverageAction(model) {
    const slot = coverage.jobs.get(model.name);
    const status = (text, state) => h("span", { class: `job-status s-${state}`, dataset: { jobState: state } }, text);
    if (slot && slot.state !== "failed" && !(slot.watch && slot.watch.closed)) {
      return status(`distributing… ${slot.text || ""}`, slot.state);
    }
    if (model.coverage >= 100 || !model.missing.length) {
      coverage.jobs.delete(model.name);
      return h("span", { class: "muted" }, "everywhere");
    }
    if (slot && slot.state === "completed") return status("completed; waiting for the inventory", "completed");
    return [slot ? status(`failed: ${slot.text || ""}`, "failed") : "",
      h("button", { type: "button", class: "distribute", onclick: () => distributeMissing(model) },
        `Distribute to ${model.missing.length} missing`)];
  }

  function renderCoverage() {
    const text = $("coverage-filter").value.trim().toLowerCase();
    const partialOnly = $("coverage-partial").checked;
    const partial = (m) => m.coverage < 100;
    const rows = cluster.models
      .filter((m) => (!text || m.name.toLowerCase().includes(text)) && (!partialOnly || partial(m)))
      .sort((a, b) => (partial(b) - partial(a)) || a.coverage - b.coverage || a.name.localeCompare(b.name));
    const partCount = cluster.models.filter(partial).length;
    const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    $("coverage-stats").textContent = `${plural(cluster.models.length, "model")} × ${plural(cluster.eligible, "eligible worker")} · ${partCount} partly covered`;
    coverage.page = clampPage(coverage.page, rows.length, PAGE);
    const body = $("coverage-table").tBodies[0];
    body.replaceChildren(...rows.slice(coverage.page * PAGE, (coverage.page + 1) * PAGE).map((m) => {
      const canvas = h("canvas", { class: "strip", "aria-label": `${m.name} on ${m.workers.length} workers` });
      drawStrip(canvas, m);
      return h("tr", { class: partial(m) ? "partial" : "", dataset: { model: m.name, coverage: m.coverage } },
        h("td", { class: "name" }, m.name, m.consistent ? "" : h("span", { class: "chip s-retrying", title: "workers hold different digests" }, "digests differ")),
        h("td", { class: "cov" }, h("span", { class: "cov-pct" }, `${m.coverage}%`),
          h("span", { class: "muted" }, ` ${m.workers.length}/${cluster.eligible}`)),
        h("td", {}, canvas),
        h("td", {}, coverageAction(m)));
    }));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, cluster.loaded ? "no models" : "loading…")));
    renderPager($("coverage-pager"), coverage.page, Math.ceil(rows.length / PAGE), (p) => { coverage.page = p; renderCoverage(); });
  }

  // ---- 4. Registry -------------------------------------------------------------------------
  const registry = { page: 0, total: 0, jobs: new Map() };

  async function loadRegistry() {
    const body = $("registry-table").tBodies[0];
    try {
      const data = await api("GET", `/api/v1/model-registry?limit=${PAGE}&offset=${registry.page * PAGE}`);
      registry.total = data.total;
      body.replaceChildren(...data.models.map(registryRow));
      if (!data.models.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "the registry holds no models")));
      renderPager($("registry-pager"), registry.page, Math.ceil(data.total / PAGE), (p) => { registry.page = p; loadRegistry(); });
    } catch (err) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error" }, `registry: ${err.message}`)));
    }
  }

  function registryRow(m) {
    const ref = m.reference || `${m.name}:${m.version}`;
    const slot = registry.jobs.get(m.id);
    const status = h("span", { class: "job-status" }, slot ? slot.text : "");
    return h("tr", { dataset: { modelId: m.id, reference: ref } },
      h("td", { class: "name", title: m.id }, ref),
      h("td", {}, m.format || "–"), h("td", {}, fmtBytes(m.size)), h("td", {}, m.source),
      h("td", {}, fmtTime(m.created_at)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "distribute", onclick: () => distributeRegistry(m, ref) }, "Distribute"),
        h("button", { type: "button", class: "danger delete", onclick: () => deleteRegistry(m, ref) }, "Delete"),
        status));
  }

  async function distributeRegistry(m, ref) {
    const slot = { text: "starting…" };
    registry.jobs.set(m.id, slot);
    const show = () => {
      const row = document.querySelector(`#registry-table tr[data-model-id="${CSS.escape(m.id)}"] .job-status`);
      if (row) row.textContent = slot.text;
    };
    show();
    try {
      const job = await api("POST", "/api/v1/models/distribute", { model: m.id, source: { type: "registry" } });
      new JobWatch(job, (watch) => {
        slot.text = `${watch.job.state}: ${watch.job.state === "failed" ? failureText(watch) : countsText(watch.counts())}`;
        show();
        if (watch.closed) refreshSoon();
      });
      loadJobs();
    } catch (err) {
      slot.text = `could not distribute ${ref}: ${err.message}`;
      show();
    }
  }

  async function deleteRegistry(m, ref) {
    if (!window.confirm(`Delete ${ref} from the registry? Workers keep their copies.`)) return;
    try {
      await api("DELETE", `/api/v1/model-registry/${encodeURIComponent(m.id)}`);
      const row = document.querySelector(`#registry-table tr[data-model-id="${CSS.escape(m.id)}"]`);
      if (row) row.remove();
      loadRegistry();
    } catch (err) {
      window.alert(`Could not delete ${ref}: ${err.message}`);
    }
  }

  function defaultName(fileName) {
    const stem = fileName.replace(/\.(gguf|safetensors|bin|pt)$/i, "").replace(/[^A-Za-z0-9_.-]+/g, "-");
    return stem.replace(/^[^A-Za-z0-9_]+/, "") || "model";
  }

  function upload(event) {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (!file) return;
    const name = $("upload-name").value.trim() || defaultName(file.name);
    const query = new URLSearchParams({ name, filename: file.name });
    const xhr = new XMLHttpRequest();
    const progress = $("upload-progress");
    const say = (text, cls) => { $("upload-text").textContent = text; $("upload-text").className = cls || ""; };
    $("upload-status").hidden = false;
    $("upload-button").disabled = true;
    progress.value = 0;
    say(`uploading ${file.name} as ${name}…`);
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      progress.value = (100 * e.loaded) / e.total;
      say(`${pct(progress.value)} · ${fmtBytes(e.loaded)} / ${fmtBytes(e.total)}`);
    };
    xhr.onload = () => {
      $("upload-button").disabled = false;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
      if (xhr.status === 201) {
        progress.value = 100;
        say(`uploaded ${body.reference || body.name} (${body.format}, ${fmtBytes(body.size)})`, "ok");
        $("upload-form").reset();
        registry.page = 0;
        loadRegistry();
      } else {
        say(`upload failed: ${errorText(body, xhr.status)}`, "error");
      }
    };
    xhr.onerror = () => { $("upload-button").disabled = false; say("upload failed: connection lost", "error"); };
    xhr.open("POST", `/api/v1/model-registry/upload?${query}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.send(file);
  }

  // ---- 5. Cluster models -------------------------------------------------------------------
  const modelsView = { page: 0 };

  function detailsText(d) {
    if (!d) return "";
    return ["family", "parameter_size", "quantization_level", "architecture"].filter((k) => d[k]).map((k) => d[k]).join(" · ");
  }

  function renderModels() {
    const text = $("models-filter").value.trim().toLowerCase();
    const rows = cluster.models.filter((m) => !text || m.name.toLowerCase().includes(text));
    $("models-stats").textContent = `total ${cluster.modelsRaw ? cluster.modelsRaw.total : 0} · eligible workers ${cluster.eligible}`;
    modelsView.page = clampPage(modelsView.page, rows.length, PAGE);
    const page = rows.slice(modelsView.page * PAGE, (modelsView.page + 1) * PAGE);
    const cap = (list) => (list.length > 20 ? `${list.slice(0, 20).join(", ")} … +${list.length - 20}` : list.join(", "));
    $("models-table").tBodies[0].replaceChildren(...page.map((m) => h("tr", { dataset: { model: m.name } },
      h("td", { class: "name" }, m.name), h("td", {}, fmtBytes(m.size)), h("td", {}, m.format || "–"),
      h("td", { class: "mono", title: m.digest || "" }, shortDigest(m.digest)), h("td", {}, fmtTime(m.modified_at)),
      h("td", { title: cap(m.workers) }, String(m.workers.length)),
      h("td", { title: cap(m.missing) }, String(m.missing.length)),
      h("td", {}, `${m.coverage}%`), h("td", {}, m.consistent ? "yes" : "no"),
      h("td", { class: "muted" }, detailsText(m.details)))));
    $("models-json").textContent = JSON.stringify({ ...(cluster.modelsRaw || {}), models: page }, null, 1);
    renderPager($("models-pager"), modelsView.page, Math.ceil(rows.length / PAGE), (p) => { modelsView.page = p; renderModels(); });
  }

  // ---- 6. Workers --------------------------------------------------------------------------
  const workersView = { page: 0, selected: null, detailPage: 0, detailModels: [] };

  function renderWorkers() {
    const text = $("workers-filter").value.trim().toLowerCase();
    const rows = cluster.workers.filter((w) => !text || w.id.toLowerCase().includes(text) || (w.type || "").includes(text));
    const online = cluster.workers.filter((w) => w.online).length;
    $("workers-stats").textContent = `${cluster.workers.length} workers · ${online} online`;
    workersView.page = clampPage(workersView.page, rows.length, PAGE);
    $("workers-table").tBodies[0].replaceChildren(...rows.slice(workersView.page * PAGE, (workersView.page + 1) * PAGE)
      .map((w) => h("tr", {
        class: w.id === workersView.selected ? "selected" : "", dataset: { worker: w.id }, tabindex: 0,
        onclick: () => openWorker(w.id), onkeydown: (e) => { if (e.key === "Enter") openWorker(w.id); },
      },
      h("td", { class: "name" }, w.id), h("td", {}, w.type),
      h("td", {}, h("span", { class: `chip ${w.online ? "s-completed" : "s-offline"}` }, w.online ? "online" : "offline")),
      h("td", {}, (w.backends || []).join(", ") || "–"), h("td", {}, fmtBytes(w.free_disk)),
      h("td", {}, String(w.models)), h("td", {}, fmtAgo(w.last_seen)))));
    renderPager($("workers-pager"), workersView.page, Math.ceil(rows.length / PAGE), (p) => { workersView.page = p; renderWorkers(); });
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

  function renderWorkerDetail() {
    const w = workersView.worker;
    const models = workersView.detailModels;
    const size = 50;
    const page = models.slice(workersView.detailPage * size, (workersView.detailPage + 1) * size);
    const pager = h("div", { class: "pager" });
    renderPager(pager, workersView.detailPage, Math.ceil(models.length / size), (p) => { workersView.detailPage = p; renderWorkerDetail(); });
    $("worker-detail").replaceChildren(
      h("h3", {}, w.id, " ", h("span", { class: `chip ${w.online ? "s-completed" : "s-offline"}` }, w.online ? "online" : "offline"),
        h("button", { type: "button", class: "right", onclick: () => { workersView.selected = null; $("worker-detail").hidden = true; renderWorkers(); } }, "close")),
      h("dl", { class: "facts" },
        h("dt", {}, "type"), h("dd", {}, w.type),
        h("dt", {}, "backends"), h("dd", { dataset: { fact: "backends" } }, (w.backends || []).join(", ") || "–"),
        h("dt", {}, "free disk"), h("dd", { dataset: { fact: "free_disk" } }, fmtBytes(w.free_disk)),
        h("dt", {}, "address"), h("dd", {}, w.address || "–"),
        h("dt", {}, "host"), h("dd", {}, w.hostname || "–"),
        h("dt", {}, "last seen"), h("dd", {}, fmtAgo(w.last_seen))),
      h("table", { class: "table compact" },
        h("thead", {}, h("tr", {}, ["Model", "Size", "Modified", "Format", "Backend", "Digest"].map((t) => h("th", {}, t)))),
        h("tbody", {}, page.length ? page.map((m) => h("tr", { dataset: { model: m.name } },
          h("td", { class: "name" }, m.name), h("td", {}, fmtBytes(m.size)), h("td", {}, fmtTime(m.modified_at)),
          h("td", {}, m.format || "–"), h("td", {}, m.backend || "–"), h("td", { class: "mono" }, shortDigest(m.digest))))
          : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no local models")))),
      pager);
  }

  // ---- refresh loop ------------------------------------------------------------------------
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
    $("token").value = token();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token").value.trim();
      if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
      banner("");
      loadCluster(); loadJobs(); loadRegistry();
    });
    $("pull-form").addEventListener("submit", startPull);
    $("pull-filter").addEventListener("change", () => { pull.page = 0; if (pull.watch) renderPull(pull.watch); });
    $("upload-form").addEventListener("submit", upload);
    for (const [input, render, view] of [["coverage-filter", renderCoverage, coverage], ["models-filter", renderModels, modelsView],
      ["workers-filter", renderWorkers, workersView]]) {
      $(input).addEventListener("input", () => { view.page = 0; render(); });
    }
    $("coverage-partial").addEventListener("change", () => { coverage.page = 0; renderCoverage(); });
    loop(loadCluster, 10000);
    loop(loadJobs, () => (jobsView.active ? 2000 : 6000));
    loop(loadRegistry, 30000);
  }

  document.addEventListener("DOMContentLoaded", init);
})();

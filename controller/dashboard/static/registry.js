// The Registry panel: models uploaded, imported or trained; Distribute (with the job's bars under the row),
// Delete (asks first), and an upload from the browser with a progress bar.
import { api, authHeaders, errorText } from "./api.js";
import { app } from "./app.js";
import { $, breakable, h, isBusy, keepFocus, renderPager, setBusy } from "./dom.js";
import { fmtBytes, fmtTime, pct } from "./format.js";
import { JobWatch } from "./jobwatch.js";
import { countsText, failureGroups, inlineBars, isOver, phaseCounts } from "./progress.js";

const PAGE = 25;
const view = { page: 0, total: 0, jobs: new Map() }; // model id -> {watch, text, hidden}

export async function loadRegistry() {
  const body = $("registry-table").tBodies[0];
  try {
    const data = await api("GET", `/api/v1/model-registry?limit=${PAGE}&offset=${view.page * PAGE}`);
    view.total = data.total;
    keepFocus(body, () => {
      body.replaceChildren(...data.models.flatMap(registryRows));
      if (!data.models.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "the registry holds no models")));
    });
    keepFocus($("registry-pager"), () => renderPager($("registry-pager"), view.page, Math.ceil(data.total / PAGE),
      (p) => { view.page = p; loadRegistry(); }));
  } catch (err) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error" }, `registry: ${err.message}`)));
  }
}

const rowOf = (id) => document.querySelector(`#registry-table tr[data-model-id="${CSS.escape(id)}"]`);

function barsRow(id) {
  const slot = view.jobs.get(id);
  if (!slot || !slot.watch || slot.hidden) return null;
  const hide = () => {
    slot.hidden = true;
    showJob(id);
    const button = rowOf(id) && rowOf(id).querySelector("button.distribute");
    if (button) button.focus({ preventScroll: true });
  };
  return h("tr", { class: "bars-row", dataset: { barsFor: id } }, h("td", { colspan: 6 }, inlineBars(slot.watch, hide)));
}

function registryRows(m) {
  const ref = m.reference || `${m.name}:${m.version}`;
  const slot = view.jobs.get(m.id);
  const running = slot && !slot.over;
  const row = h("tr", { dataset: { modelId: m.id, reference: ref } },
    h("td", { class: "name", title: m.id, "data-label": "Model" }, breakable(ref)),
    h("td", { "data-label": "Format" }, m.format || "–"), h("td", { "data-label": "Size" }, fmtBytes(m.size)),
    h("td", { "data-label": "Source" }, m.source), h("td", { "data-label": "Created" }, fmtTime(m.created_at)),
    h("td", { class: "actions" },
      h("button", { type: "button", class: "distribute", "aria-disabled": running ? "true" : null,
        dataset: { focus: `distribute:${m.id}` }, onclick: () => distributeRegistry(m, ref) }, "Distribute"),
      h("button", { type: "button", class: "danger delete", dataset: { focus: `delete:${m.id}` },
        onclick: () => deleteRegistry(m, ref) }, "Delete"),
      h("span", { class: "job-status", role: "status" }, slot ? slot.text : "")));
  return [row, barsRow(m.id), metaRow(m)].filter(Boolean);
}

// Under each model (below its bars): the id, which `eldric registry delete|distribute` and the API take,
// shown and selectable rather than a tooltip, and the metadata folded.
function metaRow(m) {
  return h("tr", { class: "meta-row", dataset: { metaFor: m.id } },
    h("td", { colspan: 6 }, h("div", { class: "reg-id muted" }, "id ", h("code", {}, m.id)), metadata(m)));
}

const PARAMS = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]];
function paramSize(n) {
  const [scale, unit] = PARAMS.find(([scale]) => n >= scale) || [1, ""];
  return `${Number((n / scale).toPrecision(3))}${unit}`;
}

// What the registry read from the headers and was told at upload, folded under the name: facts first.
function metadata(m) {
  const d = m.details || {};
  const facts = [
    ["description", m.description],
    ["architecture", d.architecture],
    ["parameters", d.parameter_count ? paramSize(d.parameter_count) : null],
    ["quantization", d.quantization || d.file_type || d.dtype],
    ["context length", d.context_length],
    ...Object.entries(m.lineage || {}).map(([k, v]) => [k.replace(/_/g, " "), v]),
    ["imported from", m.origin && m.origin.urls ? m.origin.urls.join(", ") : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  const files = (m.files || []).map((f) => h("li", {}, h("span", { class: "reg-path" }, f.path), ` · ${fmtBytes(f.size)} · `,
    h("code", { class: "reg-sha", title: f.sha256 }, f.sha256)));
  return h("details", { class: "reg-meta" }, h("summary", {}, "details"),
    h("dl", {}, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
    files.length ? h("ul", { class: "reg-files" }, files) : null);
}

// Update the row's status and bars in place (the table itself is re-read only every 30 s).
function showJob(id) {
  const row = rowOf(id);
  if (!row) return;
  const slot = view.jobs.get(id);
  row.querySelector(".job-status").textContent = slot.text;
  setBusy(row.querySelector("button.distribute"), !slot.over);
  const old = row.nextElementSibling && row.nextElementSibling.matches(".bars-row") ? row.nextElementSibling : null;
  const fresh = barsRow(id);
  if (old && fresh) keepFocus(old, () => old.replaceWith(fresh));
  else if (old) old.remove();
  else if (fresh) row.after(fresh);
}

async function distributeRegistry(m, ref) {
  if (view.jobs.has(m.id) && !view.jobs.get(m.id).over) return; // already on its way
  const slot = { text: "starting…", over: false };
  view.jobs.set(m.id, slot);
  showJob(m.id);
  try {
    const job = await api("POST", "/api/v1/models/distribute", { model: m.id, source: { type: "registry" } });
    slot.watch = new JobWatch(job, (watch) => {
      const records = [...watch.records.values()];
      const state = watch.job.state;
      slot.text = `${state}: ${state === "failed" ? failureGroups(records).map((g) => `${g.reason} (${g.workers.join(", ")})`).join("; ")
        : countsText(phaseCounts(records))}`;
      slot.over = watch.closed && isOver(watch.job);
      showJob(m.id);
      if (slot.over) app.refreshSoon();
    });
    app.loadJobs();
  } catch (err) {
    Object.assign(slot, { text: `could not distribute ${ref}: ${err.message}`, over: true });
    showJob(m.id);
  }
}

async function deleteRegistry(m, ref) {
  if (!window.confirm(`Delete ${ref} from the registry? Workers keep their copies.`)) return;
  try {
    await api("DELETE", `/api/v1/model-registry/${encodeURIComponent(m.id)}`);
    const row = rowOf(m.id);
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
  if (!file || isBusy($("upload-button"))) return;
  const name = $("upload-name").value.trim() || defaultName(file.name);
  const query = new URLSearchParams({ name, filename: file.name });
  const xhr = new XMLHttpRequest();
  const progress = $("upload-progress");
  const say = (text, cls) => { $("upload-text").textContent = text; $("upload-text").className = cls || ""; };
  $("upload-status").hidden = false;
  setBusy($("upload-button"), true);
  progress.value = 0;
  say(`uploading ${file.name} as ${name}…`);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    progress.value = (100 * e.loaded) / e.total;
    say(`${pct(progress.value)} · ${fmtBytes(e.loaded)} / ${fmtBytes(e.total)}`);
  };
  xhr.onload = () => {
    setBusy($("upload-button"), false);
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
    if (xhr.status === 201) {
      progress.value = 100;
      say(`uploaded ${body.reference || body.name} (${body.format}, ${fmtBytes(body.size)})`, "ok");
      $("upload-form").reset();
      view.page = 0;
      loadRegistry();
    } else {
      say(`upload failed: ${errorText(body, xhr.status)}`, "error");
    }
  };
  xhr.onerror = () => { setBusy($("upload-button"), false); say("upload failed: connection lost", "error"); };
  xhr.open("POST", `/api/v1/model-registry/upload?${query}`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.send(file);
}

export function initRegistry() {
  $("upload-form").addEventListener("submit", upload);
}

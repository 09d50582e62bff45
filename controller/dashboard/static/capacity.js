// A worker's capacity as the Workers panel shows it: the disk of its model store as a bar (used / free, and
// the eviction watermarks when its agent reports them) and its labels. Everything here reads the worker
// view (GET /api/v1/workers): disk_free, disk_total, disk_high_watermark, disk_low_watermark (bytes used),
// labels, gpus. An older agent reports no total: the cell then says only what is free.
import { h } from "./dom.js";
import { fmtBytes } from "./format.js";

const share = (part, whole) => Math.min(100, Math.max(0, (100 * part) / whole));

export const labelsText = (w) => Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(",");

export function diskBar(w) {
  const free = w.disk_free ?? w.free_disk;
  const total = w.disk_total;
  if (!total) return h("span", { class: "disk-text", dataset: { disk: "free" } }, free == null ? "–" : `${fmtBytes(free)} free`);
  const used = Math.max(0, total - free);
  const marks = [["high", w.disk_high_watermark], ["low", w.disk_low_watermark]].filter(([, at]) => at > 0);
  const over = w.disk_high_watermark > 0 && used > w.disk_high_watermark;
  const title = [`${fmtBytes(used)} used, ${fmtBytes(free)} free of ${fmtBytes(total)}`,
    ...marks.map(([name, at]) => `${name} watermark ${fmtBytes(at)} (${Math.round(share(at, total))}%)`)].join(" · ");
  return h("div", { class: "disk", title, dataset: { disk: over ? "over" : "ok" } },
    h("div", { class: `disk-bar${over ? " over" : ""}`, role: "img", "aria-label": title },
      h("span", { class: "disk-used", style: `width: ${share(used, total).toFixed(1)}%` }),
      marks.map(([name, at]) => h("span", { class: `disk-mark ${name}`, dataset: { mark: name },
        style: `left: ${share(at, total).toFixed(1)}%` }))),
    h("span", { class: "disk-text" }, `${fmtBytes(used)} used · ${fmtBytes(free)} free`));
}

export function labelChips(w) {
  const entries = Object.entries(w.labels || {});
  if (!entries.length) return "–";
  return entries.map(([k, v]) => h("span", { class: "chip label", dataset: { label: k } }, `${k}=${v}`));
}

export function gpusText(w) {
  const gpus = w.gpus || [];
  if (!gpus.length) return "none";
  return gpus.map((g) => `${g.name} (${fmtBytes(g.memory_free)} free of ${fmtBytes(g.memory_total)})`).join(", ");
}

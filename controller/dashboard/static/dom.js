// Small DOM helpers shared by the panels: element builder, pagers, focus that survives a re-render,
// names that wrap at their separators.

export const $ = (id) => document.getElementById(id);
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function h(tag, attrs, ...kids) {
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

// A model or worker name with a line-break opportunity after each separator ("/", ":", "-", "@", and "."
// unless a digit follows, so "qwen2.5:0.5b" and "q4_K_M" stay whole): a long name wraps between its
// parts instead of mid-word (CSS: overflow-wrap: break-word breaks a part only when it alone is too wide).
export function breakable(name) {
  const out = [];
  for (const part of String(name).split(/(?<=[/:@-]|\.(?!\d))/)) {
    if (out.length) out.push(document.createElement("wbr"));
    out.push(part);
  }
  return out;
}

// Re-render `root` and give the focus back to the control that had it: the element carrying the same
// `data-focus` key (panels re-render every few seconds; without this the focus falls to <body>).
export function keepFocus(root, render) {
  const active = document.activeElement;
  const key = active && root.contains(active) && active !== root ? active.dataset.focus : undefined;
  render();
  if (!key || root.contains(document.activeElement)) return;
  const again = root.querySelector(`[data-focus="${CSS.escape(key)}"]`);
  if (again) again.focus({ preventScroll: true });
}

// A pressed button stays focusable while its work runs (a disabled one would drop the keyboard focus).
export function setBusy(button, busy) {
  if (busy) button.setAttribute("aria-disabled", "true"); else button.removeAttribute("aria-disabled");
}
export const isBusy = (button) => button.getAttribute("aria-disabled") === "true";

export function renderPager(el, page, pages, onPage, what = "page") {
  el.replaceChildren();
  if (pages <= 1) return;
  const key = el.id || what;
  el.append(
    h("button", { type: "button", disabled: page <= 0, dataset: { focus: `${key}:prev` }, onclick: () => onPage(page - 1) },
      "‹ prev"),
    h("span", {}, ` ${what} ${page + 1} of ${pages} `),
    h("button", { type: "button", disabled: page >= pages - 1, dataset: { focus: `${key}:next` },
      onclick: () => onPage(page + 1) }, "next ›"),
  );
}

export const clampPage = (page, total, size) => Math.max(0, Math.min(page, Math.max(0, Math.ceil(total / size) - 1)));

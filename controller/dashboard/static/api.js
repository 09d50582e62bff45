// The REST API from the browser: the bearer token the operator saved, one error format, the banner.
import { $ } from "./dom.js";

const TOKEN_KEY = "eldric.apiToken";

export const token = () => localStorage.getItem(TOKEN_KEY) || "";
export const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

export function saveToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
}

export function errorText(body, status) {
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

export async function api(method, path, body) {
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

export function banner(message) {
  const el = $("banner");
  el.textContent = message || "";
  el.hidden = !message;
}

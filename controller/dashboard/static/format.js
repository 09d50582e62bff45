// How numbers, times and digests read on the page.

export function fmtBytes(n) {
  n = Number(n) || 0;
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(n < 10 ? 2 : 1) : Math.round(n)} ${units[i]}`;
}

export const fmtRate = (bytesPerSecond) => `${fmtBytes(bytesPerSecond)}/s`;

// "8 s", "3 min 20 s", "2 h 5 min", "3 d 4 h": two units at most, rounded up (time left never reads 0 s early).
export function fmtDuration(seconds) {
  let s = Math.max(1, Math.ceil(Number(seconds) || 0));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (s >= size || (unit === "s" && !parts.length)) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    } else if (parts.length) {
      break;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

export function fmtTime(t) {
  if (t === null || t === undefined || t === "" || t === 0) return "–";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

export function fmtAgo(epoch) {
  if (!epoch) return "never";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return fmtTime(epoch);
}

export const shortDigest = (d) => (d ? String(d).replace("sha256:", "").slice(0, 12) : "–");
export const pct = (p) => `${(Number(p) || 0).toFixed(1)}%`;
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

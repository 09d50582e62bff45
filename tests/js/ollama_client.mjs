// The official `ollama` npm client (ollama-js) against an Eldric controller, one step after another.
// Usage: node ollama_client.mjs <controller URL> <token> '<JSON list of steps>'
// A step is {"op": <one of STEPS below>, ...its request}. A request with `stream: true` is read to its end and
// answered as {parts: [...]}. Prints one JSON list: each step's answer, or {"error", "status_code"} when the
// client raised.
// ollama-js sends `name` for pull, push and delete (the deprecated key Ollama still takes), `model` elsewhere.
// It has no blob upload (Python's create_blob): `upload` does what Open WebUI does, sha256 of the file, then
// HEAD and POST /api/blobs/sha256:<hex> with fetch, and answers {digest, head, status}; the digest then goes
// into a `create` step's `files`, which ollama-js passes through untouched.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { Ollama } from "ollama";

const [host, token, stepsJson] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const client = new Ollama({ host, headers });

async function upload({ path }) {
  const bytes = await readFile(path);
  const digest = "sha256:" + createHash("sha256").update(bytes).digest("hex");
  const url = `${host}/api/blobs/${digest}`;
  const head = (await fetch(url, { method: "HEAD", headers })).status;
  const sent = await fetch(url, { method: "POST", headers, body: bytes });
  if (!sent.ok) throw Object.assign(new Error(await sent.text()), { status_code: sent.status });
  return { digest, head, status: sent.status };
}

const STEPS = {
  version: () => client.version(),
  list: () => client.list(),
  ps: () => client.ps(),
  show: (r) => client.show(r),
  copy: (r) => client.copy(r),
  delete: (r) => client.delete(r),
  pull: (r) => client.pull(r),
  push: (r) => client.push(r),
  create: (r) => client.create(r),
  chat: (r) => client.chat(r),
  generate: (r) => client.generate(r),
  embed: (r) => client.embed(r),
  upload,
};

async function run({ op, ...request }) {
  if (!(op in STEPS)) throw new Error(`unknown step ${op}`);
  const answer = await STEPS[op](request);
  if (!request.stream) return answer;
  const parts = [];
  for await (const part of answer) parts.push(part);
  return { parts };
}

const results = [];
for (const step of JSON.parse(stepsJson)) {
  try {
    results.push(await run(step));
  } catch (err) {
    results.push({ error: String(err.error ?? err.message ?? err), status_code: err.status_code ?? null });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");

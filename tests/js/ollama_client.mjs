// The official `ollama` npm client (ollama-js) against an Eldric controller, one step after another.
// Usage: node ollama_client.mjs <controller URL> <token> '<JSON list of steps>'
// A step is {"op": "version" | "list" | "pull" | "show" | "copy" | "delete", ...its request}; `pull` streams.
// Prints one JSON list: each step's answer, or {"error", "status_code"} when the client raised.
// ollama-js sends `name` for pull and delete (the deprecated key Ollama still takes), `model` for show.
import { Ollama } from "ollama";

const [host, token, stepsJson] = process.argv.slice(2);
const client = new Ollama({ host, headers: token ? { Authorization: `Bearer ${token}` } : {} });

async function run(step) {
  switch (step.op) {
    case "version": return client.version();
    case "list": return client.list();
    case "show": return client.show({ model: step.model });
    case "copy": return client.copy({ source: step.source, destination: step.destination });
    case "delete": return client.delete({ model: step.model });
    case "pull": {
      const parts = [];
      for await (const part of await client.pull({ model: step.model, stream: true })) parts.push(part);
      return { parts };
    }
    default: throw new Error(`unknown step ${step.op}`);
  }
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

"""The control plane at fleet size: simulated workers in Redis, a real controller, its latencies.

Writes W workers into a private redis-server exactly as real agents do (worker_agent/membership.py
`register`, `beat` and `publish_inventory` with records shaped like `OllamaStore.list_models`):
90 % inference workers, most of them with all `--models` models, the rest missing a few; every
tenth worker a data worker. Then starts `eldric controller` against it and times, at each size:
GET /api/v1/models, GET /api/v1/workers, POST /api/v1/models/pull until its 202, and GET of that
one job (all W targets). Prints the medians and the growth from the smallest to the largest size.

The goal (issue 13, at 1000 workers x 100 models): models <= 200 ms, workers <= 50 ms,
pull 202 <= 1 s, one job <= 100 ms. Exits 1 when missed, unless --no-fail.

Run: python bench/fleet.py [--workers 100 1000] [--models 100] [--rounds 5] [--no-fail]

Only the seeding and the timing are here: the virtual agents that consume their queues and
write progress (issue 13's full simulator) are not yet; the pulls' messages stay queued.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eldric.cluster import keys
from tests.support.processes import RedisServer, Service, eldric, free_port, session, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
GOALS_MS = {"GET /api/v1/models": 200, "GET /api/v1/workers": 50, "POST pull until 202": 1000,
            "GET one job": 100}
GOAL_SIZE = 1000
# Seeded workers stay online for the whole bench (real agents refresh a 3-heartbeat TTL).
ALIVE_TTL = 3600


def worker_type(index: int) -> str:
    return "data" if index % 10 == 9 else "inference"


def model_record(name: str, now: float) -> dict:
    """An inventory record as `OllamaStore.list_models` writes it."""
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return {"name": name, "full_name": f"registry.ollama.ai/library/{name}", "digest": digest,
            "size": 400_000_000 + len(name) * 1_000_003, "modified_at": now - 86400, "format": "gguf",
            "backend": "ollama",
            "details": {"format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "1B",
                        "quantization_level": "Q4_K_M", "parent_model": ""}}


def worker_record(wid: str, wtype: str, index: int, now: float) -> dict[str, str]:
    """The worker hash as `register` (with `worker_info`), `beat` and `publish_inventory` leave it."""
    serving = wtype == "inference"
    data_dir = f"/var/lib/eldric/{wid}"
    details = {"ollama-store": {"models_dir": f"{data_dir}/ollama/models"}} if serving else {}
    info = {"id": wid, "type": wtype, "address": f"http://10.{index // 65536 % 256}.{index // 256 % 256}."
                                                f"{index % 256}:8890",
            "backends": json.dumps(["ollama"] if serving else []), "free_disk": 500_000_000_000,
            "data_dir": data_dir, "hostname": f"host-{wid}", "upstream_registry": "https://registry.ollama.ai",
            "backend_details": json.dumps(details), "registered_at": now - 3600, "last_seen": now,
            "inventory_at": now}
    return {k: str(v) for k, v in info.items()}


def seed(client: redis.Redis, workers: int, models: int, rng: random.Random) -> None:
    """Replace the cluster in Redis with `workers` simulated ones."""
    client.flushdb()
    now = time.time()
    names = [f"model-{m:03d}:latest" for m in range(models)]
    records = {name: json.dumps(model_record(name, now)) for name in names}
    pipe = client.pipeline(transaction=False)
    for i in range(workers):
        wid, wtype = f"w{i:05d}", worker_type(i)
        pipe.sadd(keys.WORKERS, wid)
        pipe.hset(keys.worker(wid), mapping=worker_record(wid, wtype, i, now))
        pipe.set(keys.worker_alive(wid), now, ex=ALIVE_TTL)
        if wtype == "inference":
            # Most have every model; one in five misses a few (what the coverage view is for).
            have = names if i % 5 else [n for n in names if rng.random() > 0.05]
            pipe.hset(keys.worker_models(wid), mapping={n: records[n] for n in have})
        if len(pipe) > 2000:
            pipe.execute()
    pipe.execute()


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000, result


def measure(http, url: str, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in GOALS_MS}
    for r in range(rounds):
        ms, resp = timed(lambda: http.get(f"{url}/api/v1/models", timeout=120))
        assert resp.status_code == 200, resp.text[:300]
        samples["GET /api/v1/models"].append(ms)
        ms, resp = timed(lambda: http.get(f"{url}/api/v1/workers", timeout=120))
        assert resp.status_code == 200, resp.text[:300]
        samples["GET /api/v1/workers"].append(ms)
        ms, resp = timed(lambda: http.post(f"{url}/api/v1/models/pull", json={"model": f"bench-{r}:latest"},
                                           timeout=120))
        assert resp.status_code == 202, resp.text[:300]
        samples["POST pull until 202"].append(ms)
        job_id = resp.json()["id"]
        ms, resp = timed(lambda: http.get(f"{url}/api/v1/models/pull-jobs/{job_id}", timeout=120))
        assert resp.status_code == 200, resp.text[:300]
        samples["GET one job"].append(ms)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(results: dict[int, dict[str, float]], models: int) -> list[str]:
    """The medians per size, the growth largest/smallest, and the goals missed at GOAL_SIZE."""
    sizes = sorted(results)
    head = f"{'endpoint':<22}" + "".join(f"{f'{w}x{models} ms':>16}" for w in sizes)
    if len(sizes) > 1:
        head += f"{f'growth {sizes[-1]}/{sizes[0]}':>18}"
    print(head + f"{'goal ms':>10}")
    missed = []
    for name, goal in GOALS_MS.items():
        line = f"{name:<22}" + "".join(f"{results[w][name]:>16.1f}" for w in sizes)
        if len(sizes) > 1:
            line += f"{results[sizes[-1]][name] / results[sizes[0]][name]:>17.1f}x"
        print(line + f"{goal:>10}")
        if GOAL_SIZE in results and results[GOAL_SIZE][name] > goal:
            missed.append(f"{name}: {results[GOAL_SIZE][name]:.0f} ms > {goal} ms at {GOAL_SIZE} workers")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when a goal is missed")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eldric-fleet-"))
    services: list[Service] = []
    try:
        redis_server = RedisServer(root).start()
        services.append(redis_server)
        port = free_port()
        controller = Service("controller", eldric("controller", "--port", str(port)), root, cwd=REPO_ROOT,
                             env={"ELDRIC_REDIS_URL": redis_server.url}).start()
        services.append(controller)
        url, http = f"http://127.0.0.1:{port}", session()
        wait_until(lambda: http.get(f"{url}/healthz", timeout=2).ok, timeout=30,
                   message=f"controller on {url}\n{controller.log_tail()}")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        results, cold = {}, {}
        for w in sorted(args.workers):
            seed(client, w, args.models, random.Random(w))
            # The first read after seeding parses every inventory (the controller's cache is cold);
            # later ones re-read only the inventories whose stamp changed. Shown, not judged.
            cold[w], _ = timed(lambda: http.get(f"{url}/api/v1/models", timeout=120))
            results[w] = measure(http, url, args.rounds)
        missed = print_table(results, args.models)
        print("first GET /api/v1/models after seeding (every inventory new): "
              + ", ".join(f"{w} workers {ms:.0f} ms" for w, ms in cold.items()))
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(root, ignore_errors=True)
    for line in missed:
        print("MISSED", line)
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())

"""Placement at fleet size (issue 25): `--models` pulls with `replicas` over W simulated workers.

`python bench/fleet.py --replicas 3 --models 100 --workers 1000 [--spread zone]` runs this instead of
the pull/stream bench. The workers are records only (written to a private redis-server as agents
write them: labels zone=a/b/c, free disk 100-2,000 GiB of a 2 TiB store, 0-4 models already, online
marks; every tenth a data worker), since placement reads nothing else and no task has to run: the
pulls stay queued. A loopback stand-in for the Ollama registry answers each manifest with a model of
2-40 GiB, so the controller's one manifest GET (check_upstream) gives placement real sizes. Then
`--models` POST /api/v1/models/pull {replicas, spread}, one after the other as fast as they answer.

Reports: the time to each 202 (median, p95, max; goal <= 1 s each), whether every pull got its
replicas, and the balance: copies per worker among the workers used, and the models per inference
worker (held + placed) max/min, with the workers used per zone. Seeded: the same fleet every run.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from eldric.cluster import workers as cluster_workers
from eldric.cluster.capacity import record_fields

GIB = 1 << 30
ZONES = ("a", "b", "c")
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
GOAL_MS = 1000.0


def model_size(name: str) -> int:
    return random.Random(name).randint(2, 40) * GIB


class _Manifests(BaseHTTPRequestHandler):
    """GET /v2/library/<name>/manifests/<tag>: a manifest whose one layer is model_size(name) bytes."""

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if len(parts) < 5 or parts[-2] != "manifests":
            self.send_error(404)
            return
        name = parts[-3]
        body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 400,
                                      "digest": "sha256:" + "0" * 64},
                           "layers": [{"mediaType": "application/vnd.ollama.image.model", "size": model_size(name),
                                       "digest": "sha256:" + "1" * 64}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", MANIFEST_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


def start_manifest_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Manifests)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_fleet(client: redis.Redis, workers: int) -> None:
    """W worker records with labels and disk facts, online for an hour, written as the agents write them."""
    rng = random.Random(25)
    for i in range(workers):
        wid = f"sim-{i:04d}"
        wtype = "data" if i % 10 == 9 else "inference"
        cluster_workers.register(client, {"id": wid, "type": wtype,
                                          "address": f"http://10.0.{i // 250}.{i % 250}:8890"}, ttl=3600)
        client.hset(f"eldric:worker:{wid}", mapping=record_fields(
            {"zone": ZONES[i % len(ZONES)]}, rng.randint(100, 2000) * GIB, 2048 * GIB, []))
        held = [{"name": f"base-{m}:latest", "size": 4 * GIB, "digest": "sha256:" + "2" * 64}
                for m in range(rng.randint(0, 4))]
        cluster_workers.publish_inventory(client, wid, held)


@dataclass
class PlacementResult:
    workers: int
    post_ms: list[float]
    short: list[str]  # pulls placed on fewer workers than asked (with why)
    copies: dict[str, int]  # worker id -> copies placed on it
    models: dict[str, int]  # inference worker id -> models held + placed
    zones: dict[str, int]  # zone -> copies placed there


def run_placement(http, url: str, client: redis.Redis, *, workers: int, models: int, replicas: int,
                  spread: str | None) -> PlacementResult:
    write_fleet(client, workers)
    held = {wid: client.hlen(f"eldric:worker:{wid}:models") for wid in cluster_workers.registered_ids(client)}
    post_ms, short, copies = [], [], {}
    body = {"replicas": replicas, **({"spread": spread} if spread else {})}
    for m in range(models):
        start = time.perf_counter()
        resp = http.post(f"{url}/api/v1/models/pull", json={"model": f"placed-{m}", **body}, timeout=60)
        post_ms.append((time.perf_counter() - start) * 1000)
        if resp.status_code != 202:
            short.append(f"placed-{m}: {resp.status_code} {resp.text[:200]}")
            continue
        job = resp.json()
        placed = [w["worker"] for w in job["workers"] if w.get("state") != "skipped"]
        if len(placed) < replicas:
            short.append(f"placed-{m}: {len(placed)} of {replicas}")
        for wid in placed:
            copies[wid] = copies.get(wid, 0) + 1
    types = cluster_workers.types(client, list(held))
    per_model = {wid: n + copies.get(wid, 0) for wid, n in held.items() if types[wid] == "inference"}
    zones: dict[str, int] = {}
    for wid, n in copies.items():
        zone = ZONES[int(wid.split("-")[1]) % len(ZONES)]
        zones[zone] = zones.get(zone, 0) + n
    return PlacementResult(workers, post_ms, short, copies, per_model, zones)


def report(r: PlacementResult, *, models: int, replicas: int, spread: str | None) -> list[str]:
    ms = sorted(r.post_ms)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else float("nan")
    used = sorted(r.copies.values())
    print(f"\nplacement bench: {models} pulls x replicas {replicas}{f', spread {spread}' if spread else ''} over "
          f"{r.workers} simulated workers ({len(r.models)} inference), model sizes 2-40 GiB, free disk 100-2000 GiB")
    print(f"  POST pull until 202: median {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms "
          f"(goal <= {GOAL_MS:.0f} ms)")
    print(f"  copies placed: {sum(used)} of {models * replicas} on {len(used)} workers, per worker used "
          f"max/min {used[-1] if used else 0}/{used[0] if used else 0}; per zone {dict(sorted(r.zones.items()))}")
    counts = sorted(r.models.values())
    print(f"  models per inference worker (held + placed): max/min {counts[-1]}/{counts[0]}, "
          f"median {statistics.median(counts):.0f}")
    missed = [f"POST pull until 202: {ms[-1]:.0f} ms > {GOAL_MS:.0f} ms"] if ms and ms[-1] > GOAL_MS else []
    missed += [f"short pull {s}" for s in r.short[:5]]
    return missed

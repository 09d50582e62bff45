"""The controller's read views and the pull's 202 at fleet size, in one process (issue 13).

Seeds a private redis-server with W workers registered and inventoried as bench/fleet_agents.py's
agents are (90 % inference, 100 models each, one in five missing a few) and one running pull job
to every inference worker with a progress record each, then times, with the controller's app in
this process (Flask's test client: no HTTP server, so the figures are the views' own cost):

- GET /api/v1/models, GET /api/v1/workers, GET /api/v1/models/pull-jobs/<id>, each `--samples` times,
  first on a quiet Redis, then with churn: a second process rewrites progress records (`--progress-rate`
  per second, as pulling agents do at their 4/s throttle) and finishes workers (`--finish-rate` per
  second: each one's inventory gains the pulled model through `publish_inventory`, so the view's
  inventory cache misses as it does during a real pull);
- POST /api/v1/models/pull to every inference worker on a fresh app (its first broker connection)
  and on the same app again; every message is counted in its worker's queue afterwards.

Medians and 90th percentiles in ms. Run: python bench/views.py [--workers 1000] [--models 100] [--samples 15]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_agents import initial_models, model_record, worker_id, worker_type
from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import create_job
from testbed.processes import RedisServer
from worker_agent import membership

PULLED = "pulled-model:latest"


def seed(client: redis.Redis, workers: int, models: int, now: float) -> tuple[list[str], str]:
    """(inference worker ids, the running job's id); `now` dates the inventories' records."""
    inference = []
    for index in range(workers):
        wid = worker_id(index)
        info = {"id": wid, "type": worker_type(index), "address": f"http://10.0.{index // 256}.{index % 256}:8890",
                "backends": ["ollama"] if worker_type(index) == "inference" else [],
                "free_disk": 500_000_000_000, "data_dir": f"/var/lib/eldric/{wid}", "hostname": f"node-{wid}",
                "upstream_registry": "https://registry.ollama.ai",
                "backend_details": json.dumps({"ollama": {"models_dir": "/usr/share/ollama/.ollama/models",
                                                          "api": "http://127.0.0.1:11434"}})}
        membership.register(client, info, ttl=3600)
        membership.publish_inventory(client, wid, initial_models(index, models, now))
        if worker_type(index) == "inference":
            inference.append(wid)
    job_id = create_job(client, kind="pull", model=PULLED, targets=inference, source="ollama",
                        deadline_seconds=3600)
    pipe = client.pipeline(transaction=False)
    for i, wid in enumerate(inference):
        pipe.hset(keys.job_workers(job_id), wid, json.dumps(progress_record(i, now)))
    pipe.execute()
    return inference, job_id


def progress_record(i: int, now: float) -> dict:
    total = 700_000_000
    done = (i * 7_919_993) % total
    return {**jobstate.new_record(now), "state": jobstate.PULLING, "status": "pulling sha256:abc",
            "completed": done, "total": total, "percent": jobstate.percent(done, total),
            "layer": "sha256:" + "ab" * 32, "started_at": now - 30, "updated_at": now, "rate": 21_000_000.0,
            "upstream_bytes": done // 3, "peer_bytes": done - done // 3, "peers": {"w00001": done // 2},
            "source": "https://registry.ollama.ai (simulated)"}


def churn(url: str, job_id: str, inference: list[str], models: int, seeded_at: float, progress_rate: float,
          finish_rate: float, stop) -> None:
    """Progress records at `progress_rate`/s and `finish_rate` inventory rewrites/s until `stop` is set:
    each rewrite is the worker's seeded inventory (same records) plus the pulled model, as a finished pull leaves it."""
    client = redis.Redis.from_url(url, decode_responses=True)
    tick, i, finished = 0.05, 0, 0
    now = time.time()
    while not stop.is_set():
        started = time.time()
        pipe = client.pipeline(transaction=False)
        for _ in range(max(1, int(progress_rate * tick))):
            wid = inference[i % len(inference)]
            pipe.hset(keys.job_workers(job_id), wid, json.dumps(progress_record(i, started)))
            pipe.publish(keys.job_events(job_id), wid)
            i += 1
        pipe.execute()
        while finished < (time.time() - now) * finish_rate:
            wid = inference[finished % len(inference)]
            index = int(wid[1:])
            membership.publish_inventory(client, wid, [*initial_models(index, models, seeded_at),
                                                       model_record(PULLED, time.time())])
            finished += 1
        time.sleep(max(0.0, tick - (time.time() - started)))


def timed(call, samples: int) -> tuple[float, float, int]:
    """(median ms, p90 ms, bytes of the last answer)."""
    took, size = [], 0
    for _ in range(samples):
        started = time.perf_counter()
        resp = call()
        took.append(1000 * (time.perf_counter() - started))
        assert resp.status_code in (200, 202), resp.get_data(as_text=True)[:300]
        size = len(resp.get_data())
    took.sort()
    return statistics.median(took), took[int(0.9 * (len(took) - 1))], size


def time_views(api, job_id: str, samples: int, label: str) -> None:
    for path in ("/api/v1/models", "/api/v1/workers", f"/api/v1/models/pull-jobs/{job_id}"):
        median, p90, size = timed(lambda path=path: api.get(path), samples)
        print(f"{label:8} GET {path.split('/pull-jobs/')[0] + ('/pull-jobs/<id>' if 'pull-jobs' in path else ''):34}"
              f" median {median:7.1f} ms  p90 {p90:7.1f} ms  {size / 1e6:5.2f} MB", flush=True)


def time_pull(url: str, client: redis.Redis, inference: list[str], label: str, app=None):
    from controller import create_app
    app = app or create_app({"REDIS_URL": url, "API_TOKEN": ""})
    before = {wid: client.llen(f"worker.{wid}") for wid in inference}
    started = time.perf_counter()
    resp = app.test_client().post("/api/v1/models/pull", json={"model": "qwen2.5:0.5b"})
    took = 1000 * (time.perf_counter() - started)
    assert resp.status_code == 202, resp.get_data(as_text=True)[:300]
    pipe = client.pipeline(transaction=False)
    for wid in inference:
        pipe.llen(f"worker.{wid}")
    arrived = sum(after - before[wid] for wid, after in zip(inference, pipe.execute(), strict=True))
    print(f"{label:8} POST /api/v1/models/pull -> 202 in {took:7.1f} ms; {arrived}/{len(inference)} tasks in "
          f"their worker.<id> queue", flush=True)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--progress-rate", type=float, default=3600.0, help="progress records written per second")
    parser.add_argument("--finish-rate", type=float, default=150.0,
                        help="inventories rewritten per second (900 workers finishing a 6 s pull)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eldric-views-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            from controller import create_app
            client = redis.Redis.from_url(server.url, decode_responses=True)
            started = time.time()
            seeded_at = time.time()
            inference, job_id = seed(client, args.workers, args.models, seeded_at)
            print(f"seeded {args.workers} workers x {args.models} models, a job to {len(inference)} "
                  f"in {time.time() - started:.1f} s", flush=True)
            app = create_app({"REDIS_URL": server.url, "API_TOKEN": ""})
            api = app.test_client()
            api.get("/api/v1/models")  # the process's first read fills its inventory cache
            time_views(api, job_id, args.samples, "quiet")
            stop = multiprocessing.Event()
            writer = multiprocessing.Process(target=churn, args=(server.url, job_id, inference, args.models,
                                                                 seeded_at, args.progress_rate, args.finish_rate, stop))
            writer.start()
            try:
                time.sleep(1)
                time_views(api, job_id, args.samples, "churn")
            finally:
                stop.set()
                writer.join(10)
            pulled = time_pull(server.url, client, inference, "fresh")
            time_pull(server.url, client, inference, "again", app=pulled)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

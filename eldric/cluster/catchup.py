"""Catch-ups: the work a skipped worker missed, replayed by beat when it is online again (issue 12).

A job part that ends `skipped (offline)` (beat's reaper) records one catch-up on that
worker: the job's kind, model, source and options. `pins.reconcile` (worker_agent/
maintenance.py) starts one single-worker job per catch-up once the worker heartbeats
again, and drops the entry. Bounded: one entry per (worker, model), the newest job wins
(a delete after a pull replaces it); jobs with secrets (signed URLs, tokens) are not
replayed, since their secrets expire with the job.

| key | type | holds |
| --- | --- | --- |
| `eldric:worker:<id>:catchup` | hash | model -> JSON {job_id, kind, model, source, options, at} |
"""

from __future__ import annotations

import json
import time

import redis

from eldric.cluster import keys

REPLAYED_KINDS = ("pull", "distribute", "delete")


def catchup_key(worker_id: str) -> str:
    """HASH model -> JSON catch-up: what the worker missed while it was skipped."""
    return f"{keys.PREFIX}:worker:{worker_id}:catchup"


def record_catchup(client: redis.Redis, worker_id: str, job_id: str, *, now: float | None = None) -> bool:
    """Remember job `job_id`'s work for `worker_id`; False when the job is not one to replay."""
    meta = client.hgetall(keys.job(job_id))
    if not meta or meta.get("kind") not in REPLAYED_KINDS or client.exists(keys.job_secrets(job_id)):
        return False
    entry = {"job_id": job_id, "kind": meta["kind"], "model": meta["model"], "source": meta.get("source"),
             "options": json.loads(meta.get("options") or "{}"), "at": time.time() if now is None else now}
    client.hset(catchup_key(worker_id), meta["model"], json.dumps(entry))
    return True


def pending_catchups(client: redis.Redis, worker_id: str) -> list[dict]:
    return sorted((json.loads(raw) for raw in client.hvals(catchup_key(worker_id))), key=lambda e: e["at"])


def drop_catchup(client: redis.Redis, worker_id: str, model: str) -> None:
    client.hdel(catchup_key(worker_id), model)

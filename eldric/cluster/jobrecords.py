"""Job records in Redis that the agents' scheduled work writes too (create, reap).

The controller keeps its own reader (`controller/jobs.py`); these functions write
the same shapes (README "Redis keys") so a job started by `pins.reconcile` on an
agent looks exactly like one started through the API. The agents may not import
the controller, hence this shared home.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

from eldric.cluster import jobstate
from eldric.cluster import keys


def create_job(client: redis.Redis, *, kind: str, model: str, targets: list[str], source: str,
               deadline_seconds: float, options: dict | None = None, now: float | None = None) -> str:
    """Write the job and a pending record per target worker in one transaction."""
    now = time.time() if now is None else now
    job_id = uuid.uuid4().hex
    meta = {"id": job_id, "kind": kind, "model": model, "source": source, "created_at": now,
            "deadline_at": now + deadline_seconds, "targets": json.dumps(targets),
            "options": json.dumps(options or {})}
    pipe = client.pipeline()
    pipe.hset(keys.job(job_id), mapping=meta)
    if targets:
        pipe.hset(keys.job_workers(job_id),
                  mapping={wid: json.dumps(jobstate.new_record(now)) for wid in targets})
    for wid in targets:
        pipe.sadd(keys.worker_jobs(wid), job_id)
    pipe.zadd(keys.JOBS, {job_id: now})
    pipe.execute()
    return job_id


@dataclass(frozen=True)
class Reaped:
    job_id: str
    worker_id: str
    reason: str


def reap_stale_jobs(client: redis.Redis, *, stale_after: float, now: float | None = None) -> list[Reaped]:
    """Fail every unfinished worker record that `jobstate.derive_worker` says is over, and persist it.

    A worker that stopped heartbeating mid-pull for `stale_after` seconds, or any
    unfinished worker past its job's deadline, is failed with the reason, so the
    job finishes even when nobody reads it.
    """
    now = time.time() if now is None else now
    job_ids = client.zrange(keys.JOBS, 0, -1)
    if not job_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "deadline_at")
        pipe.hgetall(keys.job_workers(job_id))
    fetched = pipe.execute()
    open_parts: list[tuple[str, float, str, dict]] = []
    for i, job_id in enumerate(job_ids):
        deadline, records = fetched[2 * i], fetched[2 * i + 1]
        if deadline is None:
            continue
        for wid, raw in records.items():
            record = json.loads(raw)
            if not jobstate.is_terminal(record.get("state", "")):
                open_parts.append((job_id, float(deadline), wid, record))
    alive = alive_flags(client, sorted({wid for _, _, wid, _ in open_parts}))
    reaped: list[Reaped] = []
    for job_id, deadline, wid, record in open_parts:
        derived, final = jobstate.derive_worker(record, now=now, alive=alive[wid], deadline_at=deadline,
                                                stale_after=stale_after)
        if final and persist_if_unchanged(client, job_id, wid, record, derived):
            reaped.append(Reaped(job_id, wid, derived.get("error") or "failed"))
    return reaped


def alive_flags(client: redis.Redis, ids: list[str]) -> dict[str, bool]:
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.exists(keys.worker_alive(wid))
    return dict(zip(ids, (bool(x) for x in pipe.execute())))


def persist_if_unchanged(client: redis.Redis, job_id: str, worker_id: str, seen: dict, final: dict) -> bool:
    """Write `final` only if the worker's record is still `seen` (an agent may have just written)."""
    key = keys.job_workers(job_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            current = pipe.hget(key, worker_id)
            if current is None or json.loads(current) != seen:
                return False
            pipe.multi()
            pipe.hset(key, worker_id, json.dumps(final))
            pipe.srem(keys.worker_jobs(worker_id), job_id)
            pipe.execute()
            return True
        except redis.WatchError:
            return False

"""Reading job records (with the states only readers derive), listing and pruning; writes go through the job store."""

from __future__ import annotations

import json
import math
import time

import redis

from eldric.cluster import jobstate
from eldric.cluster import keys
from eldric.cluster.jobstore import (  # noqa: F401 (re-exported)
    alive_flags, cancel_job, create_job, delete_jobs, fail_worker, worker_presence,
)


def get_job(client: redis.Redis, job_id: str, *, stale_after: float, offline_grace: float = math.inf,
            now: float | None = None) -> dict | None:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.job(job_id))
    pipe.hgetall(keys.job_workers(job_id))
    meta, raw_records = pipe.execute()
    if not meta:
        return None
    records = {wid: json.loads(raw_records[wid]) for wid in sorted(raw_records)}
    # Only unfinished parts depend on their worker's presence (derive_worker keeps a final record as it is).
    presence = worker_presence(client, [wid for wid, r in records.items()
                                        if not jobstate.is_terminal(r.get("state", jobstate.PENDING))])
    deadline = float(meta["deadline_at"])
    workers: dict[str, dict] = {}
    for wid, record in records.items():
        # Reads never write: beat's reaper persists what derive_worker calls final (the job store's guarded path).
        alive, last_seen = presence.get(wid, (False, None))
        workers[wid], _final = jobstate.derive_worker(
            record, now=now, alive=alive, deadline_at=deadline, stale_after=stale_after,
            offline_grace=offline_grace, last_seen=last_seen)
    return _job_view(meta, workers)


def _job_view(meta: dict, workers: dict[str, dict]) -> dict:
    records = list(workers.values())
    finished = [r.get("finished_at") for r in records if jobstate.is_terminal(r.get("state", ""))]
    state = jobstate.job_state(records)
    return {
        "id": meta["id"],
        "kind": meta.get("kind", "pull"),
        "model": meta.get("model"),
        "source": meta.get("source"),
        "state": state,
        "created_at": float(meta["created_at"]),
        "deadline_at": float(meta["deadline_at"]),
        "finished_at": max(finished) if finished and state in jobstate.JOB_FINAL else None,
        "targets": json.loads(meta.get("targets") or "[]"),
        "options": json.loads(meta.get("options") or "{}"),
        "summary": jobstate.summarize(workers),
        "workers": [{"worker": wid, **rec} for wid, rec in sorted(workers.items())],
    }


def list_jobs(client: redis.Redis, *, stale_after: float, offline_grace: float = math.inf, limit: int = 50,
              offset: int = 0, state: str | None = None, kind: str | None = None) -> tuple[list[dict], int]:
    """Newest first; filtering by state/kind reads past `limit` until the page is full."""
    total = client.zcard(keys.JOBS)
    out: list[dict] = []
    skipped = 0
    cursor = 0
    batch = max(limit, 50)
    while len(out) < limit:
        ids = client.zrevrange(keys.JOBS, cursor, cursor + batch - 1)
        if not ids:
            break
        cursor += len(ids)
        for job_id in ids:
            job = get_job(client, job_id, stale_after=stale_after, offline_grace=offline_grace)
            if job is None or (state and job["state"] != state) or (kind and job["kind"] != kind):
                continue
            if skipped < offset:
                skipped += 1
                continue
            out.append(job)
            if len(out) >= limit:
                break
    return out, total


def prune_jobs(client: redis.Redis, *, retention_seconds: float, keep_max: int, now: float | None = None) -> int:
    """Forget finished jobs older than the retention, and the oldest beyond `keep_max`."""
    now = time.time() if now is None else now
    old = set(client.zrangebyscore(keys.JOBS, 0, now - retention_seconds))
    excess = client.zcard(keys.JOBS) - keep_max
    if excess > 0:
        old |= set(client.zrange(keys.JOBS, 0, excess - 1))
    removed = 0
    for job_id in old:
        records = [json.loads(v) for v in client.hvals(keys.job_workers(job_id))]
        if any(not jobstate.is_terminal(r.get("state", "")) for r in records) and now - float(
                client.hget(keys.job(job_id), "deadline_at") or 0) < 0:
            continue  # still running and within its deadline: keep it
        delete_jobs(client, [job_id])
        removed += 1
    return removed

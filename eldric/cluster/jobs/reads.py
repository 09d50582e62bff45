"""Reading jobs (with the states only readers derive), listing and pruning; writes go through the job store."""

from __future__ import annotations

import json
import math
import time

import redis

from eldric.cluster import keys, workers
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import STARTED_FIELD, delete_jobs


def get_job(client: redis.Redis, job_id: str, *, stale_after: float, offline_grace: float = math.inf,
            now: float | None = None) -> dict | None:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.job(job_id))
    pipe.hgetall(keys.job_workers(job_id))
    pipe.hget(keys.job_states(job_id), STARTED_FIELD)
    meta, raw_records, started = pipe.execute()
    if not meta:
        return None
    records = {wid: json.loads(raw_records[wid]) for wid in sorted(raw_records)}
    # Only unfinished parts depend on their worker's presence (derive_worker keeps a final record as it is).
    presence = workers.presence(client, [wid for wid, r in records.items()
                                        if not jobstate.is_terminal(r.get("state", jobstate.PENDING))])
    deadline = float(meta["deadline_at"])
    derived: dict[str, dict] = {}
    for wid, record in records.items():
        # Reads never write: beat's reaper persists what derive_worker calls final (the job store's guarded path).
        alive, last_seen = presence.get(wid, (False, None))
        derived[wid], _final = jobstate.derive_worker(
            record, now=now, alive=alive, deadline_at=deadline, stale_after=stale_after,
            offline_grace=offline_grace, last_seen=last_seen)
    return _job_view(meta, derived, bool(started))


def _job_view(meta: dict, parts: dict[str, dict], started: bool) -> dict:
    records = list(parts.values())
    finished = [r["finished_at"] for r in records
                if jobstate.is_terminal(r.get("state", "")) and r.get("finished_at") is not None]
    state = jobstate.job_state(records, started)
    return {
        "id": meta["id"],
        "kind": meta.get("kind", "pull"),
        "model": meta.get("model"),
        "source": meta.get("source"),
        "state": state,
        "final": jobstate.is_final_job(state),
        "created_at": float(meta["created_at"]),
        "deadline_at": float(meta["deadline_at"]),
        "finished_at": max(finished) if finished and state in jobstate.JOB_FINAL else None,
        "targets": json.loads(meta.get("targets") or "[]"),
        "options": json.loads(meta.get("options") or "{}"),
        "summary": jobstate.summarize(parts),
        "workers": [{"worker": wid, **rec, "final": jobstate.is_terminal(rec.get("state", jobstate.PENDING))}
                    for wid, rec in sorted(parts.items())],
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


def part_state(client: redis.Redis, job_id: str, worker_id: str) -> str | None:
    """The stored state of the worker's part of the job; None when the job (or the part) is gone."""
    raw = client.hget(keys.job_workers(job_id), worker_id)
    return json.loads(raw).get("state", jobstate.PENDING) if raw else None


def all_jobs(client: redis.Redis, fields: list[str]) -> list[tuple[list[str | None], dict[str, str]]]:
    """Every job's `fields` and its stored records (worker id -> JSON), oldest first, in one pipeline."""
    job_ids = client.zrange(keys.JOBS, 0, -1)
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), fields)
        pipe.hgetall(keys.job_workers(job_id))
    rows = pipe.execute()
    return list(zip(rows[0::2], rows[1::2], strict=True))

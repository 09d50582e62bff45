"""Reading jobs (with the states only readers derive), listing and pruning; writes go through the job store."""

from __future__ import annotations

import json
import logging
import math
import time

import redis

from eldric.cluster import keys, workers
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import STARTED_FIELD, cancel_job, delete_jobs, job_state_of_counts

log = logging.getLogger(__name__)


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


# A job dropped unfinished keeps its cancelled records this long, so its agents' next progress write is
# refused and they stop as on a cancel (an agent in a retry backoff writes again within
# ELDRIC_RETRY_MAX_SECONDS, 120 s by default); the records then expire.
DROPPED_RECORDS_SECONDS = 3600


def prune_jobs(client: redis.Redis, *, retention_seconds: float, keep_max: int, now: float | None = None) -> int:
    """Forget finished jobs older than the retention, then keep at most `keep_max` jobs, unfinished ones too.

    Past the bound the oldest finished jobs go first (a job past its deadline counts as finished); when
    the unfinished ones alone are more, the oldest of them are cancelled through the job store, so their
    agents stop within a progress interval and delete their partial data, and then forgotten.
    """
    now = time.time() if now is None else now
    ids = client.zrange(keys.JOBS, 0, -1, withscores=True)  # oldest first
    pipe = client.pipeline(transaction=False)
    for job_id, _created in ids:
        pipe.hgetall(keys.job_states(job_id))
        pipe.hget(keys.job(job_id), "deadline_at")
    rows = pipe.execute()
    finished = {job_id for (job_id, _created), counts, deadline in zip(ids, rows[0::2], rows[1::2], strict=True)
                if jobstate.is_final_job(job_state_of_counts(counts)) or float(deadline or 0) <= now}
    expired = {job_id for job_id, created in ids if job_id in finished and created <= now - retention_seconds}
    kept = [job_id for job_id, _created in ids if job_id not in expired]
    excess = max(0, len(kept) - keep_max)
    dropped = [job_id for job_id in kept if job_id in finished][:excess]
    cancelled = [job_id for job_id in kept if job_id not in finished][:excess - len(dropped)]
    delete_jobs(client, [*expired, *dropped])
    for job_id in cancelled:
        workers = cancel_job(client, job_id, now=now)
        delete_jobs(client, [job_id], keep_records=DROPPED_RECORDS_SECONDS)
        log.warning("job %s cancelled and dropped from the job history (at most %d jobs are kept, "
                    "ELDRIC_JOB_HISTORY_MAX); its agents stop: %s", job_id, keep_max, ", ".join(workers) or "none")
    return len(expired) + len(dropped) + len(cancelled)


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

"""Beat's stale-job reaper: persists the ends that readers derive (deadline, silent or long-offline workers)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import redis

from eldric.cluster import keys, workers
from eldric.cluster.jobs import catchups
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import write_record


@dataclass(frozen=True)
class Reaped:
    job_id: str
    worker_id: str
    reason: str
    state: str = jobstate.FAILED


def reap_stale_jobs(client: redis.Redis, *, stale_after: float, offline_grace: float = math.inf,
                    now: float | None = None) -> list[Reaped]:
    """End every unfinished worker record that `jobstate.derive_worker` says is over, and persist it.

    A worker that stopped heartbeating mid-pull for `stale_after` seconds, or any
    unfinished worker past its job's deadline, is failed with the reason; a worker
    offline for longer than `offline_grace` (when the job started or during it) is skipped. A part
    ended while its worker was offline (skipped, or failed silent mid-pull or at the deadline) gets
    a catch-up (jobs/catchups.py), which resumes its partial download when the worker is back. So
    the job finishes even when nobody reads it.
    """
    now = time.time() if now is None else now
    job_ids = client.zrange(keys.JOBS, 0, -1)
    if not job_ids:
        return []
    uptime = _redis_uptime(client)
    # Redis itself was away: agents could not report, so their silence says nothing yet. Give them
    # one stale period (and one grace) from Redis's return (a heartbeat brings them back) before
    # failing or skipping anyone; deadlines still apply.
    if uptime < stale_after:
        stale_after = math.inf
    if uptime < offline_grace:
        offline_grace = math.inf
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "deadline_at")
        pipe.hgetall(keys.job_workers(job_id))
    fetched = pipe.execute()
    open_parts: list[tuple[str, float, str, str]] = []
    for i, job_id in enumerate(job_ids):
        deadline, records = fetched[2 * i], fetched[2 * i + 1]
        if deadline is None:
            continue
        for wid, raw in records.items():
            if not jobstate.is_terminal(json.loads(raw).get("state", "")):
                open_parts.append((job_id, float(deadline), wid, raw))
    presence = workers.presence(client, sorted({wid for _, _, wid, _ in open_parts}))
    reaped: list[Reaped] = []
    for job_id, deadline, wid, raw in open_parts:
        alive, last_seen = presence[wid]
        derived, final = jobstate.derive_worker(
            json.loads(raw), now=now, alive=alive, deadline_at=deadline, stale_after=stale_after,
            offline_grace=offline_grace, last_seen=last_seen)
        if not final or not write_record(client, job_id, wid, derived, expect=raw).accepted:
            continue
        if derived["state"] == jobstate.SKIPPED or not alive:
            catchups.record_catchup(client, wid, job_id, now=now)
        reaped.append(Reaped(job_id, wid, derived.get("error") or derived.get("status") or "failed", derived["state"]))
    return reaped


def _redis_uptime(client: redis.Redis) -> float:
    try:
        return float(client.info("server").get("uptime_in_seconds", math.inf))
    except (redis.RedisError, ValueError, TypeError):
        return math.inf



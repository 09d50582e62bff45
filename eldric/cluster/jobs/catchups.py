"""Catch-ups: the work a skipped worker missed, replayed by beat when it is online again (issue 12).

A job part that ends while its worker is offline, `skipped (offline)` or failed ("worker went offline
mid-pull", a deadline passed offline) by beat's reaper (jobs/reaper.py), records one catch-up on
that worker: the job's kind, model, source and options. `reconcile_catchups` (run by beat's
`pins.reconcile` entry) starts one single-worker job per catch-up once the worker heartbeats
again, and drops the entry. Bounded: one entry per (worker, model), the newest job wins
(a delete after a pull replaces it; a copy's model is its destination, the source in its options,
so a later delete or pull of the destination replaces it too); jobs with secrets (signed URLs, tokens) are not
replayed, since their secrets expire with the job.

| key | type | holds |
| --- | --- | --- |
| `eldric:worker:<id>:catchup` | hash | model -> JSON {job_id, kind, model, source, options, at} |
"""

from __future__ import annotations

import json
import logging
import time

import redis

from eldric.cluster import keys, workers
from eldric.cluster.jobs.start import Send, start_job
from eldric.cluster.queues import TASK_COPY, TASK_DELETE, TASK_DISTRIBUTE, TASK_PULL

log = logging.getLogger(__name__)

# the kinds replayed (a copy too: Ollama's /api/copy must reach a holder that was offline, as a delete does)
TASKS = {"pull": TASK_PULL, "distribute": TASK_DISTRIBUTE, "delete": TASK_DELETE, "copy": TASK_COPY}


def record_catchup(client: redis.Redis, worker_id: str, job_id: str, *, now: float | None = None) -> bool:
    """Remember job `job_id`'s work for `worker_id`; False when the job is not one to replay."""
    meta = client.hgetall(keys.job(job_id))
    if not meta or meta.get("kind") not in TASKS or client.exists(keys.job_secrets(job_id)):
        return False
    entry = {"job_id": job_id, "kind": meta["kind"], "model": meta["model"], "source": meta.get("source"),
             "options": json.loads(meta.get("options") or "{}"), "at": time.time() if now is None else now}
    client.hset(keys.worker_catchups(worker_id), meta["model"], json.dumps(entry))
    return True


def pending_catchups(client: redis.Redis, worker_id: str) -> list[dict]:
    return sorted((json.loads(raw) for raw in client.hvals(keys.worker_catchups(worker_id))), key=lambda e: e["at"])


def drop_catchup(client: redis.Redis, worker_id: str, model: str) -> None:
    client.hdel(keys.worker_catchups(worker_id), model)


def replayed_jobs(client: redis.Redis, worker_id: str) -> set[str]:
    """The jobs whose work a catch-up on `worker_id` replays: pending entries, then the catch-up jobs already
    started (their `catch_up_of`). Their partial downloads on the worker stay: the catch-up resumes them.

    Read in that order because `reconcile_catchups` starts a catch-up's job before it drops the entry:
    a catch-up started between the two reads is seen by the second.
    """
    replayed = {entry["job_id"] for entry in pending_catchups(client, worker_id)}
    job_ids = sorted(client.smembers(keys.worker_jobs(worker_id)))
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "options")
    for raw in pipe.execute():
        of = json.loads(raw or "{}").get("catch_up_of")
        if of:
            replayed.add(of)
    return replayed


def reconcile_catchups(client: redis.Redis, send: Send, *, deadline_seconds: float, busy: dict[str, frozenset[str]],
                       now: float | None = None) -> list[dict]:
    """Start one single-worker job per catch-up of every online worker; return the jobs started.

    `busy`: worker id -> the models its unfinished jobs are on; such a catch-up waits for the next run
    (a pin's pull, or the operator's, is on it already).
    """
    now = time.time() if now is None else now
    started = []
    for wid in workers.online_ids(client):
        for entry in pending_catchups(client, wid):
            if entry["model"] in busy.get(wid, ()):
                continue
            task = TASKS.get(entry["kind"])
            if task is None:
                drop_catchup(client, wid, entry["model"])
                continue
            # The job first, then the entry goes: the worker's partial cleanup (replayed_jobs) always sees one of
            # them, so it keeps the partial download the catch-up resumes.
            job_id = start_job(client, send, kind=entry["kind"], task=task, model=entry["model"], targets=[wid],
                               source=entry.get("source") or "ollama", deadline_seconds=deadline_seconds,
                               options={**entry.get("options", {}), "catch_up_of": entry["job_id"]}, now=now)
            drop_catchup(client, wid, entry["model"])
            log.info("catch-up of job %s on %s: %s %s", entry["job_id"], wid, entry["kind"], entry["model"],
                     extra={"job_id": job_id, "worker_id": wid})
            started.append({"job_id": job_id, "model": entry["model"], "worker": wid, "catch_up_of": entry["job_id"]})
    return started

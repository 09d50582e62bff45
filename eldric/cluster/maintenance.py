"""Scheduled cluster upkeep: what beat's entries do (README "Scheduled work").

Beat enqueues each entry on the shared `maintenance` queue and whichever agent is alive takes
it (worker_agent/tasks.py), so the cluster needs no extra process; the work itself is
control-plane work and lives here, beside the jobs, pins and workers it reads:

- `request_inventory_sync` / `request_partial_cleanup`: fan a node-local task out to every online worker;
- `request_debris_sweep`: the same to every online inference and cloud worker (worker_agent/debris_sweep.py);
- `request_gc_sweep`: the GC sweep to every online worker (worker_agent/gc_sweep.py; also `POST /api/v1/gc`);
- `request_eviction`: the eviction check to every online inference and cloud worker (worker_agent/eviction.py);
- `reap_stale_jobs`: persist the ends readers derive (jobs/reaper.py);
- `reconcile`: start pulls so every eligible online worker holds each pinned model, or N of them
  serve it for a pin with replicas (pins.py), then replay what skipped workers missed (jobs/catchups.py);
- `check_pin_updates`: for auto-update pins, ask where the tag points now; re-pull on change.

Each takes its Redis client and a `Send` (eldric/cluster/jobs/start.py), so it runs, and is
tested, without Celery. Runs that must not overlap hold a lock in Redis.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from eldric.cluster import keys, pins, workers
from eldric.cluster.jobs import catchups
from eldric.cluster.jobs.reaper import Reaped
from eldric.cluster.jobs.reaper import reap_stale_jobs as reap_records
from eldric.cluster.jobs.start import Send
from eldric.cluster.queues import TASK_CLEAN_PARTIALS, TASK_EVICT, TASK_GC_SWEEP, TASK_INVENTORY_SYNC, TASK_SWEEP_DEBRIS, is_model_serving
from eldric.core.names import ModelName

log = logging.getLogger(__name__)

LOCK_SECONDS = 120  # longer than any one run; released at the end of the run


@contextmanager
def exclusive(client: redis.Redis, name: str) -> Iterator[bool]:
    """Yield whether this caller got the run; a slow run must not overlap the next one."""
    key, token = keys.maintenance_lock(name), uuid.uuid4().hex
    acquired = bool(client.set(key, token, nx=True, ex=LOCK_SECONDS))
    try:
        yield acquired
    finally:
        if acquired:
            _release(client, key, token)


def _release(client: redis.Redis, key: str, token: str) -> None:
    """Delete the lock only if it is still ours (it may have expired and been taken)."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.get(key) != token:
                return
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
        except redis.WatchError:
            pass


def _fan_out(client: redis.Redis, send: Send, task: str, args: list, serving_only: bool = False) -> list[str]:
    online = workers.online_ids(client)
    if serving_only:
        kinds = workers.types(client, online)
        online = [wid for wid in online if is_model_serving(kinds.get(wid) or "")]
    for wid, reason in send(task, args, online).items():
        log.warning("%s for %s: %s", task, wid, reason)
    return online


def request_inventory_sync(client: redis.Redis, send: Send) -> list[str]:
    """Ask every online worker to re-report its local models; return the ids asked."""
    return _fan_out(client, send, TASK_INVENTORY_SYNC, [])


def request_partial_cleanup(client: redis.Redis, send: Send, max_age: float) -> list[str]:
    """Ask every online worker to clean its partial downloads; return the ids asked."""
    return _fan_out(client, send, TASK_CLEAN_PARTIALS, [max_age])


def request_debris_sweep(client: redis.Redis, send: Send) -> list[str]:
    """Ask every online inference and cloud worker to sweep its backends' debris; return the ids asked."""
    return _fan_out(client, send, TASK_SWEEP_DEBRIS, [], serving_only=True)


def request_gc_sweep(client: redis.Redis, send: Send, *, remove: bool, partial_max_age: float | None = None) -> list[str]:
    """Ask every online worker to sweep its garbage (`remove`: also remove finds past their grace); return the ids asked.

    `partial_max_age` None: the agents' default (eldric/transfer/partials.MAX_AGE_SECONDS)."""
    return _fan_out(client, send, TASK_GC_SWEEP, [remove, partial_max_age])


def request_eviction(client: redis.Redis, send: Send) -> list[str]:
    """Ask every online inference and cloud worker to evict above its high disk watermark; return the ids asked."""
    return _fan_out(client, send, TASK_EVICT, [], serving_only=True)


def reap_stale_jobs(client: redis.Redis, *, stale_after: float, offline_grace: float = math.inf) -> list[Reaped]:
    reaped = reap_records(client, stale_after=stale_after, offline_grace=offline_grace)
    for r in reaped:
        log.warning("ended a job part %s: %s", r.state, r.reason, extra={"job_id": r.job_id, "worker_id": r.worker_id})
    return reaped


def reconcile_pins(client: redis.Redis, send: Send, *, deadline_seconds: float, retry_after: float,
                   offline_grace: float = 300.0, reserve: int = 0,
                   models: list[str] | None = None, now: float | None = None) -> list[dict]:
    """pins.reconcile_pins, by one agent at a time."""
    with exclusive(client, "pins") as mine:
        if not mine:
            log.info("another agent is reconciling pins; skipped")
            return []
        return pins.reconcile_pins(client, send, deadline_seconds=deadline_seconds, retry_after=retry_after,
                                   offline_grace=offline_grace, reserve=reserve, models=models, now=now)


def reconcile_catchups(client: redis.Redis, send: Send, *, deadline_seconds: float,
                       now: float | None = None) -> list[dict]:
    """catchups.reconcile_catchups, by one agent at a time, leaving models a running job is on for later."""
    with exclusive(client, "catchups") as mine:
        if not mine:
            return []
        busy = {w.id: w.busy_models for w in pins.load_worker_facts(client, [])}
        return catchups.reconcile_catchups(client, send, deadline_seconds=deadline_seconds, busy=busy, now=now)


def check_pin_updates(client: redis.Redis, send: Send, digest_of: Callable[[ModelName], str], *,
                      deadline_seconds: float, retry_after: float) -> dict:
    """Refresh the upstream digest of every auto-update pin, then pull where workers hold another."""
    checked = pins.refresh_digests(client, digest_of)
    wanted = [m for m, d in checked.items() if d]
    jobs = reconcile_pins(client, send, deadline_seconds=deadline_seconds, retry_after=retry_after,
                          models=wanted) if wanted else []
    return {"checked": checked, "jobs": jobs}

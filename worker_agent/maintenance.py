"""Scheduled cluster upkeep that beat enqueues and any one agent runs (plain functions).

- `request_inventory_sync`: fan `inventory.sync` out to every online worker's own queue.
- `reap_stale_jobs`: fail and persist the parts of jobs whose worker went silent or missed the deadline.
- `reconcile_pins`: start pulls so every eligible online worker holds each pinned model.
- `reconcile_catchups`: replay, for a worker online again, the jobs it was skipped in (eldric/cluster/catchup.py).
- `check_pin_updates`: for auto-update pins, ask the registry where the tag points; re-pull on change.
- `request_partial_cleanup` / `clean_partials`: fan out to every online worker, which deletes the
  partial downloads of jobs that ended and anything its downloads left untouched for a day;
  `discard_job_partials` does it for one job at once, when its task fails for good.

Each takes its Redis client and a `send(task, args, queue)` callable, so it runs (and
is tested) without Celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from kombu.exceptions import OperationalError

from eldric.cluster import jobstate, keys
from eldric.cluster import catchup, pins
from eldric.cluster.jobstore import Reaped, create_job, fail_worker
from eldric.cluster.jobstore import reap_stale_jobs as reap_records
from eldric.cluster.queues import (
    TASK_CLEAN_PARTIALS, TASK_DELETE, TASK_DISTRIBUTE, TASK_INVENTORY_SYNC, TASK_PULL, worker_queue,
)
from eldric.core.errors import EldricError
from eldric.core.names import ModelName
from eldric.transfer.diskspace import format_size
from eldric.transfer.partials import Cleaned
from eldric.transfer.partials import clean_partials as clean_partial_dir
from worker_agent.ollama_store import OllamaStore
from worker_agent.sources import BlobSource

log = logging.getLogger(__name__)

Send = Callable[[str, list, str], object]
LOCK_SECONDS = 120  # longer than any one run; released at the end of the run


def lock_key(name: str) -> str:
    """STRING with TTL: held while one agent runs scheduled job `name` (no concurrent runs)."""
    return f"{keys.PREFIX}:maintenance:{name}:lock"


@contextmanager
def exclusive(client: redis.Redis, name: str) -> Iterator[bool]:
    """Yield whether this caller got the run; a slow run must not overlap the next one."""
    key, token = lock_key(name), uuid.uuid4().hex
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


def online_workers(client: redis.Redis) -> list[str]:
    ids = sorted(client.smembers(keys.WORKERS))
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.exists(keys.worker_alive(wid))
    return [wid for wid, alive in zip(ids, pipe.execute(), strict=False) if alive]


def request_inventory_sync(client: redis.Redis, send: Send) -> list[str]:
    """Ask every online worker to re-report its local models; return the ids asked."""
    online = online_workers(client)
    for wid in online:
        send(TASK_INVENTORY_SYNC, [], worker_queue(wid))
    return online


def request_partial_cleanup(client: redis.Redis, send: Send, max_age: float) -> list[str]:
    """Ask every online worker to clean its partial downloads; return the ids asked."""
    online = online_workers(client)
    for wid in online:
        send(TASK_CLEAN_PARTIALS, [max_age], worker_queue(wid))
    return online


def clean_partials(client: redis.Redis, worker_id: str, store: OllamaStore, *, max_age: float) -> Cleaned:
    """Delete this node's partial downloads of jobs that ended, and what nobody touched for `max_age` seconds.

    A download in progress holds its lock and stays; so does one whose job may still retry it.
    """
    def job_ended(job_id: str) -> bool:
        raw = client.hget(keys.job_workers(job_id), worker_id)
        return raw is None or jobstate.is_terminal(json.loads(raw).get("state", ""))

    cleaned = clean_partial_dir(store.partial_dir, max_age=max_age, is_finished=job_ended,
                                incoming_dirs=(store.blobs.root,))
    if cleaned.removed:
        log.info("deleted %d partial downloads (%s): %s", len(cleaned.removed), format_size(cleaned.freed),
                 ", ".join(cleaned.removed))
    return cleaned


def discard_job_partials(store: OllamaStore, job_id: str) -> Cleaned:
    """Delete the partial downloads job `job_id` left behind: for a task's final failure (retries used up)."""
    return clean_partial_dir(store.partial_dir, max_age=math.inf, is_finished=lambda owner: owner == job_id)


def reap_stale_jobs(client: redis.Redis, *, stale_after: float, offline_grace: float = math.inf) -> list[Reaped]:
    reaped = reap_records(client, stale_after=stale_after, offline_grace=offline_grace)
    for r in reaped:
        log.warning("ended a job part %s: %s", r.state, r.reason, extra={"job_id": r.job_id, "worker_id": r.worker_id})
    return reaped


CATCHUP_TASKS = {"pull": TASK_PULL, "distribute": TASK_DISTRIBUTE, "delete": TASK_DELETE}


def reconcile_catchups(client: redis.Redis, send: Send, *, deadline_seconds: float,
                       now: float | None = None) -> list[dict]:
    """Start one single-worker job per catch-up of every online worker; return the jobs started."""
    now = time.time() if now is None else now
    started = []
    with exclusive(client, "catchups") as mine:
        if not mine:
            return []
        busy = {w.id: w.busy_models for w in pins.load_worker_facts(client, [])}
        for wid in online_workers(client):
            for entry in catchup.pending_catchups(client, wid):
                if entry["model"] in busy.get(wid, ()):
                    continue  # a pin's pull (or the operator's) is on it already; try again next time
                catchup.drop_catchup(client, wid, entry["model"])
                task = CATCHUP_TASKS.get(entry["kind"])
                if task is None:
                    continue
                options = {**entry.get("options", {}), "catch_up_of": entry["job_id"]}
                job_id = create_job(client, kind=entry["kind"], model=entry["model"], targets=[wid],
                                    source=entry.get("source") or "ollama", deadline_seconds=deadline_seconds,
                                    options=options, now=now)
                try:
                    send(task, [job_id, entry["model"]], worker_queue(wid))
                except OperationalError as exc:
                    fail_worker(client, job_id, wid, f"could not enqueue the task: broker unavailable ({exc})")
                    continue
                log.info("catch-up of job %s on %s: %s %s", entry["job_id"], wid, entry["kind"], entry["model"],
                         extra={"job_id": job_id, "worker_id": wid})
                started.append({"job_id": job_id, "model": entry["model"], "worker": wid, "catch_up_of": entry["job_id"]})
    return started


def reconcile_pins(client: redis.Redis, send: Send, *, deadline_seconds: float, retry_after: float,
                   models: list[str] | None = None, now: float | None = None) -> list[dict]:
    """Start one pull job per pin for the eligible online workers lacking it; return the jobs started."""
    now = time.time() if now is None else now
    with exclusive(client, "pins") as mine:
        if not mine:
            log.info("another agent is reconciling pins; skipped")
            return []
        selected = [p for p in pins.list_pins(client) if models is None or p.model in models]
        if not selected:
            return []
        facts = pins.load_worker_facts(client, [p.model for p in selected])
        return [job for pin in selected
                if (job := _pull_for_pin(client, send, pin, facts, now, deadline_seconds, retry_after))]


def _pull_for_pin(client: redis.Redis, send: Send, pin: pins.Pin, facts: list[pins.WorkerFacts], now: float,
                  deadline_seconds: float, retry_after: float) -> dict | None:
    targets = pins.workers_to_pull(pin, facts, now=now, retry_after=retry_after)
    if not targets:
        return None
    by_id = {w.id: w for w in facts}
    outdated = [wid for wid in targets if pins.model_status(pin, by_id[wid]) == pins.OUTDATED]
    options = {"pin": pin.model, "reason": "update" if outdated else "pinned", "outdated": outdated}
    kind, task = ("pull", TASK_PULL)
    if pin.source == "registry":  # a registry model reaches workers through a distribute job
        kind, task = ("distribute", TASK_DISTRIBUTE)
        options.update(pin.source_options or {}, source="registry")
    job_id = create_job(client, kind=kind, model=pin.model, targets=targets, source=pin.source,
                        deadline_seconds=deadline_seconds, options=options, now=now)
    pins.record_attempt(client, pin.model, job_id, targets, now=now)
    for wid in targets:
        try:
            send(task, [job_id, pin.model], worker_queue(wid))
        except OperationalError as exc:
            fail_worker(client, job_id, wid, f"could not enqueue the task: broker unavailable ({exc})")
            client.srem(keys.worker_jobs(wid), job_id)
    log.info("pin %s: pulling to %s (%s)", pin.model, ", ".join(targets), options["reason"],
             extra={"job_id": job_id})
    return {"job_id": job_id, "model": pin.model, "workers": targets, "reason": options["reason"]}


def upstream_digest(source: BlobSource, name: ModelName) -> str:
    """The digest of the manifest the tag points at now, as the inventory records it (sha256 of its bytes)."""
    raw, _manifest = source.fetch_manifest(name)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def check_pin_updates(client: redis.Redis, send: Send, source_for: Callable[[ModelName], BlobSource], *,
                      deadline_seconds: float, retry_after: float) -> dict:
    """Refresh the upstream digest of every auto-update pin, then pull where workers hold another."""
    checked: dict[str, str | None] = {}
    for pin in pins.list_pins(client):
        if not pin.auto_update or pin.source != "ollama":
            continue
        name = ModelName.parse(pin.model)
        try:
            digest = upstream_digest(source_for(name), name)
        except EldricError as exc:
            log.warning("pin %s: update check failed: %s", pin.model, exc)
            pins.record_check(client, pin.model, digest=None, error=str(exc))
            checked[pin.model] = None
            continue
        if digest != pin.upstream_digest:
            log.info("pin %s: upstream now at %s (was %s)", pin.model, digest, pin.upstream_digest)
        pins.record_check(client, pin.model, digest=digest, error=None)
        checked[pin.model] = digest
    wanted = [m for m, d in checked.items() if d]
    jobs = reconcile_pins(client, send, deadline_seconds=deadline_seconds, retry_after=retry_after,
                          models=wanted) if wanted else []
    return {"checked": checked, "jobs": jobs}

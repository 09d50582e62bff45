"""Running this worker's share of a job: checks, lease, pull, final state, inventory.

A job's state lives in Redis, which may restart (empty or from a snapshot) or be
unreachable while a pull runs (README "Failure behaviour"). The work goes on regardless:
progress writes that fail are logged and skipped, the final state is written once Redis
answers again (`REPORT_PATIENCE`), and a job Redis no longer knows is finished without
reports rather than brought back as a stray record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import LockError

from eldric.cluster import workers
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving
from eldric.core.digests import Digest
from eldric.core.errors import EldricError
from eldric.core.names import ModelName
from eldric.transfer.errors import DownloadStoppedError
from eldric.transfer.retry import backoff_delay
from worker_agent.copying import copy_model
from worker_agent.distributing import distribute
from worker_agent.fanout import leave_swarms
from worker_agent.pulling import pull_from_ollama
from worker_agent.installing import uninstall_entry
from worker_agent import last_use, partial_cleanup, serving
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import JobEndedError, fail_worker, write_record
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)

# The per-job lock's TTL. A live runner renews it every LOCK_TTL / 3 (JobLease), so a pull may
# run for its whole deadline (up to 30 days); the TTL only bounds how long a runner that froze
# without exiting keeps a redelivered copy of its task from starting (a restarting agent
# deletes its own stale locks at once: unfinished_jobs).
LOCK_TTL = 120.0
# How long a finished part waits for Redis to take its final state (and a failure its reason).
REPORT_PATIENCE = 600.0

JOB_GONE = "the job is gone from Redis (restarted without its data?)"
TAKEN_OVER = "another runner holds this job's lock"


class NotEligibleError(EldricError):
    """This worker's type never takes model work."""


class JobExpiredError(EldricError):
    """The job's deadline passed before this worker could run it."""


class JobLease:
    """The per-job lock of one runner on this worker, renewed in the background while the job runs.

    The lock keeps a redelivered copy of the task (Celery's visibility timeout, see
    eldric/cluster/celeryconf.py) from starting a second runner. When Redis lost the lock
    (restarted empty, or from a snapshot taken before it was set), the next renewal notices:
    the lock is taken again if the job still exists and nobody holds it; otherwise
    `on_lost(JOB_GONE | TAKEN_OVER)` is called once and renewing stops. A Redis that does not
    answer is tried again at the next renewal.
    """

    def __init__(self, client: redis.Redis, job_id: str, worker_id: str, ttl: float = LOCK_TTL) -> None:
        self.client, self.job_id = client, job_id
        self.lock = client.lock(keys.job_lock(job_id, worker_id), timeout=ttl, blocking=False, thread_local=False)
        self.interval = ttl / 3
        self.lost: str | None = None
        self._on_lost: Callable[[str], None] = lambda reason: None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable = False

    def acquire(self) -> bool:
        return bool(self.lock.acquire())

    def keep(self, on_lost: Callable[[str], None] = lambda reason: None) -> None:
        """Renew in a daemon thread until `release`."""
        self._on_lost = on_lost
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.job_id[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval) and self.lost is None:
            self.renew()

    def renew(self) -> None:
        """One renewal: extend the lock, or find out why it is gone."""
        try:
            try:
                self.lock.reacquire()
            except LockError:
                self._recover()
            if self._unreachable:
                log.info("job %s: Redis answers again; lock renewed", self.job_id)
            self._unreachable = False
        except redis.RedisError as exc:
            if not self._unreachable:
                log.warning("job %s: could not renew the job's lock (%s); trying again in %.0f s",
                            self.job_id, exc, self.interval)
            self._unreachable = True

    def _recover(self) -> None:
        if not self.client.exists(keys.job(self.job_id)):
            self._lose(JOB_GONE)
        elif self.lock.acquire():
            log.warning("job %s: the job's lock had expired or was lost with Redis; taken again", self.job_id)
        else:
            self._lose(TAKEN_OVER)

    def _lose(self, reason: str) -> None:
        self.lost = reason
        log.warning("job %s: %s; this runner finishes its part without reporting it", self.job_id, reason)
        self._on_lost(reason)

    def release(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is None:
            try:
                self.lock.release()
            except (LockError, redis.RedisError):
                pass  # already gone, or Redis is away: the TTL ends it


def own_record(agent: Agent, job_id: str) -> dict | None:
    raw = agent.redis.hget(keys.job_workers(job_id), agent.worker_id)
    return json.loads(raw) if raw else None


def run_pull_job(agent: Agent, job_id: str, model: str) -> dict:
    """Do this worker's part of pull job `job_id`; duplicates and finished work are skipped."""
    def work(progress: Progress) -> dict:
        meta = agent.redis.hgetall(keys.job(job_id))  # read on every try: a retry fetches from the same source
        return pull_from_ollama(agent, model, progress, json.loads(meta.get("options") or "{}"), meta.get("source"))
    return _run_job(agent, job_id, work)


def run_distribute_job(agent: Agent, job_id: str, model: str, last_try: bool = True) -> dict:
    """Bring `model` to this node from the job's source (registry, worker, url, ollama); `last_try`: no
    retry follows (the job's `partial_ok` then skips a backend still unreachable)."""
    def work(progress: Progress) -> dict:
        meta = agent.redis.hgetall(keys.job(job_id))
        options = json.loads(meta.get("options") or "{}")
        secrets = agent.redis.hgetall(keys.job_secrets(job_id))
        return distribute(agent, model, options, secrets, progress, last_try=last_try)
    return _run_job(agent, job_id, work)


def run_delete_job(agent: Agent, job_id: str, model: str) -> dict:
    """Remove the model from this node (Ollama store or file catalog); blobs other models use stay."""
    def delete(progress: Progress) -> dict:
        progress.update(force=True, state=jobstate.DELETING, status=f"deleting {model}")
        removed = delete_local_model(agent, model)
        leave_swarms(agent.redis, agent.worker_id, agent.store.blobs, removed or [])
        progress.finish(total=0, status="deleted" if removed is not None else "not present")
        return {"model": model, "deleted": removed is not None, "blobs_removed": len(removed or [])}
    return _run_job(agent, job_id, delete)


def run_copy_job(agent: Agent, job_id: str, model: str) -> dict:
    """Copy job `job_id`: the job's `options.source` (a store model here) gets the name `model` on this node."""
    def work(progress: Progress) -> dict:
        options = json.loads(agent.redis.hget(keys.job(job_id), "options") or "{}")
        return copy_model(agent, str(options.get("source") or ""), model, progress)
    return _run_job(agent, job_id, work)


def delete_local_model(agent: Agent, model: str) -> list[str] | None:
    """None when the node does not have it; else the digests of the blobs that went with it."""
    entry = agent.catalog.delete(model) if agent.catalog.get(model) else None
    if entry is not None:
        uninstall_entry(agent, entry)
        files = [] if entry.get("shared") else entry.get("files", [])
        return agent.store.delete_blobs([Digest.parse(f["sha256"]) for f in files], keep=agent.catalog.referenced_digests)
    name = ModelName.parse(model)
    if agent.store.read_manifest(name) is None:
        return None
    # the pull's hard links in llama.cpp and vLLM first: they would keep the blob's bytes on disk
    uninstall_entry(agent, {"name": name.short, "installed": serving.installed_from_pull(agent, name)})
    return agent.store.delete_model(name, keep=agent.catalog.referenced_digests)


def _run_job(agent: Agent, job_id: str, work: Callable[[Progress], dict], lock_ttl: float = LOCK_TTL) -> dict:
    meta = agent.redis.hgetall(keys.job(job_id))
    if not meta:
        return {"skipped": "job no longer exists"}
    record = own_record(agent, job_id) or {}
    if jobstate.is_terminal(record.get("state", "")):
        return {"skipped": f"already {record['state']}"}
    if not is_model_serving(agent.settings.worker_type):
        raise NotEligibleError(f"{agent.settings.worker_type} workers do not take model work")
    if time.time() > float(meta.get("deadline_at", "inf")):
        raise JobExpiredError("job deadline passed before this worker could start")
    lease = JobLease(agent.redis, job_id, agent.worker_id, ttl=lock_ttl)
    if not lease.acquire():
        return {"skipped": "already running on this worker"}
    progress = Progress(agent.redis, job_id, agent.worker_id, min_interval=agent.settings.progress_seconds,
                        tolerate_redis_errors=True, stop_when_ended=True,
                        before_finish=lambda: refresh_inventory(agent))  # listed before it reads completed
    lease.keep(on_lost=lambda reason: _stop_reporting(agent, job_id, progress, reason))
    try:
        result = work(progress)
        _with_redis(lambda: _report_done(agent, job_id, progress), f"report the end of job {job_id}")
        return result
    except JobEndedError as exc:
        # Cancelled or skipped while running: the record already says so (final); drop this job's partial data.
        cleaned = partial_cleanup.discard_job_partials(agent.redis, agent.worker_id, agent.store, job_id)
        log.info("job %s: %s; stopped, %d partial download(s) removed", job_id, exc, len(cleaned.removed))
        _with_redis(lambda: agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id), f"leave job {job_id}")
        return {"stopped": progress.ended_elsewhere}
    except DownloadStoppedError as exc:
        # SIGTERM: the part stays unfinished and its partial data on disk; the next start resumes it (unfinished_jobs).
        log.info("job %s: %s; its partial data stays and the next start resumes it", job_id, exc)
        progress.update(force=True, status="stopped: the agent is shutting down; it resumes when the agent is back")
        return {"stopped": "agent shutting down"}
    finally:
        lease.release()


def _stop_reporting(agent: Agent, job_id: str, progress: Progress, reason: str) -> None:
    progress.detach(reason)
    if reason == JOB_GONE:
        _drop_stray_records(agent, job_id)


def _drop_stray_records(agent: Agent, job_id: str) -> None:
    """Progress written after Redis lost the job made records no job owns; remove them."""
    if not agent.redis.exists(keys.job(job_id)):
        agent.redis.delete(keys.job_workers(job_id), keys.job_states(job_id))


def _report_done(agent: Agent, job_id: str, progress: Progress) -> None:
    """Store the part's final record (its last write may have been lost to an outage), then the inventory."""
    if progress.ended_elsewhere is None:
        if agent.redis.exists(keys.job(job_id)):
            written = write_record(agent.redis, job_id, agent.worker_id, progress.record)
            if not written.accepted:
                progress.ended_elsewhere = written.state
        else:
            progress.detach(JOB_GONE)
            log.warning("job %s: %s; its part ended %s on this worker", job_id, JOB_GONE, progress.record["state"])
            _drop_stray_records(agent, job_id)
    agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id)
    refresh_inventory(agent)


def report_failure(agent: Agent, job_id: str, reason: str) -> None:
    """End the worker's part as failed with `reason`, once Redis answers; a job Redis lost stays lost."""
    def store() -> None:
        if agent.redis.exists(keys.job(job_id)):
            fail_worker(agent.redis, job_id, agent.worker_id, reason)
        agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id)
    # The part ended for good (retries used up, or not retryable): its partial data is of no further use.
    cleaned = partial_cleanup.discard_job_partials(agent.redis, agent.worker_id, agent.store, job_id)
    if cleaned.removed:
        log.info("job %s: removed %d partial download(s), %d bytes", job_id, len(cleaned.removed), cleaned.freed)
    _with_redis(store, f"report the failure of job {job_id}")


def report_retrying(agent: Agent, job_id: str, reason: str) -> None:
    """Show the coming retry; only informative, so a Redis outage just skips it."""
    try:
        if agent.redis.exists(keys.job(job_id)):
            Progress(agent.redis, job_id, agent.worker_id).retrying(reason)
    except redis.RedisError as exc:
        log.warning("could not report the retry of job %s: %s", job_id, exc)


def _with_redis(action: Callable[[], None], what: str, patience: float | None = None,
                sleep: Callable[[float], None] = time.sleep) -> bool:
    """Run `action`, again after each Redis error (backoff with jitter) for up to `patience` seconds."""
    patience = REPORT_PATIENCE if patience is None else patience
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        try:
            action()
            return True
        except redis.RedisError as exc:
            delay = backoff_delay(attempt, base=0.5, cap=10.0)
            if time.monotonic() + delay > deadline:
                log.error("could not %s: Redis did not answer for %.0f s (%s)", what, patience, exc)
                return False
            if attempt == 0:
                log.warning("could not %s yet (%s); trying again until Redis answers", what, exc)
            attempt += 1
            sleep(delay)


def refresh_inventory(agent: Agent) -> list[dict]:
    models = last_use.stamp_inventory(agent, serving.local_models(agent))
    workers.publish_inventory(agent.redis, agent.worker_id, models)
    return models


def unfinished_jobs(agent: Agent) -> list[tuple[str, dict]]:
    """This worker's assigned jobs that are not finished (to resume after a restart)."""
    out = []
    for job_id in agent.redis.smembers(keys.worker_jobs(agent.worker_id)):
        meta = agent.redis.hgetall(keys.job(job_id))
        record = own_record(agent, job_id)
        if not meta or record is None or jobstate.is_terminal(record.get("state", "")):
            agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id)
            continue
        # The process that held this lock is gone: we are its restart.
        agent.redis.delete(keys.job_lock(job_id, agent.worker_id))
        out.append((job_id, meta))
    return out

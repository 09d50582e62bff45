"""Thin Celery tasks with stable names; the work is in plain functions (job_runner)."""

from __future__ import annotations

import logging

from celery import Task
from celery.signals import celeryd_after_setup

from eldric import logging_setup
from eldric.cluster.queues import (
    MAINTENANCE_QUEUE, TASK_CLEAN_PARTIALS, TASK_CLEAN_PARTIALS_ALL, TASK_COPY, TASK_DELETE, TASK_DISTRIBUTE, TASK_INVENTORY_SYNC,
    TASK_INVENTORY_SYNC_ALL, TASK_MIRROR_CHECK_UPDATES, TASK_PINS_CHECK_UPDATES, TASK_PINS_RECONCILE, TASK_PULL,
    TASK_EVICT, TASK_EVICT_ALL, TASK_GC_SWEEP, TASK_GC_SWEEP_ALL, TASK_REAP_STALE_JOBS, TASK_SWEEP_DEBRIS, TASK_SWEEP_DEBRIS_ALL,
)
from eldric.cluster import maintenance
from eldric.cluster.dispatch import job_sender
from eldric.cluster.mirror_updates import check_mirror_updates
from eldric.core.errors import EldricError
from worker_agent import debris_sweep, eviction, gc_sweep, job_runner, partial_cleanup, runtime
from worker_agent.celery_app import app
from worker_agent.distributing import RETRIED_ERRORS
from worker_agent.pulling import upstream_digest
from worker_agent.sources import RegistrySource

log = logging.getLogger(__name__)


def describe_failure(exc: BaseException) -> str:
    """The reason an operator reads; our own errors speak for themselves, bugs are labelled."""
    if isinstance(exc, EldricError):
        return str(exc)
    return f"internal error ({type(exc).__name__}): {exc}"


class JobTask(Task):
    """Writes the worker's record on retry and on final failure (the failure still propagates).

    Our own errors are expected failures (model not found, digest mismatch, an upstream that
    refuses): `throws` makes Celery log them at INFO without a traceback, and on_failure logs
    one WARNING line with the job and worker. Anything else is a bug: ERROR with the traceback.
    """

    throws = (EldricError,)

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        agent = runtime.current()
        delay = agent.settings.retry_delay(self.request.retries - 1)
        job_runner.report_retrying(
            agent, args[0], f"{exc}; retry {self.request.retries} of {agent.settings.pull_retries} in {delay:.0f} s")

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        agent = runtime.current()
        if isinstance(exc, EldricError):
            log.warning("%s failed: %s", self.name, exc, extra={"job_id": args[0], "worker_id": agent.worker_id})
        else:
            log.error("task %s failed unexpectedly", task_id, exc_info=exc)
        job_runner.report_failure(agent, args[0], describe_failure(exc))


@app.task(name=TASK_PULL, bind=True, base=JobTask)
def pull(self: JobTask, job_id: str, model: str) -> dict:
    agent = runtime.current()
    try:
        return job_runner.run_pull_job(agent, job_id, model)
    except RETRIED_ERRORS as exc:  # the source, or a backend's API (Triton)
        raise self.retry(exc=exc, countdown=agent.settings.retry_delay(self.request.retries),
                         max_retries=agent.settings.pull_retries) from exc


@app.task(name=TASK_DISTRIBUTE, bind=True, base=JobTask)
def distribute(self: JobTask, job_id: str, model: str) -> dict:
    agent = runtime.current()
    try:  # on the last try a `partial_ok` job skips a backend still unreachable (README "Distribution and backends")
        return job_runner.run_distribute_job(agent, job_id, model,
                                             last_try=self.request.retries >= agent.settings.pull_retries)
    except RETRIED_ERRORS as exc:
        raise self.retry(exc=exc, countdown=agent.settings.retry_delay(self.request.retries),
                         max_retries=agent.settings.pull_retries) from exc


@app.task(name=TASK_DELETE, bind=True, base=JobTask)
def delete(self: JobTask, job_id: str, model: str) -> dict:
    return job_runner.run_delete_job(runtime.current(), job_id, model)


@app.task(name=TASK_COPY, bind=True, base=JobTask)
def copy(self: JobTask, job_id: str, model: str) -> dict:
    return job_runner.run_copy_job(runtime.current(), job_id, model)


@app.task(name=TASK_INVENTORY_SYNC)
def inventory_sync() -> dict:
    models = job_runner.refresh_inventory(runtime.current())
    return {"models": len(models)}


# --- Scheduled work: beat enqueues these on the shared maintenance queue (eldric/cluster/schedules.py);
# every agent consumes it, so one live agent runs each message. Bodies: eldric/cluster/maintenance.py.

_send = job_sender(app)  # jobs and fan-outs of scheduled work go out as the controller's do


@app.task(name=TASK_INVENTORY_SYNC_ALL)
def inventory_sync_all() -> dict:
    return {"asked": maintenance.request_inventory_sync(runtime.current().redis, _send)}


@app.task(name=TASK_REAP_STALE_JOBS)
def reap_stale_jobs(stale_after: float, offline_grace: float = 300.0) -> dict:
    reaped = maintenance.reap_stale_jobs(runtime.current().redis, stale_after=float(stale_after),
                                         offline_grace=float(offline_grace))
    return {"reaped": [[r.job_id, r.worker_id, r.state] for r in reaped]}


@app.task(name=TASK_PINS_RECONCILE)
def pins_reconcile(deadline_seconds: float, retry_seconds: float, offline_grace: float = 300.0,
                   reserve_bytes: int = 1 << 30) -> dict:
    """Pins, then the catch-ups of skipped workers now back (both desired state; one beat entry)."""
    client = runtime.current().redis
    jobs = maintenance.reconcile_pins(client, _send, deadline_seconds=float(deadline_seconds),
                                      retry_after=float(retry_seconds), offline_grace=float(offline_grace),
                                      reserve=int(reserve_bytes))
    catchups = maintenance.reconcile_catchups(client, _send, deadline_seconds=float(deadline_seconds))
    return {"jobs": jobs, "catchups": catchups}


@app.task(name=TASK_PINS_CHECK_UPDATES)
def pins_check_updates(deadline_seconds: float, retry_seconds: float) -> dict:
    agent = runtime.current()
    s = agent.settings
    return maintenance.check_pin_updates(
        agent.redis, _send, lambda name: upstream_digest(RegistrySource.from_settings(name, s), name),
        deadline_seconds=float(deadline_seconds), retry_after=float(retry_seconds))


@celeryd_after_setup.connect
def _consume_maintenance_queue(sender, instance, **_kw) -> None:
    instance.app.amqp.queues.select_add(MAINTENANCE_QUEUE)


logging_setup.connect_celery_signals()


# --- Partial-download cleanup (README "Scheduled work"): beat -> any one agent -> every online worker.

@app.task(name=TASK_CLEAN_PARTIALS_ALL)
def clean_partials_all(max_age_seconds: float) -> dict:
    return {"asked": maintenance.request_partial_cleanup(runtime.current().redis, _send, float(max_age_seconds))}


@app.task(name=TASK_CLEAN_PARTIALS)
def clean_partials(max_age_seconds: float) -> dict:
    agent = runtime.current()
    cleaned = partial_cleanup.clean_partials(agent.redis, agent.worker_id, agent.store, max_age=float(max_age_seconds))
    return {"removed": cleaned.removed, "freed": cleaned.freed}


# --- Debris sweep (README "Scheduled work"): beat -> any one agent -> every online inference/cloud worker.

@app.task(name=TASK_SWEEP_DEBRIS_ALL)
def sweep_debris_all() -> dict:
    return {"asked": maintenance.request_debris_sweep(runtime.current().redis, _send)}


@app.task(name=TASK_SWEEP_DEBRIS)
def sweep_debris() -> dict:
    agent = runtime.current()
    return debris_sweep.sweep_debris(agent, agent.settings.debris_sweep).to_json()


# --- GC sweep (README "Scheduled work"): beat or POST /api/v1/gc -> every online worker.

@app.task(name=TASK_GC_SWEEP_ALL)
def gc_sweep_all(partial_max_age_seconds: float | None = None) -> dict:
    return {"asked": maintenance.request_gc_sweep(runtime.current().redis, _send, remove=True,
                                                  partial_max_age=partial_max_age_seconds)}


@app.task(name=TASK_GC_SWEEP)
def gc_sweep_run(remove: bool = True, partial_max_age_seconds: float | None = None) -> dict:
    agent = runtime.current()
    return gc_sweep.sweep(agent, remove=bool(remove), partial_max_age=partial_max_age_seconds).to_json()


# --- The data node's mirror (README "Scheduled work"): beat -> any one agent -> the registry's check.

@app.task(name=TASK_MIRROR_CHECK_UPDATES)
def mirror_check_updates(registry_url: str) -> dict:
    agent = runtime.current()
    return check_mirror_updates(agent.redis, registry_url, agent.settings.cluster_secret)


# --- Eviction (worker_agent/eviction.py): beat -> any one agent -> every online inference/cloud worker, which
# evicts least-recently-used models while its store's filesystem is above ELDRIC_DISK_HIGH_WATERMARK.

@app.task(name=TASK_EVICT_ALL)
def evict_all() -> dict:
    return {"asked": maintenance.request_eviction(runtime.current().redis, _send)}


@app.task(name=TASK_EVICT)
def evict() -> dict:
    return {"jobs": eviction.evict_over_high(runtime.current(), job_runner.run_delete_job)}

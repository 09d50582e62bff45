"""Ollama's "concurrent pulls of one model share one download", cluster-wide: a `POST /api/pull` of a model
whose cluster-wide pull is still running attaches to that job (its stream follows the same records) instead
of queuing a second one. Open WebUI re-pulls, several users pull the same model, a client retries after its
connection dropped: one job, one download per worker.

The running job's id is kept under `keys.shared_pull(model)` (TTL: the job's deadline), written and read
under a short Redis lock so two controllers (or two gunicorn threads) cannot both start one. A job attaches
only while it is unfinished and has the same targets as a new pull would (every inference and cloud worker
registered now): a worker registered since gets a pull of its own. `DELETE /api/delete` of the model cancels
it (cancel_running): a client going away never does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery import Celery
from redis.exceptions import LockError

from controller.pull_jobs import JobLimits, choose_targets, parse_model, start_cluster_pull, start_pull
from eldric.cluster import keys
from eldric.cluster.jobs import reads
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import cancel_job
from eldric.core.names import ModelName
from eldric.core.request_errors import NotFoundError, UnavailableError

LOCK_SECONDS = 30.0  # longer than start_pull's one upstream manifest check (short timeouts)


@dataclass(frozen=True)
class SharedPull:
    job_id: str
    attached: bool  # True: another client's running pull, followed; False: started by this call


def start_or_attach(client: redis.Redis, producer: Celery, *, model: str, limits: JobLimits, stale_after: float,
                    offline_grace: float, in_cluster_registry: Callable[[ModelName], bool] | None = None) -> SharedPull:
    """The running cluster-wide pull of `model` with today's targets, or a new one (start_pull's checks and errors).

    A model upstream does not have but `in_cluster_registry` finds (created or pushed through the Ollama API) is
    pulled from the cluster's registry (source `cluster`), so `ollama pull mine` brings a created model to a
    worker that lacks it, as it would from Ollama's registry; upstream is asked first, as Ollama's pull does."""
    name = parse_model(model, limits.upstreams)
    targets = sorted(choose_targets(client, None, limits))
    key = keys.shared_pull(name.short)
    try:
        with client.lock(f"{key}:lock", timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
            running = client.get(key)
            if running and _is_running_on(client, running, targets, stale_after, offline_grace):
                return SharedPull(running, attached=True)
            try:
                job_id = start_pull(client, producer, model=name.short, workers=None, limits=limits)
            except NotFoundError:
                if in_cluster_registry is None or not in_cluster_registry(name):
                    raise
                job_id = start_cluster_pull(client, producer, model=name.short, limits=limits)
            client.set(key, job_id, ex=max(1, int(limits.deadline_seconds)))
    except LockError:  # another start of this pull held the lock for LOCK_SECONDS: say so, never a 500
        raise UnavailableError(f"another pull of '{name.short}' is being started; try again") from None
    return SharedPull(job_id, attached=False)


def cancel_running(client: redis.Redis, model: str, *, stale_after: float, offline_grace: float) -> str | None:
    """Cancel the running cluster-wide pull of `model` (short name), if any; its id. Open WebUI cancels a pull by
    aborting its stream and then deleting the model: the abort leaves the job running, the delete ends it."""
    running = client.get(keys.shared_pull(model))
    if not running:
        return None
    job = reads.get_job(client, running, stale_after=stale_after, offline_grace=offline_grace)
    if job is None or job["state"] in jobstate.JOB_FINAL:
        return None
    cancel_job(client, running)
    return running


def _is_running_on(client: redis.Redis, job_id: str, targets: list[str], stale_after: float,
                   offline_grace: float) -> bool:
    job = reads.get_job(client, job_id, stale_after=stale_after, offline_grace=offline_grace)
    if job is None or job["state"] in jobstate.JOB_FINAL:
        return False
    return sorted(w["worker"] for w in job["workers"]) == targets

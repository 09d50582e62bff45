"""Starting per-worker jobs (pull, delete): validate, pick targets, record the job, enqueue per worker."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery

from controller import cluster, dispatch, inventory, jobs
from controller.errors import BadRequestError, ConflictError, NotFoundError  # noqa: F401 (re-exported)
from eldric.queues import TASK_DELETE, TASK_PULL
from registry.errors import InvalidNameError
from registry.names import ModelName


@dataclass(frozen=True)
class JobLimits:
    deadline_seconds: float
    retention_seconds: float
    keep_max: int
    forget_after: float | None = None


def parse_model(model: str) -> ModelName:
    try:
        return ModelName.parse(model)
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="model") from None


def choose_targets(client: redis.Redis, workers: list[str] | None, limits: JobLimits) -> list[str]:
    targets, refused, unknown = cluster.select_targets(
        cluster.list_workers(client, forget_after=limits.forget_after), workers)
    if unknown:
        raise NotFoundError(f"unknown worker(s): {', '.join(unknown)}")
    if refused:
        raise BadRequestError(f"not inference or cloud workers, they never take model work: {', '.join(refused)}",
                              field="workers")
    if not targets:
        raise ConflictError("no inference or cloud workers are registered")
    return [w["id"] for w in targets]


def start_pull(client: redis.Redis, producer: Celery, *, model: str, workers: list[str] | None,
               limits: JobLimits) -> str:
    name = parse_model(model)
    ids = choose_targets(client, workers, limits)
    return _start(client, producer, "pull", TASK_PULL, name.short, ids, "ollama", limits)


def start_delete(client: redis.Redis, producer: Celery, *, model: str, workers: list[str] | None,
                 limits: JobLimits) -> str:
    """Delete from the listed workers, or from every worker whose inventory has the model."""
    name = parse_model(model)
    if workers is None:
        ids = inventory.workers_with(client, name.short)
        if not ids:
            raise NotFoundError(f"no worker has model '{name.short}'")
    else:
        ids = choose_targets(client, workers, limits)
    return _start(client, producer, "delete", TASK_DELETE, name.short, ids, "local", limits)


def _start(client: redis.Redis, producer: Celery, kind: str, task: str, model: str, ids: list[str],
           source: str, limits: JobLimits) -> str:
    job_id = jobs.create_job(client, kind=kind, model=model, targets=ids, source=source,
                             deadline_seconds=limits.deadline_seconds)
    for wid in dispatch.send_to_workers(producer, task, job_id, [model], ids):
        jobs.fail_worker(client, job_id, wid, "could not enqueue the task: broker unavailable")
    jobs.prune_jobs(client, retention_seconds=limits.retention_seconds, keep_max=limits.keep_max)
    return job_id

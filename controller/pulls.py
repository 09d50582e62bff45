"""Starting a cluster-wide pull: validate, pick targets, record the job, enqueue per worker."""

from __future__ import annotations

import redis
from celery import Celery

from controller import cluster, dispatch, jobs
from controller.errors import BadRequestError, ConflictError, NotFoundError
from eldric.queues import TASK_PULL
from registry.errors import InvalidNameError
from registry.names import ModelName


def start_pull(client: redis.Redis, producer: Celery, *, model: str, workers: list[str] | None,
               deadline_seconds: float, retention_seconds: float, keep_max: int,
               forget_after: float | None = None) -> str:
    try:
        name = ModelName.parse(model)
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="model") from None
    targets, refused, unknown = cluster.select_targets(cluster.list_workers(client, forget_after=forget_after), workers)
    if unknown:
        raise NotFoundError(f"unknown worker(s): {', '.join(unknown)}")
    if refused:
        raise BadRequestError(f"not inference or cloud workers, they never take model work: {', '.join(refused)}",
                              field="workers")
    if not targets:
        raise ConflictError("no inference or cloud workers are registered to pull to")
    ids = [w["id"] for w in targets]
    job_id = jobs.create_job(client, kind="pull", model=name.short, targets=ids, source="ollama",
                             deadline_seconds=deadline_seconds)
    for wid in dispatch.send_to_workers(producer, TASK_PULL, job_id, [name.short], ids):
        jobs.fail_worker(client, job_id, wid, "could not enqueue the task: broker unavailable")
    jobs.prune_jobs(client, retention_seconds=retention_seconds, keep_max=keep_max)
    return job_id

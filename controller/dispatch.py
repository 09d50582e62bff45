"""The only place that sends Celery tasks: one task per target worker, to its direct queue."""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.queues import worker_queue

log = logging.getLogger(__name__)


def create_producer(redis_url: str) -> Celery:
    app = Celery("eldric-controller")
    app.conf.update(celery_config(redis_url))
    return app


def send_to_workers(producer: Celery, task_name: str, job_id: str, args: list, worker_ids: list[str]) -> list[str]:
    """Enqueue `task_name(job_id, *args)` for every worker; return the ids that could not be reached."""
    failed: list[str] = []
    for wid in worker_ids:
        try:
            producer.send_task(task_name, args=[job_id, *args], queue=worker_queue(wid),
                               retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        except OperationalError as exc:
            log.error("could not enqueue %s for %s: %s", task_name, wid, exc)
            failed.append(wid)
    return failed

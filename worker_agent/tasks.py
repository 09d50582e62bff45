"""Thin Celery tasks with stable names; the work is in plain functions (job_runner)."""

from __future__ import annotations

import logging

from celery import Task

from eldric import keys
from eldric.queues import TASK_DELETE, TASK_INVENTORY_SYNC, TASK_PULL
from worker_agent import job_runner, runtime
from worker_agent.celery_app import app
from worker_agent.errors import AgentError, SourceUnavailableError
from worker_agent.progress import mark_failed, mark_retrying
from registry.errors import RegistryError

log = logging.getLogger(__name__)


def describe_failure(exc: BaseException) -> str:
    """The reason an operator reads; our own errors speak for themselves, bugs are labelled."""
    if isinstance(exc, (AgentError, RegistryError)):
        return str(exc)
    return f"internal error ({type(exc).__name__}): {exc}"


class JobTask(Task):
    """Writes the worker's record on retry and on final failure (the failure still propagates)."""

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        agent = runtime.current()
        delay = agent.settings.retry_delay(self.request.retries - 1)
        mark_retrying(agent.redis, args[0], agent.worker_id,
                      f"{exc}; retry {self.request.retries} of {agent.settings.pull_retries} in {delay:.0f} s")

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        agent = runtime.current()
        if not isinstance(exc, (AgentError, RegistryError)):
            log.error("task %s failed unexpectedly", task_id, exc_info=exc)
        mark_failed(agent.redis, args[0], agent.worker_id, describe_failure(exc))
        agent.redis.srem(keys.worker_jobs(agent.worker_id), args[0])


@app.task(name=TASK_PULL, bind=True, base=JobTask)
def pull(self: JobTask, job_id: str, model: str) -> dict:
    agent = runtime.current()
    try:
        return job_runner.run_pull_job(agent, job_id, model)
    except SourceUnavailableError as exc:
        raise self.retry(exc=exc, countdown=agent.settings.retry_delay(self.request.retries),
                         max_retries=agent.settings.pull_retries)


@app.task(name=TASK_DELETE, bind=True, base=JobTask)
def delete(self: JobTask, job_id: str, model: str) -> dict:
    return job_runner.run_delete_job(runtime.current(), job_id, model)


@app.task(name=TASK_INVENTORY_SYNC)
def inventory_sync() -> dict:
    models = job_runner.refresh_inventory(runtime.current())
    return {"models": len(models)}

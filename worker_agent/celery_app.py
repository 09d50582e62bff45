"""The agents' Celery app; configured by the entry point, tasks registered in worker_agent.tasks."""

from celery import Celery

from eldric.cluster.celeryconf import celery_config

app = Celery("eldric", include=["worker_agent.tasks"])


def configure(redis_url: str, visibility_timeout: int = 3600) -> Celery:
    app.conf.update(celery_config(redis_url, visibility_timeout))
    return app

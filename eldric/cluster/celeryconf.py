"""Celery settings shared by the agents (consumers) and the controller (producer)."""

from __future__ import annotations

from eldric.cluster.redisconn import celery_broker


def celery_config(redis_url: str, visibility_timeout: int = 3600) -> dict:
    """`redis_url` is ELDRIC_REDIS_URL: a redis://, rediss:// or sentinel:// URL (eldric.cluster.redisconn)."""
    broker_url, transport_options = celery_broker(redis_url)
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        # Job state lives in our own Redis records; Celery results would duplicate it.
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged after it ran, so a killed agent's task comes back;
        # agents dedupe redeliveries through the job's per-worker state and lock.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # With the Redis broker an unacknowledged message is handed out again once it is older
        # than the visibility timeout, even if its task is still running. Job deadlines go up to
        # 30 days, so a long pull outlives this hour: its redelivered copy reaches the same
        # worker's queue, finds the per-job lock held (worker_agent.job_runner.JobLease renews it
        # while the job runs, whatever the lock's TTL) and is skipped and acknowledged. The timeout
        # is not raised to the longest deadline because it is also how a shared-queue task
        # (maintenance) taken by an agent that died comes back; an agent's own jobs come back
        # sooner, when it restarts (job_runner.unfinished_jobs).
        "broker_transport_options": {"visibility_timeout": visibility_timeout, **transport_options},
        # Events let Flower show tasks and workers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_create_missing_queues": True,
    }

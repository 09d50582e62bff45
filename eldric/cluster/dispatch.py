"""The only place that sends Celery tasks to workers: one task per target worker, to its direct queue.

The controller sends jobs through it, and the agents hosting the scheduled work send their
jobs (pins, catch-ups) and fan-outs (inventory sync, partial cleanup) through it too.

A pull to a thousand workers is a thousand messages (one per direct queue: Redis fan-out
delivers at most once, so no broadcast). They go over one broker connection, through
kombu's publish batches (`Producer.batch`, kombu >= 5.7): kombu still builds every
message and its Redis commands itself (the LPUSH of the message, the PUBLISH of Celery's
`task-sent` event), it only sends them in one non-transactional pipeline per chunk. A
chunk whose pipeline fails has an uncertain outcome, so its messages are sent again one
at a time with retries; a duplicate is harmless (agents dedupe redeliveries through the
job's per-worker state and lock) and a worker whose message still cannot be enqueued is
reported, as before. Transports without batch support publish immediately.

No queue is declared on the way (`declare=[]`). Celery sends a message for a direct-exchange queue
through the anonymous exchange, so kombu's Redis transport LPUSHes it straight onto the list named
after the queue, with no look-up in the `_kombu.binding.*` routing table; declaring only ran an LLEN
and an SADD of that table per queue, two round trips per worker outside the publish batch on every
new connection (2.6 of 4.2 s of a 900-worker pull, issue 13). A list that does not exist yet is
created by the LPUSH and consumed once the agent starts (the agent declares its own queues).
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.jobs.start import BROKER_UNAVAILABLE, Send
from eldric.cluster.queues import worker_queue

log = logging.getLogger(__name__)

# Messages per pipeline: bounds what one failure makes uncertain (and so sends again).
CHUNK = 250
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2}


def create_producer(redis_url: str) -> Celery:
    app = Celery("eldric-controller")
    app.conf.update(celery_config(redis_url))
    return app


def job_sender(producer: Celery) -> Send:
    """The jobs' Send (eldric/cluster/jobs/start.py) over Celery."""
    def send(task_name: str, task_args: list, worker_ids: list[str]) -> dict[str, str]:
        return {wid: BROKER_UNAVAILABLE for wid in send_each(producer, task_name, task_args, worker_ids)}
    return send


def send_to_workers(producer: Celery, task_name: str, job_id: str, args: list, worker_ids: list[str]) -> list[str]:
    """Enqueue `task_name(job_id, *args)` for every worker; return the ids that could not be reached."""
    return send_each(producer, task_name, [job_id, *args], worker_ids)


def send_each(producer: Celery, task_name: str, task_args: list, worker_ids: list[str]) -> list[str]:
    """Enqueue `task_name(*task_args)` for every worker; return the ids that could not be reached."""
    failed: list[str] = []
    handled = 0  # workers sent to, or already reported
    try:
        with producer.producer_or_acquire() as kproducer:
            for start in range(0, len(worker_ids), CHUNK):
                chunk = worker_ids[start:start + CHUNK]
                try:
                    _send_batch(producer, kproducer, task_name, task_args, chunk)
                except (KombuError, redis.RedisError, OSError) as exc:  # BatchPublishError, OperationalError, a dropped socket
                    log.warning("batch enqueue of %s to %d workers failed (%s); sending one at a time",
                                task_name, len(chunk), exc)
                    failed += _send_one_by_one(producer, kproducer, task_name, task_args, chunk)
                handled = start + len(chunk)
    except (KombuError, redis.RedisError, OSError) as exc:  # no broker connection at all
        log.error("could not enqueue %s for %d workers: %s", task_name, len(worker_ids) - handled, exc)
        failed += worker_ids[handled:]
    return failed


def _send_batch(producer: Celery, kproducer, task_name: str, task_args: list, worker_ids: list[str]) -> None:
    # Two commands per message (LPUSH + task-sent PUBLISH): the batch must not flush halfway.
    with kproducer.batch(max_size=2 * len(worker_ids) + 2):
        for wid in worker_ids:
            producer.send_task(task_name, args=task_args, queue=worker_queue(wid), producer=kproducer, declare=[])


def _send_one_by_one(producer: Celery, kproducer, task_name: str, task_args: list, worker_ids: list[str]) -> list[str]:
    failed: list[str] = []
    for wid in worker_ids:
        try:
            producer.send_task(task_name, args=task_args, queue=worker_queue(wid), producer=kproducer,
                               declare=[], retry=True, retry_policy=RETRY_POLICY)
        except (OperationalError, redis.RedisError, OSError) as exc:
            log.error("could not enqueue %s for %s: %s", task_name, wid, exc)
            failed.append(wid)
    return failed

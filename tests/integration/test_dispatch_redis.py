"""eldric.cluster.dispatch over a real Redis broker: no queue is declared on the way, and every task still
reaches its worker's queue, also one no agent ever declared (issue 13)."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from kombu import Consumer

from eldric.cluster import dispatch
from eldric.cluster.celeryconf import celery_config
from eldric.cluster.queues import TASK_PULL, worker_queue

pytestmark = pytest.mark.integration


def test_tasks_reach_undeclared_queues_and_the_agent_that_declares_it_later_gets_its_task(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    ids = [f"late-{i}" for i in range(6)]
    producer = dispatch.create_producer(redis_server.url)  # a fresh connection: nothing declared or cached
    assert dispatch.send_to_workers(producer, TASK_PULL, "job-1", ["m:latest"], ids) == []
    # No routing table was written: kombu put each message straight onto the worker's list.
    assert client.keys("_kombu.binding.worker.*") == []
    assert [client.llen(worker_queue(wid)) for wid in ids] == [1] * len(ids)

    # The agent declares its direct queue as `celery worker -Q worker.<id>` does, after the message arrived.
    agent = Celery("agent")
    agent.conf.update(celery_config(redis_server.url))
    received: list[tuple[str, list]] = []

    def on_message(body, message) -> None:
        received.append((message.headers["task"], body[0]))
        message.ack()

    with agent.connection_for_read() as conn:
        queue = agent.amqp.queues[worker_queue("late-3")]
        with Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=10)
    assert received == [(TASK_PULL, ["job-1", "m:latest"])]
    assert client.llen(worker_queue("late-3")) == 0
    assert client.keys("_kombu.binding.worker.*") == ["_kombu.binding.worker.late-3"]

"""worker_agent.membership.beat: an agent registers again whenever Redis no longer lists it."""

from __future__ import annotations

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from eldric.cluster import keys
from worker_agent import membership

WORKER = "gpu1"
INFO = {"id": WORKER, "type": "inference", "address": "http://10.0.0.5:8891", "backends": ["ollama"]}


@pytest.fixture
def client(tmp_path) -> fakeredis.FakeRedis:
    c = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    cluster_workers.register(c, INFO, ttl=15)
    return c


def is_listed(client) -> bool:
    return client.sismember(keys.WORKERS, WORKER) and client.hget(keys.worker(WORKER), "type") == "inference"


def test_a_registered_worker_just_beats(client, tmp_path):
    assert membership.beat(client, WORKER, tmp_path, ttl=15, info=INFO) is False
    assert is_listed(client) and client.exists(keys.worker_alive(WORKER))


def test_redis_restarted_empty_registers_again(client, tmp_path):
    client.flushall()
    assert membership.beat(client, WORKER, tmp_path, ttl=15, info=INFO) is True
    assert is_listed(client)


def test_an_inventory_report_that_came_first_does_not_hide_the_lost_registration(client, tmp_path):
    """After an empty restart a finishing pull may report the inventory before the next heartbeat."""
    client.flushall()
    cluster_workers.publish_inventory(client, WORKER, [{"name": "tiny:latest"}])  # recreates a bare worker hash
    assert membership.beat(client, WORKER, tmp_path, ttl=15, info=INFO) is True
    assert is_listed(client)


def test_a_worker_the_controller_forgot_registers_again_when_it_beats(client, tmp_path):
    client.srem(keys.WORKERS, WORKER)  # controller.workers.list_workers drops long-offline workers
    assert membership.beat(client, WORKER, tmp_path, ttl=15, info=INFO) is True
    assert is_listed(client)

"""eldric.cluster.dispatch: pipelined chunks, a failed chunk sent again one by one, failures reported."""

from __future__ import annotations

import pytest

from eldric.cluster import dispatch
from tests.support.fake_celery import FakeCelery as Broker


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(dispatch, "CHUNK", 3)


def test_every_worker_gets_one_message_in_pipelined_chunks():
    broker = Broker()
    assert dispatch.send_to_workers(broker, "models.pull", "j", ["m"], [f"w{i}" for i in range(7)]) == []
    assert broker.queues == [f"worker.w{i}" for i in range(7)] and broker.batches == [3, 3, 1]


def test_a_failed_chunk_is_sent_again_one_by_one_and_only_the_unreachable_worker_is_reported():
    broker = Broker(unreachable={"worker.w4"})
    assert dispatch.send_to_workers(broker, "models.pull", "j", ["m"], [f"w{i}" for i in range(7)]) == ["w4"]
    assert [m["queue"] for m in broker.singles] == ["worker.w3", "worker.w5"]
    assert sorted(broker.queues) == sorted(f"worker.w{i}" for i in range(7) if i != 4)


def test_no_broker_connection_reports_every_worker():
    assert dispatch.send_to_workers(Broker(down=True), "models.pull", "j", ["m"], ["a", "b"]) == ["a", "b"]

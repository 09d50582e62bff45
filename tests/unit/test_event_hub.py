"""The controller's event hub: one pub/sub connection fanned out to job streams, coalesced per worker."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
import redis

from controller.api.events import job_event_stream
from controller.event_hub import EventHub, HubUnavailableError
from eldric.cluster import keys


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def hub(client):
    h = EventHub(client.pubsub, poll=0.01, backoff=lambda n: 0.05)
    yield h
    h.stop()


def publish(client, job_id: str, worker: str, **fields) -> None:
    client.publish(keys.job_events(job_id), json.dumps({"worker": worker, **fields}))


def take_until(sub, count: int, timeout: float = 2.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += sub.take(timeout=0.05)
    return got


def test_one_connection_fans_out_to_every_stream_of_a_job_and_only_to_them(client, hub):
    subs_a = [hub.subscribe("a") for _ in range(3)]
    sub_b = hub.subscribe("b")
    assert client.pubsub_numsub(keys.job_events("a"))[0][1] == 1  # one subscription for three streams
    publish(client, "a", "w1", percent=10)
    for sub in subs_a:
        assert take_until(sub, 1) == [{"worker": "w1", "percent": 10}]
    assert sub_b.take(timeout=0.1) == []


def test_records_coalesce_to_the_newest_per_worker_in_write_order(client, hub):
    sub = hub.subscribe("a")
    for pct in range(50):
        publish(client, "a", "w1", percent=pct)
        publish(client, "a", "w2", percent=pct)
    publish(client, "a", "w1", percent=99, job_state="running")
    time.sleep(0.3)
    records = sub.take(timeout=0.1)
    assert records == [{"worker": "w2", "percent": 49}, {"worker": "w1", "percent": 99, "job_state": "running"}]


def test_the_last_stream_leaving_unsubscribes_and_a_new_one_subscribes_again(client, hub):
    first, second = hub.subscribe("a"), hub.subscribe("a")
    first.close()
    first.close()  # idempotent
    assert hub.followed == 1
    second.close()
    deadline = time.monotonic() + 2
    while client.pubsub_numsub(keys.job_events("a"))[0][1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.pubsub_numsub(keys.job_events("a"))[0][1] == 0 and hub.followed == 0
    again = hub.subscribe("a")
    publish(client, "a", "w1", percent=5)
    assert take_until(again, 1) == [{"worker": "w1", "percent": 5}]


def test_garbage_on_the_channel_is_ignored(client, hub):
    sub = hub.subscribe("a")
    client.publish(keys.job_events("a"), "not json")
    client.publish(keys.job_events("a"), json.dumps({"no": "worker"}))
    publish(client, "a", "w1", percent=1)
    assert take_until(sub, 1) == [{"worker": "w1", "percent": 1}]


def test_subscribe_fails_cleanly_when_redis_is_unreachable():
    def down():
        raise redis.ConnectionError("Connection refused")
    hub = EventHub(down, poll=0.01, backoff=lambda n: 0.05)
    try:
        with pytest.raises(HubUnavailableError):
            hub.subscribe("a", timeout=0.3)
        assert hub.followed == 0
    finally:
        hub.stop()


class DroppingPubSub:
    """A pub/sub whose connection drops after it confirmed the subscriptions."""

    def __init__(self, inner) -> None:
        self.inner, self.reads = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_message(self, timeout: float = 0.0):
        self.reads += 1
        if self.reads > 20:
            raise redis.ConnectionError("Connection closed by server.")
        return self.inner.get_message(timeout=timeout)


def test_a_dropped_connection_breaks_every_stream_and_the_hub_reconnects(client):
    connections: list[DroppingPubSub] = []

    def connect():
        connections.append(DroppingPubSub(client.pubsub()))
        return connections[-1]
    hub = EventHub(connect, poll=0.01, backoff=lambda n: 0.05)
    try:
        sub = hub.subscribe("a")
        deadline = time.monotonic() + 2
        while not sub.broken and time.monotonic() < deadline:
            sub.take(timeout=0.05)
        assert sub.broken and hub.followed == 0
        later = hub.subscribe("a")  # served by the next connection
        assert len(connections) >= 2 and not later.broken
    finally:
        hub.stop()


# --- the stream over a subscription -----------------------------------------------------------

JOB = {"id": "a", "state": "running", "workers": [{"worker": "w1", "state": "pulling", "updated_at": 1.0}]}


def events(stream) -> list[tuple[str, dict | None]]:
    out = []
    for chunk in stream:
        if chunk.startswith(":"):
            out.append(("comment", None))
            continue
        lines = dict(line.split(": ", 1) for line in chunk.strip().splitlines() if not line.startswith("retry"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_sends_snapshot_coalesced_progress_then_done(client, hub):
    sub = hub.subscribe("a")
    reads = iter([JOB, {**JOB, "state": "completed"}])
    for pct in (10, 20, 30, 100):
        publish(client, "a", "w1", state="completed" if pct == 100 else "pulling", percent=pct, updated_at=1.0 + pct)
    time.sleep(0.2)
    seen = events(job_event_stream(sub, lambda: next(reads), flush=0.01, recheck=60))
    assert [e for e, _ in seen] == ["snapshot", "progress", "done"]  # four writes, one event; a finish re-reads the job
    assert seen[1][1]["workers"] == [{"worker": "w1", "state": "completed", "percent": 100, "updated_at": 101.0}]
    assert seen[2][1]["state"] == "completed" and hub.followed == 0


def test_stream_ends_cleanly_when_redis_fails_mid_stream(hub):
    sub = hub.subscribe("a")
    reads = iter([JOB])

    def read_job():
        try:
            return next(reads)
        except StopIteration:
            raise redis.ConnectionError("Too many connections") from None
    seen = events(job_event_stream(sub, read_job, flush=0.01, recheck=0.02))
    assert seen[0][0] == "snapshot" and seen[-1] == ("end", {"reason": "unavailable"})
    assert hub.followed == 0  # the stream let go of its subscription


def test_a_stream_arriving_while_the_channel_is_being_dropped_waits_for_its_own_subscription(client, hub):
    for _ in range(20):  # leave and come back at once, again and again
        first = hub.subscribe("a")
        first.close()
        again = hub.subscribe("a")
        publish(client, "a", "w1", percent=1)
        assert take_until(again, 1) == [{"worker": "w1", "percent": 1}]
        again.close()


def test_streams_of_one_job_share_its_periodic_reread():
    from controller.api.events import SharedReads
    now = [100.0]
    shared = SharedReads(max_age=1.0, clock=lambda: now[0])
    reads = []

    def read():
        reads.append(now[0])
        return {"id": "j", "read": len(reads)}

    views = [shared.get("j", read) for _ in range(500)]  # 500 streams re-reading at the same moment
    assert len(reads) == 1 and all(v == {"id": "j", "read": 1} for v in views)
    now[0] += 1.5
    assert shared.get("j", read)["read"] == 2 and shared.get("j", read)["read"] == 2
    assert shared.get("other", read)["read"] == 3  # each job its own view
    now[0] += 60
    shared.get("j", read)
    assert "other" not in shared._views  # views of jobs nobody follows are dropped

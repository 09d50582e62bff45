"""The controller's event hub and job feeds: one pub/sub connection, one feed per job shared by its streams."""

from __future__ import annotations

import json
import threading
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
    """The records of the batches the subscription's feed seals, until `count` arrived."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    cursor = getattr(sub, "cursor", 0)
    while len(got) < count and time.monotonic() < deadline:
        for batch in sub.feed.wait(cursor, timeout=0.05) or []:
            got += batch.records
            cursor = batch.seq
    sub.cursor = cursor
    return got


def test_one_connection_fans_out_to_every_stream_of_a_job_and_only_to_them(client, hub):
    subs_a = [hub.subscribe("a") for _ in range(3)]
    sub_b = hub.subscribe("b")
    assert client.pubsub_numsub(keys.job_events("a"))[0][1] == 1  # one subscription for three streams
    publish(client, "a", "w1", percent=10)
    assert len({id(sub.feed) for sub in subs_a}) == 1  # one feed for the job's streams
    for sub in subs_a:
        assert take_until(sub, 1) == [{"worker": "w1", "percent": 10}]
    assert sub_b.feed.wait(0, timeout=0.1) == []


def test_records_coalesce_to_the_newest_per_worker_in_write_order(client, hub):
    sub = hub.subscribe("a")
    for pct in range(50):
        publish(client, "a", "w1", percent=pct)
        publish(client, "a", "w2", percent=pct)
    publish(client, "a", "w1", percent=99, job_state="running", updated_at=2.0)
    time.sleep(0.4)
    batches = sub.feed.wait(0, timeout=0.1)
    assert len(batches) == 1  # everything within one flush interval: one event, built once
    assert list(batches[0].records) == [{"worker": "w2", "percent": 0},
                                        {"worker": "w1", "percent": 99, "job_state": "running", "updated_at": 2.0}]
    assert batches[0].text.startswith("event: progress\ndata: ")


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
        self._count()
        return self.inner.get_message(timeout=timeout)

    def _count(self) -> None:
        self.reads += 1
        if self.reads > 20:
            raise redis.ConnectionError("Connection closed by server.")

    @property
    def connection(self):
        conn, outer = self.inner.connection, self

        class Polled:
            def __getattr__(self, name):
                return getattr(conn, name)

            def can_read(self, timeout: float = 0.0) -> bool:
                outer._count()
                return conn.can_read(timeout=timeout)
        return Polled() if conn is not None else None


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
            sub.feed.wait(0, timeout=0.05)
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
        publish(client, "a", "w1", state="completed" if pct == 100 else "pulling", percent=pct, updated_at=1.0 + pct,
                **({"job_counts": {"completed": 1, "+started": 1}} if pct == 100 else {}))
    time.sleep(0.2)
    seen = events(job_event_stream(sub, lambda: next(reads), recheck=60))
    assert [e for e, _ in seen] == ["snapshot", "progress", "done"]  # four writes, one event; the end re-reads the job
    assert seen[1][1]["workers"] == [{"worker": "w1", "state": "completed", "percent": 100, "updated_at": 101.0,
                                      "final": True, "job_state": "completed", "job_final": True}]
    assert seen[2][1]["state"] == "completed" and hub.followed == 0


def test_stream_ends_cleanly_when_redis_fails_mid_stream(hub):
    sub = hub.subscribe("a")
    reads = iter([JOB])

    def read_job():
        try:
            return next(reads)
        except StopIteration:
            raise redis.ConnectionError("Too many connections") from None
    seen = events(job_event_stream(sub, read_job, recheck=0.02))
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


def test_500_streams_of_one_job_share_its_reads_and_its_events(client, hub):
    """Issue 13: per-stream work must not grow with the job: one snapshot read, one final read, events built once."""
    reads: list[str] = []
    lock = threading.Lock()
    running = {"id": "a", "state": "running", "workers": [{"worker": f"w{i}", "state": "pulling", "updated_at": 1.0}
                                                          for i in range(900)]}

    def read_job():
        with lock:
            reads.append("read")
        time.sleep(0.05)  # a read of 900 records takes a while: streams arriving meanwhile wait for it
        return {**running, "state": "completed"} if len(reads) > 1 else running

    subs = [hub.subscribe("a") for _ in range(500)]
    outputs: list[list] = [[] for _ in subs]

    def follow(i):
        outputs[i] = events(job_event_stream(subs[i], read_job, recheck=60, max_seconds=20))
    threads = [threading.Thread(target=follow, args=(i,)) for i in range(500)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for i in range(900):
        publish(client, "a", f"w{i}", state="pulling", percent=50, updated_at=2.0)
    publish(client, "a", "w0", state="completed", percent=100, updated_at=3.0, job_state="completed")
    for t in threads:
        t.join(30)
    assert all(out[0][0] == "snapshot" and out[-1][0] == "done" for out in outputs)
    assert len(reads) <= 4  # the snapshot (maybe twice, if streams became ready during the first) and the final
    progress = [[w["worker"] for e, d in out if e == "progress" for w in d["workers"]] for out in outputs]
    assert all(len(p) >= 900 and set(p) == {f"w{i}" for i in range(900)} for p in progress)
    assert hub.followed == 0


def test_a_big_job_gets_fewer_bigger_events():
    from controller.job_feed import JobFeed
    now = [0.0]
    feed = JobFeed("a", flush=0.25, budget=250, clock=lambda: now[0])
    for i in range(900):
        feed.put({"worker": f"w{i}", "updated_at": 1.0})
    now[0] = 1.0
    feed.seal_due()
    assert feed.seq == 0  # 900 records at 250 a second: 3.6 s per event
    now[0] = 3.6
    feed.seal_due()
    assert feed.seq == 1 and len(feed.wait(0, timeout=0)[0].records) == 900
    feed.put({"worker": "w1", "updated_at": 2.0})
    now[0] = 3.9
    feed.seal_due()
    assert feed.seq == 2  # a few records: the usual quarter second


def test_a_stream_that_falls_behind_is_told_to_reconnect():
    from controller.job_feed import JobFeed
    feed = JobFeed("a", flush=0, budget=10**9, keep=4)
    for i in range(10):
        feed.put({"worker": "w", "updated_at": float(i)})
        feed.seal_due()
    assert feed.wait(0, timeout=0) is None  # batches 1..6 are gone
    assert [b.seq for b in feed.wait(7, timeout=0)] == [8, 9, 10]

"""eldric.cluster.jobstore.Progress: throttled per-worker progress records and their pub/sub events."""

from __future__ import annotations

import json

import fakeredis
import redis
import pytest

from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import fail_worker, published

JOB, WORKER = "job1", "gpu1"
INTERVAL = 0.25


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events(client):
    """Every message published on the job's channel, in order."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_events(JOB))

    def drain() -> list[dict]:
        out = []
        while (msg := pubsub.get_message(timeout=0.01)) is not None:
            out.append(json.loads(msg["data"]))
        return out

    drain()
    yield drain
    pubsub.close()


def stored(client) -> dict | None:
    raw = client.hget(keys.job_workers(JOB), WORKER)
    return json.loads(raw) if raw else None


def progress(client, clock) -> Progress:
    return Progress(client, JOB, WORKER, min_interval=INTERVAL, clock=clock)


def test_new_progress_writes_nothing_until_told(client, clock, events):
    p = progress(client, clock)
    assert p.record["state"] == jobstate.PENDING
    assert stored(client) is None
    assert events() == []


def test_start_writes_pulling_at_once(client, clock, events):
    p = progress(client, clock)
    p.start(total=1000, source="https://registry.example")
    rec = stored(client)
    assert rec["state"] == jobstate.PULLING
    assert (rec["total"], rec["completed"], rec["percent"]) == (1000, 0, 0.0)
    assert rec["started_at"] == clock.now
    assert rec["updated_at"] == clock.now
    assert rec["source"] == "https://registry.example"
    assert [e["state"] for e in events()] == [jobstate.PULLING]


def test_many_add_bytes_within_the_interval_make_one_write(client, clock, events):
    p = progress(client, clock)
    p.start(total=1000)
    events()
    clock.advance(INTERVAL)
    for _ in range(100):
        p.add_bytes(5)
        clock.advance(INTERVAL / 1000)

    published = events()
    assert len(published) == 1
    assert published[0]["completed"] == 5  # the first add after the interval was written
    assert stored(client)["completed"] == 5
    assert p.record["completed"] == 500  # the rest is held in memory, not lost


def test_next_write_after_the_interval_carries_everything(client, clock, events):
    p = progress(client, clock)
    p.start(total=1000)
    for _ in range(10):
        p.add_bytes(10)
    assert stored(client)["completed"] == 0
    clock.advance(INTERVAL)
    p.add_bytes(10)
    rec = stored(client)
    assert (rec["completed"], rec["percent"], rec["updated_at"]) == (110, 11.0, clock.now)
    assert len(events()) == 2


def test_state_change_forces_a_write_inside_the_interval(client, clock, events):
    p = progress(client, clock)
    p.start(total=100)
    p.update(status="pulling abc")  # same state, inside the interval: held
    assert stored(client)["status"] != "pulling abc"
    p.update(state=jobstate.RETRYING, status="source down")
    assert stored(client)["state"] == jobstate.RETRYING
    assert stored(client)["status"] == "source down"
    assert [e["state"] for e in events()] == [jobstate.PULLING, jobstate.RETRYING]


def test_force_and_flush_write_inside_the_interval(client, clock, events):
    p = progress(client, clock)
    p.start(total=100)
    p.update(force=True, status="verifying")
    assert stored(client)["status"] == "verifying"
    p.add_bytes(40)
    p.flush()
    assert stored(client)["completed"] == 40
    assert len(events()) == 3


def test_events_name_the_worker_and_match_the_record(client, clock, events):
    p = progress(client, clock)
    p.start(total=10)
    (event,) = events()
    assert event == {"worker": WORKER, "job_counts": {"pulling": 1, "+started": 1}, **stored(client)}
    assert published(event) == {"worker": WORKER, "job_state": jobstate.JOB_RUNNING, "job_final": False,
                                **stored(client), "final": False}


def test_finish_shape(client, clock, events):
    p = progress(client, clock)
    p.start(total=100)
    p.update(layer="sha256:abc")
    p.add_bytes(60)  # held by the throttle
    clock.advance(0.01)
    p.finish(total=120, digest="sha256:" + "d" * 64)

    rec = stored(client)
    assert rec["state"] == jobstate.COMPLETED
    assert rec["status"] == "success"
    assert (rec["completed"], rec["total"], rec["percent"]) == (120, 120, 100.0)
    assert rec["finished_at"] == clock.now
    assert rec["layer"] is None and rec["error"] is None
    assert rec["digest"] == "sha256:" + "d" * 64
    assert events()[-1]["state"] == jobstate.COMPLETED


def test_finish_without_total_keeps_the_known_total(client, clock):
    p = progress(client, clock)
    p.start(total=77)
    p.finish()
    assert (stored(client)["completed"], stored(client)["total"]) == (77, 77)


def test_fail_shape(client, clock, events):
    p = progress(client, clock)
    p.start(total=100)
    p.add_bytes(30)
    clock.advance(0.01)
    p.fail("digest mismatch")
    rec = stored(client)
    assert rec["state"] == jobstate.FAILED
    assert rec["error"] == rec["status"] == "digest mismatch"
    assert rec["finished_at"] == clock.now
    assert rec["layer"] is None
    assert rec["completed"] == 30
    assert events()[-1]["error"] == "digest mismatch"


def test_progress_resumes_from_the_stored_record(client, clock):
    first = progress(client, clock)
    first.start(total=100)
    clock.advance(5)
    again = progress(client, clock)
    assert again.record["state"] == jobstate.PULLING
    assert again.record["total"] == 100
    again.start(total=100)
    assert stored(client)["started_at"] == 1000.0  # the first start is kept


def test_records_are_per_worker(client, clock):
    Progress(client, JOB, "gpu1", clock=clock).start(total=1)
    Progress(client, JOB, "gpu2", clock=clock).fail("nope")
    assert set(client.hkeys(keys.job_workers(JOB))) == {"gpu1", "gpu2"}
    assert stored(client)["state"] == jobstate.PULLING


def test_retrying_and_fail_worker(client, events):
    Progress(client, JOB, WORKER).retrying("registry answered 503; retry 1 of 5")
    assert stored(client)["state"] == jobstate.RETRYING
    assert stored(client)["status"].startswith("registry answered 503")
    fail_worker(client, JOB, WORKER, "gave up")
    assert (stored(client)["state"], stored(client)["error"]) == (jobstate.FAILED, "gave up")
    assert [e["state"] for e in events()] == [jobstate.RETRYING, jobstate.FAILED]


class CountingUnreachable:
    """A Redis that never answers, counting how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def register_script(self, source: str):
        def run(**_kw):
            self.calls += 1
            raise redis.ConnectionError("Timeout reading from socket")
        return run


def test_tolerant_progress_pauses_periodic_writes_after_a_redis_error(clock):
    dead = CountingUnreachable()
    progress = Progress(None, JOB, WORKER, min_interval=INTERVAL, clock=clock, tolerate_redis_errors=True,
                        quiet_after_error=10.0)
    progress.client = dead  # None kept the constructor from reading the record
    progress.start(total=100)  # a state change: tried, fails, logged
    for _ in range(30):  # 7.5 s of bytes arriving: no call waits for the dead Redis
        clock.advance(INTERVAL)
        progress.add_bytes(1)
    assert dead.calls == 1
    clock.advance(3)
    progress.add_bytes(1)  # the pause is over: one more try
    assert dead.calls == 2
    progress.finish()  # a state change is always tried
    assert dead.calls == 3 and progress.record["completed"] == 100


def test_every_writer_caps_the_error_text_it_stores(client, clock):
    from eldric.core.errors import MAX_ERROR_CHARS

    huge = "x" * (5 << 20)  # an upstream's 5 MB error message, joined into a reason
    client.hset(keys.job("j"), "deadline_at", 1e12)
    fail_worker(client, "j", "w1", huge)
    progress = Progress(client, "j", "w2", clock=clock)
    progress.retrying(huge)
    stored = {w: json.loads(r) for w, r in client.hgetall(keys.job_workers("j")).items()}
    assert len(stored["w1"]["error"]) <= MAX_ERROR_CHARS and stored["w1"]["error"].endswith("characters in all]")
    assert len(stored["w2"]["status"]) <= MAX_ERROR_CHARS
    progress.fail(huge)
    assert len(json.loads(client.hget(keys.job_workers("j"), "w2"))["error"]) <= MAX_ERROR_CHARS
    assert max(len(r) for r in client.hgetall(keys.job_workers("j")).values()) < 4 * MAX_ERROR_CHARS


def test_the_step_before_finishing_runs_before_the_completed_record_and_a_failing_one_does_not_stop_it(client, clock):
    """The agent publishes its inventory there: whoever sees the part completed finds the model listed."""
    seen = []

    def publish_inventory() -> None:
        record = client.hget(keys.job_workers(JOB), WORKER)
        seen.append(json.loads(record)["state"] if record else None)

    progress = Progress(client, JOB, WORKER, clock=clock, before_finish=publish_inventory)
    progress.start(total=10)
    progress.finish(total=10)
    assert seen == ["pulling"] and json.loads(client.hget(keys.job_workers(JOB), WORKER))["state"] == "completed"

    def broken() -> None:
        raise redis.ConnectionError("down")

    other = Progress(client, "job2", WORKER, clock=clock, before_finish=broken)
    other.finish(total=1)
    assert json.loads(client.hget(keys.job_workers("job2"), WORKER))["state"] == "completed"

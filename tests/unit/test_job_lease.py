"""worker_agent.job_runner: the per-job lock is renewed while a job runs, and Redis faults do not lose a result.

Short lock TTLs (a fraction of a second) stand in for the real one; fakeredis expires
keys on the wall clock, as Redis does.
"""

from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import create_job
from worker_agent import job_runner
from worker_agent.catalog import Catalog
from worker_agent.job_runner import JOB_GONE, TAKEN_OVER, JobLease
from worker_agent.ollama_store import OllamaStore
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings

WORKER = "gpu1"
TTL = 0.3


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server, decode_responses=True)


@pytest.fixture
def agent(client, tmp_path) -> Agent:
    settings = AgentSettings.from_env({}, worker_id=WORKER, worker_type="inference", data_dir=tmp_path)
    store = OllamaStore(tmp_path / "models")
    store.ensure()
    return Agent(settings=settings, redis=client, store=store, catalog=Catalog(tmp_path / "catalog"))


@pytest.fixture
def job_id(client) -> str:
    return create_job(client, kind="pull", model="tiny", targets=[WORKER], source="ollama", deadline_seconds=3600)


def stored(client, job_id: str) -> dict:
    raw = client.hget(keys.job_workers(job_id), WORKER)
    return json.loads(raw) if raw else {}


def finishing_after(seconds: float, calls: list[str] | None = None):
    """A job's work: starts, takes `seconds`, finishes."""
    def work(progress: Progress) -> dict:
        if calls is not None:
            calls.append("ran")
        progress.start(total=10)
        time.sleep(seconds)
        progress.finish(total=10)
        return {"done": True}
    return work


def test_a_second_runner_cannot_take_a_job_that_runs_past_the_lock_ttl(agent, client, job_id):
    first: dict = {}
    runner = threading.Thread(target=lambda: first.update(job_runner._run_job(
        agent, job_id, finishing_after(5 * TTL), lock_ttl=TTL)))
    runner.start()
    second_calls: list[str] = []
    seconds: list[dict] = []
    for _ in range(3):  # at 1.5, 2.5 and 3.5 TTLs into the first run
        time.sleep(TTL)
        seconds.append(job_runner._run_job(agent, job_id, finishing_after(0, second_calls), lock_ttl=TTL))
    runner.join()

    assert seconds == [{"skipped": "already running on this worker"}] * 3
    assert second_calls == []
    assert first == {"done": True}
    assert stored(client, job_id)["state"] == jobstate.COMPLETED
    assert not client.exists(keys.job_lock(job_id, WORKER))  # released when the job ended


def test_control_without_renewal_the_short_ttl_lets_a_second_runner_in(client, job_id):
    """Proves the test above can fail: the TTL it uses really ends an unrenewed lock."""
    assert JobLease(client, job_id, WORKER, ttl=TTL).acquire()
    assert not JobLease(client, job_id, WORKER, ttl=TTL).acquire()
    time.sleep(TTL * 1.5)
    assert JobLease(client, job_id, WORKER, ttl=TTL).acquire()


def test_a_lock_redis_lost_is_taken_again_while_the_job_exists(client, job_id):
    lease = JobLease(client, job_id, WORKER, ttl=60)
    assert lease.acquire()
    client.delete(keys.job_lock(job_id, WORKER))  # a restart from a snapshot older than the lock
    lease.renew()
    assert lease.lost is None
    assert client.pttl(keys.job_lock(job_id, WORKER)) > 50_000
    assert not JobLease(client, job_id, WORKER).acquire()


@pytest.mark.parametrize(("fault", "reason"), [
    ("job and lock gone", JOB_GONE),
    ("lock held by another runner", TAKEN_OVER),
])
def test_a_lease_that_cannot_be_kept_says_why_once(client, job_id, fault, reason):
    lost: list[str] = []
    lease = JobLease(client, job_id, WORKER, ttl=60)
    assert lease.acquire()
    if reason == JOB_GONE:
        client.flushall()
    else:
        client.set(keys.job_lock(job_id, WORKER), "someone else")
    lease.keep(on_lost=lost.append)  # renews every 20 s: only the call below runs in the test
    lease.renew()
    assert lease.lost == reason and lost == [reason]
    lease.release()
    if reason == TAKEN_OVER:
        assert client.get(keys.job_lock(job_id, WORKER)) == "someone else"  # not ours to delete


def test_renewal_survives_redis_being_unreachable(server, client, job_id):
    lease = JobLease(client, job_id, WORKER, ttl=60)
    assert lease.acquire()
    server.connected = False
    lease.renew()  # logged, not raised
    server.connected = True
    lease.renew()
    assert lease.lost is None


def test_a_job_redis_lost_mid_run_leaves_no_stray_records(agent, client, job_id):
    def work(progress: Progress) -> dict:
        progress.start(total=10)
        client.flushall()  # Redis restarted empty
        for _ in range(5):
            time.sleep(TTL / 3)
            progress.update(force=True, completed=5)  # written again into an empty Redis, then noticed
        progress.finish(total=10)
        return {"done": True}

    assert job_runner._run_job(agent, job_id, work, lock_ttl=TTL) == {"done": True}
    assert not client.exists(keys.job_workers(job_id), keys.job_states(job_id), keys.job(job_id))
    assert client.hget(keys.worker(WORKER), "inventory_at")  # the inventory was reported again


def test_the_final_state_is_stored_once_redis_answers_again(agent, server, client, job_id):
    def work(progress: Progress) -> dict:
        progress.start(total=10)
        server.connected = False  # Redis unreachable: the last writes are dropped
        progress.finish(total=10)
        threading.Timer(0.5, lambda: setattr(server, "connected", True)).start()
        return {"done": True}

    assert job_runner._run_job(agent, job_id, work, lock_ttl=TTL) == {"done": True}
    record = stored(client, job_id)
    assert record["state"] == jobstate.COMPLETED and record["completed"] == 10
    assert job_id not in client.smembers(keys.worker_jobs(WORKER))


def test_a_failure_is_reported_once_redis_answers_again(agent, server, client, job_id):
    server.connected = False
    threading.Timer(0.5, lambda: setattr(server, "connected", True)).start()
    job_runner.report_failure(agent, job_id, "upstream said no")
    record = stored(client, job_id)
    assert record["state"] == jobstate.FAILED and record["error"] == "upstream said no"


def test_a_failure_of_a_job_redis_lost_writes_nothing(agent, client, job_id):
    client.flushall()
    job_runner.report_failure(agent, job_id, "upstream said no")
    assert client.keys("*") == []


def test_reporting_gives_up_after_its_patience(server):
    server.connected = False
    client = fakeredis.FakeRedis(server=server)
    waits: list[float] = []
    assert not job_runner._with_redis(client.ping, "ping", patience=5, sleep=waits.append)
    assert waits and all(0 < w <= 10 for w in waits)

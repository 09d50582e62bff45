"""bench/fleet_agents.py: the virtual agents read the controller's Celery messages and report like real agents."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import fakeredis
import pytest
from kombu import Connection, Consumer, Exchange, Queue

from bench.fleet_agents import NoCatalog, SimulatedStore, VirtualFleet, decode_task, simulate_pull
from eldric.cluster.dispatch import create_producer, send_to_workers
from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import create_job
from eldric.cluster.queues import TASK_PULL, worker_queue
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings

PROGRESS_SECONDS = AgentSettings.model_fields["progress_seconds"].default


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_controllers_messages_decode_to_the_pull_task_and_its_arguments():
    """What eldric.cluster.dispatch enqueues (kombu's in-memory transport instead of Redis) is read back as sent."""
    producer = create_producer("redis://127.0.0.1:1/0")
    producer.conf.broker_url = "memory://"
    send_to_workers(producer, TASK_PULL, "job-1", ["qwen2.5:0.5b"], ["w00001", "w00002"])
    got = []
    with Connection("memory://") as conn:
        queues = [Queue(worker_queue(w), Exchange(worker_queue(w), type="direct"), routing_key=worker_queue(w))
                  for w in ("w00001", "w00002")]
        with Consumer(conn, queues=queues, accept=["json"],
                      callbacks=[lambda body, message: (got.append(decode_task(message.headers, body)), message.ack())]):
            for _ in range(2):
                conn.drain_events(timeout=2)
    assert got == [(TASK_PULL, ["job-1", "qwen2.5:0.5b"])] * 2


def test_protocol_1_bodies_decode_too_and_anything_else_is_refused():
    assert decode_task({}, {"task": TASK_PULL, "args": ["j", "m"], "kwargs": {}}) == (TASK_PULL, ["j", "m"])
    with pytest.raises(ValueError, match="protocol 2"):
        decode_task({"task": TASK_PULL}, {"args": []})
    with pytest.raises(ValueError, match="not a Celery task"):
        decode_task({}, ["j", "m"])


def test_a_simulated_download_writes_progress_no_faster_than_the_agents_throttle():
    clock = FakeClock()
    writes: list[tuple[float, dict]] = []
    progress = Progress(None, "job-1", "w00001", min_interval=PROGRESS_SECONDS, clock=clock,
                        on_write=lambda record: writes.append((clock(), dict(record))))
    result = simulate_pull(progress, "m:latest", 200_000_000, 100e6, tick=PROGRESS_SECONDS / 4, clock=clock,
                           sleep=clock.sleep)
    assert result["size"] == 200_000_000
    assert clock.now - 1000.0 == pytest.approx(2.0, abs=PROGRESS_SECONDS)  # 200 MB at 100 MB/s
    byte_writes = [at for at, record in writes if record.get("status", "").startswith("pulling ") and record["completed"]]
    assert all(b - a >= PROGRESS_SECONDS for a, b in itertools.pairwise(byte_writes))
    assert len(byte_writes) <= 2.0 / PROGRESS_SECONDS + 1
    assert len(writes) / 2.0 <= 10  # issue 13's goal: at most 10 writes a second per pulling worker
    last = writes[-1][1]
    assert (last["state"], last["completed"], last["total"], last["percent"]) == (jobstate.COMPLETED, 200_000_000,
                                                                                   200_000_000, 100.0)


def test_a_pull_ends_completed_through_the_agents_job_runner_and_lists_the_model(tmp_path: Path):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    settings = AgentSettings.from_env({}, worker_id="w00001", worker_type="inference", data_dir=tmp_path)
    agent = Agent(settings=settings, redis=client, store=SimulatedStore([], tmp_path / "partials"), catalog=NoCatalog())
    job_id = create_job(client, kind="pull", model="m:latest", targets=["w00001"], source="ollama", deadline_seconds=60)
    fleet = VirtualFleet({"w00001": agent}, {"m:latest": 2_000_000}, rate=100e6)
    started = time.monotonic()
    fleet.pull(agent, job_id, "m:latest")
    assert time.monotonic() - started < 5
    record = json.loads(client.hget(keys.job_workers(job_id), "w00001"))
    assert (record["state"], record["completed"], record["status"]) == (jobstate.COMPLETED, 2_000_000, "success")
    assert client.hgetall(keys.job_states(job_id)) == {"pending": "0", "pulling": "0", "completed": "1",
                                                     "+started": "1"}
    assert json.loads(client.hget(keys.worker_models("w00001"), "m:latest"))["size"] == 2_000_000
    assert not client.sismember(keys.worker_jobs("w00001"), job_id)
    assert not client.exists(keys.job_lock(job_id, "w00001"))  # the lease was released


def test_a_model_the_simulated_registry_lacks_fails_the_workers_part(tmp_path: Path):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    settings = AgentSettings.from_env({}, worker_id="w00001", worker_type="inference", data_dir=tmp_path)
    agent = Agent(settings=settings, redis=client, store=SimulatedStore([], tmp_path / "partials"), catalog=NoCatalog())
    job_id = create_job(client, kind="pull", model="x:latest", targets=["w00001"], source="ollama", deadline_seconds=60)
    fleet = VirtualFleet({"w00001": agent}, {}, rate=100e6)
    fleet._run("w00001", message=_Acked(), job_id=job_id, model="x:latest")
    record = json.loads(client.hget(keys.job_workers(job_id), "w00001"))
    assert record["state"] == jobstate.FAILED and "not found in the simulated registry" in record["error"]
    assert fleet.stats.failed == 1 and len(fleet._finished) == 1  # its message is acknowledged next


class _Acked:
    def ack(self) -> None:
        pass

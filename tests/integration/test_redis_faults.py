"""Redis faults while agents pull or idle (issue 11): restarted empty, restarted with its data, unreachable.

Every test restarts the module's own redis-server on its port while one agent is in the
middle of a throttled pull and another agent idles. Before the fix the pulling agent's
Celery consumer died on kombu's restore path ("Unrecoverable error: AttributeError(...
'hostname')"), so it never took another task.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import Service, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

SLOW = 256 << 10  # bytes per second per connection while the fault happens
FAST = 64 << 20
# "Unreachable for a minute" in the issue; 20 s by default keeps CI short and is already longer
# than the agent's heartbeat TTL and Celery's first reconnect attempts (2, 4, 6, 8 s apart).
# REDIS_OUTAGE_SECONDS=60 runs the full minute (the pull then ends while Redis is away).
OUTAGE_SECONDS = float(os.environ.get("REDIS_OUTAGE_SECONDS", "20"))


@pytest.fixture(scope="module")
def slow_registry(oci, workdir):
    gguf = write_gguf_of_size(workdir / "slow.gguf", 24 << 20, name="slow")
    push_ollama_model(oci.url, "library/slow", "latest", gguf_path=gguf)
    proxy = ThrottlingProxy(oci.url, bytes_per_second=SLOW)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def live(cluster, tiny_model, slow_registry):
    # The production default (the suite's 30 s would call a worker silent through a one-minute
    # outage "offline mid-pull" in the instant before its first heartbeat after Redis returns).
    cluster.start_controller(ELDRIC_STALE_WORKER_SECONDS="120")
    cluster.start_worker("idle", "inference")
    return cluster


@pytest.fixture
def dump(redis_server, workdir):
    """The RDB file a restart loads; removed afterwards so later restarts come back empty."""
    path = Path(workdir) / "dump.rdb"
    yield path
    path.unlink(missing_ok=True)


def _record(live, job_id: str, worker: str) -> dict:
    raw = live.redis.hget(f"eldric:job:{job_id}:workers", worker)
    return json.loads(raw) if raw else {}


def _start_slow_pull(live, slow_registry, worker: str) -> tuple[Service, str]:
    slow_registry.rate = SLOW
    # Alone (no fan-out): every test pulls the same blob, which the earlier tests' workers would serve at
    # loopback speed; these tests need a slow upstream download under the fault. (A swarm whose board goes
    # away mid-download goes on alone: tests/unit/test_swarm_download.py.)
    agent = live.start_worker(worker, "inference", ELDRIC_OLLAMA_REGISTRY=slow_registry.url,
                              ELDRIC_DOWNLOAD_PARTS="2", ELDRIC_PART_BYTES=str(2 << 20), ELDRIC_PEER_FANOUT="false")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "slow", "workers": [worker]}).json()
    wait_until(lambda: _record(live, job["id"], worker).get("completed", 0) > 1 << 20, timeout=30,
               message=f"{worker}'s pull to be under way\n{live.logs()}")
    return agent, job["id"]


def _restart_redis(redis_server, down_for: float = 0.0) -> None:
    redis_server.stop()
    time.sleep(down_for)
    redis_server.start()


def _is_online(live, worker: str) -> bool:
    workers = {w["id"]: w for w in live.api("GET", "/api/v1/workers").json()["workers"]}
    return worker in workers and workers[worker]["online"]


def _inventory(live, worker: str) -> list[str]:
    return [m["name"] for m in live.api("GET", f"/api/v1/workers/{worker}/models").json()["models"]]


def _assert_agents_survived(live, *workers: str) -> None:
    """Each agent process is up, registered, and its consumer takes and finishes a new job."""
    for worker in workers:
        agent = live.workers[worker]
        assert agent.running, agent.log_tail()
        assert "Unrecoverable error" not in agent.log_path.read_text(errors="replace"), agent.log_tail()
        wait_until(lambda w=worker: _is_online(live, w), timeout=30, message=f"{worker} to re-register\n{live.logs()}")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": list(workers)}).json()
    final = live.wait_job(job["id"], timeout=60)
    assert final["state"] == "completed", json.dumps(final, indent=1)


def test_redis_restarted_empty_mid_pull_loses_the_job_but_not_the_agents(live, redis_server, slow_registry):
    agent, job_id = _start_slow_pull(live, slow_registry, "amnesia")
    _restart_redis(redis_server)  # no persistence: the job, the queues and the registrations are gone
    slow_registry.rate = FAST

    # The pull goes on without anyone to report to; the model lands and is reported in the inventory.
    wait_until(lambda: "slow:latest" in _inventory(live, "amnesia"), timeout=60,
               message=f"the pulled model in amnesia's inventory\n{agent.log_tail()}")
    assert live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").status_code == 404
    # Progress written after the restart does not linger as records of a job nobody knows.
    assert not live.redis.exists(f"eldric:job:{job_id}:workers", f"eldric:job:{job_id}:states")
    assert "the job is gone from Redis" in agent.log_path.read_text(errors="replace")
    _assert_agents_survived(live, "amnesia", "idle")


def test_redis_restarted_with_its_data_mid_pull_completes_the_job(live, redis_server, slow_registry, dump):
    _, job_id = _start_slow_pull(live, slow_registry, "snapshot")
    live.redis.save()  # what an RDB/AOF-persisted Redis comes back with
    _restart_redis(redis_server)
    assert live.redis.exists(f"eldric:job:{job_id}")
    slow_registry.rate = FAST

    final = live.wait_job(job_id, timeout=60)
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert "slow:latest" in _inventory(live, "snapshot")
    # The task's late acknowledgement reached Redis after the reconnect: nothing left to redeliver.
    wait_until(lambda: live.redis.hlen("unacked") == 0, timeout=20, message="the unacked set to empty")
    _assert_agents_survived(live, "snapshot", "idle")


def test_redis_unreachable_mid_pull_the_pull_goes_on_and_completes(live, redis_server, slow_registry, dump):
    _, job_id = _start_slow_pull(live, slow_registry, "patient")
    live.redis.save()
    served_before = slow_registry.bytes_served
    _restart_redis(redis_server, down_for=OUTAGE_SECONDS)
    # The download did not wait for Redis: bytes kept flowing while it was away.
    assert slow_registry.bytes_served - served_before > OUTAGE_SECONDS * SLOW // 2
    slow_registry.rate = FAST

    final = live.wait_job(job_id, timeout=90)
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert final["workers"][0]["completed"] == final["workers"][0]["total"] > 0
    assert "slow:latest" in _inventory(live, "patient")
    _assert_agents_survived(live, "patient", "idle")


def test_redis_hanging_mid_pull_the_pull_goes_on_and_completes(live, redis_server, slow_registry):
    """A Redis that stops answering without closing its sockets (a network partition, a frozen host)."""
    _, job_id = _start_slow_pull(live, slow_registry, "frozen")
    served_before = slow_registry.bytes_served
    os.killpg(redis_server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(OUTAGE_SECONDS)
        served_during = slow_registry.bytes_served - served_before
    finally:
        os.killpg(redis_server.proc.pid, signal.SIGCONT)
    assert served_during > OUTAGE_SECONDS * SLOW // 2
    slow_registry.rate = FAST

    final = live.wait_job(job_id, timeout=90)
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert "slow:latest" in _inventory(live, "frozen")
    _assert_agents_survived(live, "frozen", "idle")

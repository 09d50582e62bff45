"""Redis failover under a pull (issue 13): master + replica + three sentinels, the master SIGKILLed mid-pull.

Everything (controller, agent, beat, Flower) gets `ELDRIC_REDIS_URL=sentinel://…?master=eldric`. The master
dies while the agent downloads a throttled model; the sentinels promote the replica (down after
1 s), every client finds the new master through them, and the pull ends completed with its job
record, its bytes and its Celery message accounted for.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis as redis_lib

from eldric.cluster.redisconn import redis_client
from eldric.cluster.schedules import REDBEAT_PREFIX
from tests.integration.conftest import Cluster
from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import Service, eldric, free_port, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-sentinel") is None,
                       reason="needs redis-sentinel (Debian package redis-sentinel; scripts/install-deps.sh installs it)"),
]

MASTER = "eldric"
FLOWER_AUTH = ("ops", "flower-pw")


def redis_node(root: Path, name: str, port: int, *extra: str) -> Service:
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    return Service(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                          "--appendonly", "yes", "--save", "", *extra], root).start()


def sentinel_node(root: Path, name: str, port: int, master_port: int) -> Service:
    conf = root / f"{name}.conf"  # sentinels rewrite their config file: one writable file each
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {root}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 5000\n")
    return Service(name, ["redis-sentinel", str(conf)], root).start()


class Group:
    """One master, one replica, three sentinels on loopback."""

    def __init__(self, root: Path) -> None:
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.master = redis_node(root, "redis-master", self.master_port)
        wait_until(redis_lib.Redis(port=self.master_port).ping, timeout=10, message="master to answer")
        self.replica = redis_node(root, "redis-replica", self.replica_port,
                                  "--replicaof", "127.0.0.1", str(self.master_port))
        self.sentinels = [sentinel_node(root, f"sentinel-{p}", p, self.master_port) for p in self.sentinel_ports]
        self.url = ("sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/0?master={MASTER}")

    def master_port_now(self) -> int:
        return int(redis_lib.Redis(port=self.sentinel_ports[0], socket_timeout=2)
                   .sentinel_get_master_addr_by_name(MASTER)[1])

    def wait_ready(self) -> None:
        replica = redis_lib.Redis(port=self.replica_port, decode_responses=True)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", timeout=15,
                   message="replica to sync")

        def sentinels_see_everything() -> bool:
            for port in self.sentinel_ports:
                fields = redis_lib.Redis(port=port, decode_responses=True, socket_timeout=2).sentinel_master(MASTER)
                if int(fields["num-other-sentinels"]) < 2 or int(fields["num-slaves"]) < 1:
                    return False
            return True
        wait_until(sentinels_see_everything, timeout=20, interval=0.2, message="sentinels to find each other")

    def stop(self) -> None:
        for svc in (*self.sentinels, self.replica, self.master):
            svc.stop()


@pytest.fixture(scope="module")
def group(workdir):
    g = Group(workdir / "sentinel")
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def failover_cluster(workdir, group, oci):
    class AtMaster:  # Cluster reads `.url` once, for its own client; ours is replaced below
        url = f"redis://127.0.0.1:{group.master_port}/0"
    c = Cluster(workdir, AtMaster(), oci)
    c.redis = redis_client(group.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
    yield c
    c.stop()


def test_a_pull_completes_after_the_master_dies_mid_pull(failover_cluster, group, oci, workdir):
    started = time.monotonic()
    live = failover_cluster
    gguf = write_gguf_of_size(workdir / "failover.gguf", 16 << 20, name="failover")
    pushed = push_ollama_model(oci.url, "library/failover", "latest", gguf_path=gguf)
    blob_size = gguf.stat().st_size
    proxy = ThrottlingProxy(oci.url, bytes_per_second=512 << 10)  # 4 parts of 4 MiB: about 8 s
    try:
        env = {"ELDRIC_REDIS_URL": group.url, "ELDRIC_OLLAMA_REGISTRY": proxy.url, "ELDRIC_PART_BYTES": str(4 << 20)}
        live.start_controller(**env)
        live.start_worker("steady", "inference", **env)
        beat = Service("beat", eldric("beat"), live.root, env=live.env(
            **env, ELDRIC_INVENTORY_SYNC_SECONDS="1", ELDRIC_BEAT_LOCK_SECONDS="10")).start()
        flower_port = free_port()
        flower = Service("flower", eldric("flower", "--port", str(flower_port)), live.root,
                         env=live.env(**env, FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH))).start()
        live.services += [beat, flower]
        flower_workers = f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"

        def flower_sees_the_agent() -> bool:
            return "steady@eldric" in live.http.get(flower_workers, auth=FLOWER_AUTH, timeout=10).json()
        wait_until(flower_sees_the_agent, timeout=30, interval=0.5, message=f"flower to see the agent\n{flower.log_tail()}")
        wait_until(lambda: "Sending due task" in beat.log_tail(200), timeout=20, message=f"beat\n{beat.log_tail()}")
        job = live.api("POST", "/api/v1/models/pull", json={"model": "failover", "workers": ["steady"]}).json()

        def progress() -> int:
            row = next(w for w in live.api("GET", f"/api/v1/models/pull-jobs/{job['id']}").json()["workers"])
            return row["completed"] if row["state"] == "pulling" else 0
        at_kill = wait_until(lambda: (done := progress()) > blob_size * 0.2 and done, timeout=30, interval=0.1,
                             message="a fifth of the blob")
        group.master.kill()  # SIGKILL: no shutdown, no final AOF rewrite
        assert at_kill < blob_size * 0.8, "the pull must still have most of its bytes to go"
        killed_at = time.monotonic()
        wait_until(lambda: group.master_port_now() == group.replica_port, timeout=20, interval=0.2,
                   message="the sentinels to promote the replica")
        failover_seconds = time.monotonic() - killed_at
        beat_sent_at_failover = beat.log_tail(100000).count("Sending due task")

        final = live.wait_job(job["id"], timeout=60)
        assert final["state"] == "completed", json.dumps(final, indent=1)
        assert [w["state"] for w in final["workers"]] == ["completed"]
        model_digest = pushed["layers"]["application/vnd.ollama.image.model"]
        blob = live.store("steady") / "blobs" / model_digest.replace(":", "-")
        assert blob.read_bytes() == gguf.read_bytes()
        # The record is on the new master, read through the controller like any job.
        listed = live.api("GET", "/api/v1/models/pull-jobs").json()
        assert job["id"] in json.dumps(listed)
        # The task's message was acknowledged on the new master: nothing waits to be redelivered.
        wait_until(lambda: live.redis.hlen("unacked") == 0, timeout=15, message="the late ack")
        # The agent still takes work after the failover.
        again = live.api("POST", "/api/v1/models/pull", json={"model": "failover", "workers": ["steady"]}).json()
        assert live.wait_job(again["id"], timeout=30)["state"] == "completed"
        # Beat goes on scheduling (its RedBeat lock now on the new master) and Flower still sees the agent.
        wait_until(lambda: beat.log_tail(100000).count("Sending due task") > beat_sent_at_failover + 2, timeout=15,
                   message=f"beat to schedule after the failover\n{beat.log_tail()}")
        assert beat.running and live.redis.exists(f"{REDBEAT_PREFIX}:lock")
        wait_until(flower_sees_the_agent, timeout=30, interval=0.5,
                   message=f"flower to see the agent after the failover\n{flower.log_tail()}")
        queues = live.http.get(f"http://127.0.0.1:{flower_port}/api/queues/length", auth=FLOWER_AUTH, timeout=10)
        assert queues.status_code == 200, queues.text  # Flower's broker view asks the sentinels too
        print(f"master killed at {at_kill / blob_size:.0%}; failover in {failover_seconds:.1f} s; test {time.monotonic() - started:.1f} s")
    finally:
        proxy.close()

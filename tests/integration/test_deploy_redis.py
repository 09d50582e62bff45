"""deploy/redis/: the production Redis files start real servers and a real sentinel that agree.

Each file is used as written, with only what differs on loopback overridden on the command line
(ports, the data directory, and the master's address: the files name redis-1.cluster.local).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis as redis_lib

from eldric.cluster.redisconn import redis_client
from testbed.processes import Service, free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-sentinel") is None, reason="needs redis-sentinel (scripts/install-deps.sh)"),
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "redis"


def test_master_replica_and_sentinel_from_the_deploy_files(tmp_path: Path) -> None:
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    for name in ("master", "replica"):
        (tmp_path / name).mkdir()
    sentinel_conf = tmp_path / "sentinel.conf"  # sentinel rewrites its file: a copy, with the master's address
    sentinel_conf.write_text((DEPLOY / "sentinel.conf").read_text().replace(
        "sentinel monitor eldric redis-1.cluster.local 6379 2", f"sentinel monitor eldric 127.0.0.1 {master_port} 1"))
    services = [
        Service("master", ["redis-server", str(DEPLOY / "redis.conf"), "--port", str(master_port),
                           "--bind", "127.0.0.1", "--dir", str(tmp_path / "master")], tmp_path),
        Service("replica", ["redis-server", str(DEPLOY / "replica.conf"), "--port", str(replica_port),
                            "--bind", "127.0.0.1", "--dir", str(tmp_path / "replica"),
                            "--replicaof", "127.0.0.1", str(master_port)], tmp_path),
        Service("sentinel", ["redis-sentinel", str(sentinel_conf), "--port", str(sentinel_port),
                             "--bind", "127.0.0.1"], tmp_path),
    ]
    try:
        for svc in services:
            svc.start()
        master = redis_lib.Redis(port=master_port, decode_responses=True)
        wait_until(master.ping, message=services[0].log_tail())
        assert master.config_get("appendonly") == {"appendonly": "yes"}
        assert master.config_get("appendfsync") == {"appendfsync": "everysec"}
        wait_until(lambda: master.info("replication")["connected_slaves"] == 1, timeout=20,
                   message=services[1].log_tail())
        # What every Eldric process does with ELDRIC_REDIS_URL=sentinel://…?master=eldric:
        client = redis_client(f"sentinel://127.0.0.1:{sentinel_port}/0?master=eldric")
        wait_until(client.ping, timeout=20, message=services[2].log_tail())
        client.set("eldric:deploy-check", "1")
        assert master.get("eldric:deploy-check") == "1"
        replica = redis_lib.Redis(port=replica_port, decode_responses=True)
        wait_until(lambda: replica.get("eldric:deploy-check") == "1", timeout=10)
    finally:
        for svc in reversed(services):
            svc.stop()

"""The agent's HTTP server: gunicorn in a child process on a socket the agent bound, tied to the agent's life."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
from pathlib import Path

import pytest

from testbed.processes import wait_until

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def refuses(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def put_blob(store: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def test_blobs_go_out_from_gunicorn_with_ranges_and_the_server_restarts_after_a_crash(cluster):
    svc = cluster.start_worker("http-a")
    address = cluster.redis.hget("eldric:worker:http-a", "address")
    assert address and not address.endswith(":0"), "port 0 resolves to the port the agent bound"
    health = cluster.http.get(f"{address}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["worker"] == "http-a"
    assert "gunicorn" in health.headers.get("Server", "")

    data = os.urandom(3 << 20)
    digest = put_blob(cluster.store("http-a"), data)
    whole = cluster.http.get(f"{address}/blobs/{digest}", timeout=10)
    assert whole.status_code == 200 and whole.content == data
    part = cluster.http.get(f"{address}/blobs/{digest}", headers={"Range": "bytes=1048576-"}, timeout=10)
    assert part.status_code == 206 and part.content == data[1 << 20:]
    assert part.headers["Content-Range"] == f"bytes 1048576-{len(data) - 1}/{len(data)}"
    bad = cluster.http.get(f"{address}/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert bad.status_code == 416

    # The server process crashes: the agent starts a new one on the same socket.
    [server] = children_of(svc.proc.pid)
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: children_of(svc.proc.pid) not in ([], [server]), timeout=15,
               message=f"a new HTTP server process\n{svc.log_tail()}")
    wait_until(lambda: cluster.http.get(f"{address}/healthz", timeout=2).ok, timeout=20,
               message=f"the agent's HTTP server back\n{svc.log_tail()}")
    assert "restarting it" in svc.log_tail()


def test_a_sigkilled_agent_leaves_no_server_holding_its_port(cluster):
    svc = cluster.start_worker("http-b")
    address = cluster.redis.hget("eldric:worker:http-b", "address")
    wait_until(lambda: cluster.http.get(f"{address}/healthz", timeout=2).ok, timeout=20, message="agent HTTP")
    os.kill(svc.proc.pid, signal.SIGKILL)  # the agent only, not its process group
    svc.proc.wait(10)
    wait_until(lambda: refuses(address), timeout=30, message=f"{address} released after the agent died")

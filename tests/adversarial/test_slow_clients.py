"""Issue 21, finding 4: slow clients (slowloris) must not lock out an agent or the data node.

The attacker opens many unauthenticated connections from 127.0.0.1 and sends one header line every
two seconds, never ending the head (the attack of the issue sent one every 5 s). Meanwhile clients
from the same address must be answered: `/healthz` on both services within 2 s, a peer's ranged
`/blobs` request to the agent with the cluster secret, and a burst of ranged requests like a peer's
fan-out download opens (ELDRIC_DOWNLOAD_PARTS connections at once).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from eldric.transfer.model_registry import API_PREFIX
from tests.integration.conftest import REPO_ROOT
from testbed.processes import Service, eldric, free_port, session, wait_until
from testbed.slow_clients import Slowloris, timed_get

pytestmark = pytest.mark.integration

SECRET = "slow-clients-secret"
ATTACKERS = 64  # more than either server's threads (agent 16, registry 32)
LINE_EVERY = 2.0
FANOUT_PARTS = 8  # ELDRIC_DOWNLOAD_PARTS' default: ranges a peer fetches from one agent at once


def start_data_node(cluster, name: str, **env: str) -> str:
    port = free_port()
    svc = Service(name, eldric("registry", "--port", str(port), "--storage", str(cluster.root / name), "--min-free", "0",
                               "--upstream", "none"), cluster.root, env=cluster.env(**env), cwd=REPO_ROOT).start()
    cluster.services.append(svc)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=20, message=f"{name}\n{svc.log_tail()}")
    return url


def test_slowloris_locks_out_neither_the_agent_nor_the_data_node(cluster):
    env = {"ELDRIC_CLUSTER_SECRET": SECRET}
    cluster.start_worker("slow-agent", **env)
    agent = cluster.redis.hget("eldric:worker:slow-agent", "address")
    data_node = start_data_node(cluster, "slow-registry", **env)
    rport = int(data_node.rsplit(":", 1)[1])

    data = os.urandom(4 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = cluster.store("slow-agent") / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest.replace(":", "-")).write_bytes(data)
    peer = {"Authorization": f"Bearer {SECRET}"}
    part = 1 << 19

    def ranged(i: int) -> tuple[int, float, bytes]:
        return timed_get(f"{agent}/blobs/{digest}", timeout=5,
                         headers={**peer, "Range": f"bytes={i * part}-{(i + 1) * part - 1}"})

    with Slowloris(int(agent.rsplit(":", 1)[1]), ATTACKERS, LINE_EVERY) as at_agent, \
            Slowloris(rport, ATTACKERS, LINE_EVERY) as at_registry:
        time.sleep(LINE_EVERY + 1)  # every attacking connection has sent a header line or two
        for _ in range(3):  # over several of the attacker's header intervals
            for name, url in (("agent", agent), ("data node", data_node)):
                status, took, _ = timed_get(f"{url}/healthz")
                assert status == 200, f"{name} /healthz did not answer within 2 s under slowloris ({took:.1f} s)"
            status, took, body = ranged(2)
            assert (status, body) == (206, data[2 * part:3 * part]), f"a peer's range request: {status} after {took:.1f} s"
            status, took, _ = timed_get(f"{data_node}{API_PREFIX}", headers=peer)
            assert status == 200, f"an authenticated data-node request: {status} after {took:.1f} s"
            time.sleep(1)
        with ThreadPoolExecutor(FANOUT_PARTS) as pool:  # a peer's fan-out download: many ranges at once
            results = list(pool.map(ranged, range(FANOUT_PARTS)))
        assert [(s, b) for s, _, b in results] == [(206, data[i * part:(i + 1) * part]) for i in range(FANOUT_PARTS)], \
            [(s, round(t, 1)) for s, t, _ in results]
        assert max(t for _, t, _ in results) < 5
    # The servers cut connections whose head never ends instead of holding them for the attacker.
    assert at_agent.cut > 0 and at_registry.cut > 0, (at_agent.cut, at_registry.cut)


def paced_upload(url: str, name: str, size: int, chunk: int, every: float, stop_after: int | None = None) -> tuple[int, float, str]:
    """POST a single-file model of `size` bytes, `chunk` bytes every `every` s (none after `stop_after` bytes).

    Returns (status, seconds until the answer, answer body); status 0 when the connection broke without one.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST {API_PREFIX}/upload?name={name}&filename=f.bin&format=other HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {SECRET}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n").encode())
    started = time.monotonic()

    def send() -> None:
        sent = 0
        try:
            while sent < min(size, stop_after if stop_after is not None else size):
                sock.sendall(b"\0" * chunk)
                sent += chunk
                time.sleep(every)
        except OSError:
            pass  # the server answered and closed

    threading.Thread(target=send, daemon=True).start()
    answer = b""
    try:
        while data := sock.recv(65536):
            answer += data
    except OSError:
        pass
    took = time.monotonic() - started
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head else 0), took, body.decode(errors="replace")


def test_a_stalled_or_trickling_body_is_cut_and_a_progressing_one_completes(cluster):
    url = start_data_node(cluster, "body-reg", ELDRIC_CLUSTER_SECRET=SECRET,
                          ELDRIC_HTTP_BODY_IDLE_SECONDS="1", ELDRIC_HTTP_BODY_MIN_RATE="64K")
    size = 512 << 10
    # Above the minimum rate (160 KiB/s against 64 KiB/s), with pauses shorter than the idle limit: stored.
    status, took, body = paced_upload(url, "progressing", size, 32 << 10, 0.2)
    assert status == 201, (status, body)
    # Stalled after 4 KiB, and trickling at 16 KiB/s: both cut, well before they would have ended.
    stalled = paced_upload(url, "stalled", size, 4 << 10, 0.1, stop_after=4 << 10)
    trickling = paced_upload(url, "trickling", size, 4 << 10, 0.25)
    for name, (status, took, body) in (("stalled", stalled), ("trickling", trickling)):
        assert status == 400 and "slower than 65536 bytes/s" in body and took < 4, (name, status, round(took, 1), body)
    listed = session().get(f"{url}{API_PREFIX}", headers={"Authorization": f"Bearer {SECRET}"}, timeout=5).json()
    assert sorted(m["name"] for m in listed["models"]) == ["progressing"]


def test_an_https_client_of_the_plain_http_data_node_hears_so_at_once(cluster):
    """A TLS ClientHello is no HTTP head: it is answered at once (gunicorn's 400), not after
    ELDRIC_HTTP_HEAD_SECONDS, so the agents' hint names the mirror setting (before this: 'cannot reach
    … timed out', retried for ~30 s)."""
    from eldric.core.names import ModelName
    from eldric.transfer.errors import SourceError
    from eldric.transfer.upstreams import AddressPolicy
    from worker_agent.sources import RegistrySource, registry_hints

    data_node = start_data_node(cluster, "tls-mismatch-registry")
    where = data_node.removeprefix("http://")
    name = ModelName.parse("library/m:1")
    source = RegistrySource(f"https://{where}", policy=AddressPolicy.parse(("127.0.0.0/8",)),
                            hints=registry_hints(name, f"https://{where}"))
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        source.fetch_manifest(name)
    assert time.monotonic() - started < 3
    assert str(info.value) == f"{where} speaks plain http, not https; set ELDRIC_OLLAMA_REGISTRY to http://{where}"

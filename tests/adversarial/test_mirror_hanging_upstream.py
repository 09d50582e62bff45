"""Issue 21, finding 10: an upstream that accepts connections and never answers must not slow cached pulls.

Before: the data node asked upstream again for a tag past its TTL with a 60 s read timeout and the
agents waited 60 s for the manifest too, so a cached 12 MiB model took 121-183 s to pull through the
data node. Now a tag refresh waits `--upstream-timeout` (default 5 s) and the cached manifest is served.
The upstream here is docker-registry behind a TCP relay that, once told to hang, passes nothing more.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import MANIFEST_V2, push_ollama_model
from testbed.processes import REPO_ROOT, Service, eldric, free_port, session, wait_until

pytestmark = pytest.mark.integration

MB = 1 << 20


class HangingRelay:
    """A TCP relay to `target_port`; after `hang()` it accepts and reads but never forwards a byte again."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.hanging = target_port, threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self.hanging.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self._open.append(client)
            if self.hanging.is_set():
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            target = socket.create_connection(("127.0.0.1", self.target_port))
            self._open.append(target)
            threading.Thread(target=self._pump, args=(client, target), daemon=True).start()
            threading.Thread(target=self._pump, args=(target, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(1 << 16):
                if dst is not None and not self.hanging.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for s in self._open:
            s.close()


@pytest.fixture(scope="module")
def model(oci, workdir) -> dict:
    gguf = write_gguf_of_size(workdir / "hang12.gguf", 12 * MB, name="hang12")
    return push_ollama_model(oci.url, "library/hang12", "latest", gguf_path=gguf)


@pytest.fixture(scope="module")
def setup(cluster, oci, model):
    relay = HangingRelay(int(oci.url.rsplit(":", 1)[1]))
    port = free_port()
    env = cluster.env(ELDRIC_MIRROR_UPSTREAM=relay.url, ELDRIC_MIRROR_TAG_TTL="1s")
    node = Service("hang-data-node", eldric("registry", "--port", str(port), "--storage",
                                            str(cluster.root / "hang-data"), "--min-free", "0"),
                   cluster.root, env=env, cwd=REPO_ROOT).start()
    cluster.services.append(node)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=30,
               message=f"the data node\n{node.log_tail()}")
    cluster.start_controller(ELDRIC_OLLAMA_REGISTRY=url)
    for name in ("hang-a", "hang-b"):
        cluster.start_worker(name, ELDRIC_OLLAMA_REGISTRY=url)
    yield {"url": url, "relay": relay, "node": node}
    relay.close()


def pull(cluster, worker: str, timeout: float) -> dict:
    resp = cluster.api("POST", "/api/v1/models/pull", json={"model": "hang12", "workers": [worker]})
    assert resp.status_code == 202, resp.text
    return cluster.wait_job(resp.json()["id"], timeout=timeout)


def test_a_cached_model_pulls_in_seconds_while_upstream_hangs(cluster, setup, model):
    assert pull(cluster, "hang-a", 60)["state"] == "completed", cluster.logs()  # cached on the data node
    setup["relay"].hang()
    time.sleep(1.5)  # past the tag TTL: the next request asks upstream again

    started = time.monotonic()
    got = session().get(f"{setup['url']}/v2/library/hang12/manifests/latest", headers={"Accept": MANIFEST_V2},
                        timeout=120)
    served_in = time.monotonic() - started
    assert got.status_code == 200 and got.content == model["manifest_bytes"]
    assert served_in < 8, f"the cached manifest took {served_in:.1f} s"

    time.sleep(1.5)
    started = time.monotonic()
    job = pull(cluster, "hang-b", 30)
    took = time.monotonic() - started
    assert job["state"] == "completed", cluster.logs()
    assert took < 15, f"the cached pull took {took:.1f} s"
    assert "serving cached library/hang12:latest" in setup["node"].log_tail(200)

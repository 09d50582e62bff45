"""Issue 21, finding 6: a peer that answers 206 and then trickles one byte every 4 s.

The attacker has the board's Redis access: it registers a worker address and announces itself on
a blob's swarm board as the holder of every range (with the ranges' true sha256, so nothing it
says is caught as a lie). Each byte comes well within the peers' 10 s read timeout, so only an
overall deadline and a minimum rate stop it. The pull must drop it for the blob, say so in the
worker's record, and fetch the ranges elsewhere (upstream here) in about the time upstream takes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from eldric.cluster import keys
from eldric.transfer.swarm import range_bytes_for
from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import blob_data_path, push_ollama_model
from tests.support.scripted_server import ScriptedServer

pytestmark = pytest.mark.integration

MIB = 1 << 20
MT_MODEL = "application/vnd.ollama.image.model"
TRICKLE_SECONDS = 4.0
BASE_SECONDS = 2  # ELDRIC_PEER_RANGE_BASE_SECONDS for this test: the peer is judged after 2 s


class TricklingPeer:
    """An agent's blob endpoint that answers any range with 206 and then one byte every 4 s."""

    def __init__(self, data: bytes, protocol: str) -> None:
        self.data, self.protocol, self.requests = data, protocol, 0
        self.stopped = threading.Event()
        self.server = ScriptedServer("127.0.0.1", self._answer)
        self.url = self.server.url

    def _answer(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        self.requests += 1
        start, end = (int(x) for x in handler.headers["Range"].removeprefix("bytes=").split("-"))
        handler.protocol_version = self.protocol  # 1.1: a keep-alive answer; 1.0: http.client detaches the socket
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{len(self.data)}")
        handler.send_header("Content-Length", str(end + 1 - start))
        handler.end_headers()
        for pos in range(start, end + 1):  # until the receiver gives up on us (a broken pipe ends it)
            handler.wfile.write(self.data[pos:pos + 1])
            handler.wfile.flush()
            if self.stopped.wait(TRICKLE_SECONDS):
                return

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


@pytest.fixture(scope="module")
def live(cluster):
    cluster.start_controller()
    cluster.start_worker("victim", ELDRIC_PEER_RANGE_BASE_SECONDS=str(BASE_SECONDS))
    return cluster


def announce(live, peer: TricklingPeer, name: str, digest: str, data: bytes) -> int:
    """What a hostile agent can write with the board's Redis access: an address and every range, held."""
    live.redis.hset(keys.worker(name), mapping={"id": name, "address": peer.url})
    range_bytes = range_bytes_for(len(data))
    live.redis.hset(keys.swarm(digest, "meta"), mapping={"size": len(data), "range_bytes": range_bytes})
    ranges = range(-(-len(data) // range_bytes))
    live.redis.hset(keys.swarm(digest, "sha"), mapping={
        i: hashlib.sha256(data[i * range_bytes:(i + 1) * range_bytes]).hexdigest() for i in ranges})
    live.redis.hset(keys.swarm(digest, "holders"), mapping={i: name for i in ranges})
    return len(ranges)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/1.0"])
def test_a_trickling_peer_is_dropped_and_the_pull_finishes_from_upstream(live, oci, workdir, protocol):
    model = "trickle" + protocol[-1]  # a blob (and swarm board) of its own per case
    gguf = write_gguf_of_size(workdir / f"{model}.gguf", 8 * MIB, name=model)
    pushed = push_ollama_model(oci.url, f"library/{model}", "latest", gguf_path=gguf)
    digest = pushed["layers"][MT_MODEL]
    data = blob_data_path(oci.root, digest).read_bytes()
    peer = TricklingPeer(data, protocol)
    try:
        assert announce(live, peer, "mallory", digest, data) >= 2
        started = time.monotonic()
        job = live.api("POST", "/api/v1/models/pull", json={"model": model, "workers": ["victim"]}).json()
        final = live.wait_job(job["id"], timeout=30)
        took = time.monotonic() - started
    finally:
        peer.close()

    rec = final["workers"][0]
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert peer.requests >= 1, "the pull never asked the hostile peer: the test proves nothing"
    assert "mallory" in (rec.get("bad_peers") or {}), rec
    assert "slow" in rec["bad_peers"]["mallory"], rec
    # Judged after BASE_SECONDS (plus at most one 4 s trickle before the check), then upstream at loopback speed.
    assert took < BASE_SECONDS + TRICKLE_SECONDS + 10, f"{took:.1f} s"
    blob = live.store("victim") / "blobs" / digest.replace(":", "-")
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest.removeprefix("sha256:")
    assert rec["peer_bytes"] == 0 and rec["upstream_bytes"] >= len(data), rec  # the whole blob came from upstream

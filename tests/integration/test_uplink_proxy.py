"""The shared uplink (testbed/uplink.py): its token bucket on a fake clock, then the proxy in front of a
real docker-registry: one rate for all connections, exact byte counts."""

from __future__ import annotations

import os
import threading
import time

import pytest

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import MANIFEST_V2, OCIRegistry, push_blob, push_ollama_model
from testbed.processes import session
from testbed.uplink import CHUNK, SharedBucket, UplinkProxy

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_a_fresh_bucket_sends_one_burst_at_once_then_paces_at_the_rate():
    bucket = SharedBucket(10 * CHUNK, burst=CHUNK)
    assert bucket.reserve(CHUNK, now=100.0) == pytest.approx(100.0)
    assert bucket.reserve(CHUNK, now=100.0) == pytest.approx(100.1)
    assert bucket.reserve(CHUNK, now=100.0) == pytest.approx(100.2)


def test_backlogged_connections_share_the_rate_and_never_exceed_it():
    """Four connections each re-reserve as soon as their slot comes: the sum stays at the rate."""
    rate = 20 * CHUNK
    bucket = SharedBucket(rate, burst=CHUNK)
    slots = {c: 0.0 for c in range(4)}
    sent = {c: 0 for c in range(4)}
    for _ in range(400):
        conn = min(slots, key=slots.get)  # the connection whose turn comes first asks next
        slots[conn] = bucket.reserve(CHUNK, now=slots[conn])
        sent[conn] += CHUNK
    end = max(slots.values())
    assert sum(sent.values()) <= rate * end + CHUNK
    assert sum(sent.values()) == pytest.approx(rate * end + CHUNK, rel=0.01)
    assert max(sent.values()) - min(sent.values()) <= 2 * CHUNK  # the burst goes to whoever asks first


def test_idle_time_is_not_saved_up_beyond_the_burst():
    bucket = SharedBucket(CHUNK, burst=CHUNK)
    bucket.reserve(CHUNK, now=0.0)
    assert bucket.reserve(CHUNK, now=60.0) == pytest.approx(60.0)
    assert bucket.reserve(CHUNK, now=60.0) == pytest.approx(61.0)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        SharedBucket(0)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with OCIRegistry(tmp_path_factory.mktemp("uplink") / "oci") as reg:
        yield reg


@pytest.fixture(scope="module")
def blob(upstream):
    data = os.urandom(6 * MIB + 12345)
    return push_blob(upstream.url, "library/blob", data), data


def test_four_connections_together_get_the_cap_within_5_percent_and_take_turns(upstream, blob):
    digest, data = blob
    rate = 8 * MIB
    path = f"/v2/library/blob/blobs/{digest}"
    with UplinkProxy(upstream.url, rate) as proxy:
        done: dict[int, float] = {}
        bodies: dict[int, bytes] = {}

        def fetch(i: int) -> None:
            with session() as http:
                bodies[i] = http.get(proxy.url + path, timeout=60).content
            done[i] = time.monotonic()

        start = time.monotonic()
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = max(done.values()) - start
        total = 4 * len(data)
        assert all(bodies[i] == data for i in range(4))
        assert proxy.total_bytes == total and proxy.bytes_by_path() == {path: total}
        expected = (total - CHUNK) / rate  # the bucket lets one chunk through at once
        # Never faster than the cap allows (within 5 %); slower only by what a loaded machine costs (seen: +6 %
        # with the suite's two processes and seven helpers' tests on the 2 cores).
        assert -0.05 < (elapsed - expected) / expected < 0.15, (elapsed, expected)
        # Shared fairly: nobody finishes long before the others.
        assert min(done.values()) - start > 0.85 * elapsed


def test_counts_are_exact_per_path_for_ranges_heads_and_manifests_and_reset_clears_them(upstream, blob, tmp_path):
    digest, data = blob
    pushed = push_ollama_model(upstream.url, "library/tiny", "latest", gguf_path=write_llama_gguf(tmp_path / "t.gguf"))
    blob_path = f"/v2/library/blob/blobs/{digest}"
    manifest_path = "/v2/library/tiny/manifests/latest"
    with UplinkProxy(upstream.url, 64 * MIB) as proxy, session() as http:
        r = http.get(proxy.url + blob_path, headers={"Range": "bytes=1000-2999999"}, timeout=30)
        assert r.status_code == 206 and r.content == data[1000:3000000]
        assert r.headers["Content-Range"] == f"bytes 1000-2999999/{len(data)}"
        r = http.head(proxy.url + blob_path, timeout=30)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
        assert r.headers["Docker-Content-Digest"] == digest
        r = http.get(proxy.url + manifest_path, headers={"Accept": MANIFEST_V2}, timeout=30)
        assert r.status_code == 200 and r.content == pushed["manifest_bytes"]
        r = http.get(proxy.url + "/v2/library/nope/manifests/latest", headers={"Accept": MANIFEST_V2}, timeout=30)
        assert r.status_code == 404 and b"MANIFEST_UNKNOWN" in r.content
        by_path = proxy.bytes_by_path()
        assert by_path[blob_path] == 3000000 - 1000
        assert by_path[manifest_path] == len(pushed["manifest_bytes"])
        assert proxy.total_bytes == sum(by_path.values())
        assert ("HEAD", blob_path, None) in proxy.requests
        assert ("GET", blob_path, "bytes=1000-2999999") in proxy.requests
        proxy.reset()
        assert proxy.total_bytes == 0 and proxy.bytes_by_path() == {} and proxy.requests == []

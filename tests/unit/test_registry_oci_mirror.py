"""The pull-through cache behind /v2/, over a hand-written fake upstream (no sockets): one upstream fetch per
blob however many clients ask at once, sha256 checked before a blob is kept, tags re-resolved after the TTL,
LRU eviction under the size limit, update checks that never pull, and the mirror listing."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from eldric.core.digests import Digest
from eldric.core.request_errors import InsufficientStorageError
from registry.oci.mirror import Mirror
from registry.oci.pullthrough import PullThrough
from eldric.transfer.oci_client import OciClientError as UpstreamError
from registry.server import RegistrySettings, create_registry_app

V2 = "application/vnd.docker.distribution.manifest.v2+json"
API = "/api/v1/model-registry"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeResponse:
    def __init__(self, data: bytes, gate: threading.Event | None, chunk: int = 1000) -> None:
        self.data, self.gate, self.chunk = data, gate, chunk
        self.headers = {"Content-Length": str(len(data))}

    def iter_content(self, _size: int):
        for i in range(0, len(self.data), self.chunk):
            if self.gate is not None and i >= self.chunk:
                assert self.gate.wait(10)  # the rest only when the test lets it through
            yield self.data[i:i + self.chunk]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class FakeUpstream:
    """A registry holding models in memory; counts what it was asked."""

    base_url = "http://upstream.test"

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[tuple[str, str], bytes] = {}
        self.blob_fetches: list[str] = []
        self.manifest_fetches = 0
        self.gate: threading.Event | None = None
        self.corrupt: set[str] = set()
        self.down = False

    def add_model(self, repo: str, tag: str, model: bytes, config: bytes = b'{"model_format":"gguf"}') -> bytes:
        for blob in (model, config):
            self.blobs[sha(blob)] = blob
        manifest = json.dumps({"schemaVersion": 2, "mediaType": V2, "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": sha(model),
                        "size": len(model)}]}).encode()
        self.tags[(repo, tag)] = manifest
        return manifest

    def fetch_manifest(self, repo: str, reference: str):
        if self.down:
            raise UpstreamError("cannot reach upstream.test: connection refused")
        self.manifest_fetches += 1
        body = self.tags.get((repo, reference)) or next((m for m in self.tags.values() if sha(m) == reference), None)
        return (body, V2) if body is not None else None

    def head_manifest(self, repo: str, reference: str):
        if self.down:
            raise UpstreamError("cannot reach upstream.test: connection refused")
        body = self.tags.get((repo, reference))
        return sha(body) if body is not None else None

    def head_blob(self, repo: str, digest: str):
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def open_blob(self, repo: str, digest: str, read_timeout: float = 60):
        if self.down:
            raise UpstreamError("cannot reach upstream.test: connection refused")
        self.blob_fetches.append(digest)
        data = self.blobs.get(digest)
        if data is None:
            return None
        if digest in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return FakeResponse(data, self.gate)


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_app(root: Path, upstream: FakeUpstream, clock: Clock, *, max_bytes: int = 0, token: str = "",
             space=None):
    app = create_registry_app(root, RegistrySettings(min_free_bytes=0, mirror_upstream="none", token=token),
                              background=False)
    door = app.extensions["eldric.oci"]
    door.store.clock = clock
    mirror = Mirror(door.store, upstream, max_bytes=max_bytes, upstream_url=upstream.base_url, tag_ttl=3600)
    door.mirror = PullThrough(door.store, upstream, tag_ttl=3600, max_blob_bytes=1 << 30, on_stored=mirror.evict,
                              clock=clock, space=space)
    app.extensions["eldric.mirror"] = mirror
    return app


@pytest.fixture
def app(tmp_path: Path, upstream: FakeUpstream, clock: Clock):
    return make_app(tmp_path / "store", upstream, clock)


def pull(client, repo: str, tag: str) -> dict[str, bytes]:
    resp = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": V2})
    assert resp.status_code == 200, resp.data
    manifest = json.loads(resp.data)
    out = {}
    for layer in (manifest["config"], *manifest["layers"]):
        blob = client.get(f"/v2/{repo}/blobs/{layer['digest']}")
        assert blob.status_code == 200, blob.data
        out[layer["digest"]] = blob.data
    return out


def test_the_first_pull_fetches_once_and_the_second_is_local(app, upstream: FakeUpstream) -> None:
    model = b"GGUF" + bytes(range(256)) * 50
    upstream.add_model("library/tiny", "latest", model)
    client = app.test_client()
    first = pull(client, "library/tiny", "latest")
    assert all(sha(data) == digest for digest, data in first.items())
    assert sorted(upstream.blob_fetches) == sorted(first)
    upstream.blob_fetches.clear()
    second = pull(client, "library/tiny", "latest")
    assert second == first and upstream.blob_fetches == [] and upstream.manifest_fetches == 1
    ranged = client.get(f"/v2/library/tiny/blobs/{sha(model)}", headers={"Range": "bytes=4-7"})
    assert ranged.status_code == 206 and ranged.data == model[4:8]


def test_concurrent_clients_share_one_upstream_download(app, upstream: FakeUpstream) -> None:
    model = b"x" * 50_000
    upstream.add_model("library/big", "latest", model)
    upstream.gate = threading.Event()
    client = app.test_client()
    results: list[bytes] = []

    def fetch(headers: dict) -> None:
        results.append(app.test_client().get(f"/v2/library/big/blobs/{sha(model)}", headers=headers).data)

    client.get("/v2/library/big/manifests/latest")
    readers = [threading.Thread(target=fetch, args=(h,)) for h in ({}, {}, {"Range": "bytes=20000-29999"})]
    for t in readers:
        t.start()
    upstream.gate.set()
    for t in readers:
        t.join(20)
    assert sorted(results, key=len) == [model[20000:30000], model, model]
    assert upstream.blob_fetches == [sha(model)]  # one upstream fetch for three clients
    assert client.head(f"/v2/library/big/blobs/{sha(model)}").status_code == 200  # kept


def test_a_corrupt_upstream_blob_is_never_kept(app, upstream: FakeUpstream) -> None:
    model = b"y" * 5000
    upstream.add_model("library/bad", "latest", model)
    upstream.corrupt.add(sha(model))
    client = app.test_client()
    client.get("/v2/library/bad/manifests/latest")
    with pytest.raises(OSError):  # the body is cut: the client's own digest check fails, nothing is stored
        client.get(f"/v2/library/bad/blobs/{sha(model)}").data  # noqa: B018
    door = app.extensions["eldric.oci"]
    assert door.store.blob_size(Digest.parse(sha(model))) is None
    assert not list(door.store.blobs.root.glob(".incoming-*"))
    upstream.corrupt.clear()
    assert client.get(f"/v2/library/bad/blobs/{sha(model)}").data == model  # a retry fetches afresh


def test_a_tag_is_re_resolved_after_the_ttl_and_served_stale_when_upstream_is_down(app, upstream, clock) -> None:
    upstream.add_model("library/m", "latest", b"one")
    client = app.test_client()
    first = client.get("/v2/library/m/manifests/latest").headers["Docker-Content-Digest"]
    moved = upstream.add_model("library/m", "latest", b"two")
    assert client.get("/v2/library/m/manifests/latest").headers["Docker-Content-Digest"] == first  # within the TTL
    clock.now += 3601
    assert client.get("/v2/library/m/manifests/latest").headers["Docker-Content-Digest"] == sha(moved)
    clock.now += 3601
    upstream.down = True
    assert client.get("/v2/library/m/manifests/latest").headers["Docker-Content-Digest"] == sha(moved)
    unknown = client.get("/v2/library/never/manifests/latest")
    assert unknown.status_code == 502 and unknown.json["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"


def test_head_is_200_for_a_blob_not_held_only_while_the_mirror_fetches_it(app, upstream: FakeUpstream) -> None:
    """Issue 21, finding 5: a push skips a blob HEAD says 200 for, so 200 must mean it will be here."""
    model = b"h" * 4000
    upstream.add_model("library/h", "latest", model)
    client = app.test_client()
    head = client.head(f"/v2/library/h/blobs/{sha(model)}")
    assert head.status_code == 404 and upstream.blob_fetches == []  # no model here names it: a pusher sends it
    client.get("/v2/library/h/manifests/latest")  # Ollama's client: the manifest, then HEAD for the size
    head = client.head(f"/v2/library/h/blobs/{sha(model)}")
    assert head.status_code == 200 and head.headers["Content-Length"] == "4000"
    assert head.headers["Docker-Content-Digest"] == sha(model) and upstream.blob_fetches == [sha(model)]
    assert client.get(f"/v2/library/h/blobs/{sha(model)}").data == model and upstream.blob_fetches == [sha(model)]


def test_head_of_a_mirrored_blob_is_404_when_upstream_cannot_send_it(app, upstream: FakeUpstream) -> None:
    model = b"d" * 4000
    upstream.add_model("library/d", "latest", model)
    client = app.test_client()
    client.get("/v2/library/d/manifests/latest")
    upstream.down = True
    assert client.head(f"/v2/library/d/blobs/{sha(model)}").status_code == 404  # so an import sends it


def test_a_pushed_manifest_waits_for_the_blobs_a_head_said_the_mirror_fetches(app, upstream: FakeUpstream) -> None:
    model = b"w" * 50_000
    raw = upstream.add_model("library/w", "latest", model)
    upstream.gate = threading.Event()
    client = app.test_client()
    client.get("/v2/library/w/manifests/latest")
    doc = json.loads(raw)
    for blob in (doc["config"], *doc["layers"]):
        assert client.head(f"/v2/library/w/blobs/{blob['digest']}").status_code == 200  # a pusher skips them
    answers: list[int] = []
    push = threading.Thread(target=lambda: answers.append(app.test_client().put(
        "/v2/library/w/manifests/pushed", data=raw, headers={"Content-Type": V2}).status_code))
    push.start()
    push.join(0.5)
    assert answers == []  # waiting for the model blob's download
    upstream.gate.set()
    push.join(20)
    assert answers == [201] and client.get(f"/v2/library/w/blobs/{sha(model)}").data == model


def test_a_mirrored_blob_that_cannot_fit_is_507_and_nothing_is_kept(tmp_path: Path, upstream, clock) -> None:
    def no_room(incoming: int) -> None:  # the registry's --min-free rule, on a full disk
        raise InsufficientStorageError(f"no room for {incoming} more bytes past --min-free")

    app = make_app(tmp_path / "store", upstream, clock, space=no_room)
    model = b"f" * 5000
    upstream.add_model("library/f", "latest", model)
    client = app.test_client()
    client.get("/v2/library/f/manifests/latest")
    for method in ("GET", "HEAD"):
        resp = client.open(f"/v2/library/f/blobs/{sha(model)}", method=method)
        assert resp.status_code == 507
    error = client.get(f"/v2/library/f/blobs/{sha(model)}").json["errors"][0]
    assert error["code"] == "STORAGE_FULL" and sha(model) in error["message"]
    assert f"no room for {len(model)} more bytes past --min-free" in error["message"]
    door = app.extensions["eldric.oci"]
    assert door.store.blob_size(Digest.parse(sha(model))) is None and not list(door.store.blobs.root.glob(".*"))


def test_unknown_upstream_models_are_404_in_the_oci_format(app) -> None:
    resp = app.test_client().get("/v2/library/nothing/manifests/latest")
    assert resp.status_code == 404 and resp.json["errors"][0]["code"] == "NAME_UNKNOWN"
    blob = app.test_client().get("/v2/library/nothing/blobs/sha256:" + "1" * 64)
    assert blob.status_code == 404 and blob.json["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_the_size_limit_evicts_the_least_recently_used_model(tmp_path: Path, upstream, clock) -> None:
    app = make_app(tmp_path / "store", upstream, clock, max_bytes=25_000)
    client = app.test_client()
    a, b = b"a" * 10_000, b"b" * 10_000
    upstream.add_model("library/a", "latest", a, b'{"a":1}')
    upstream.add_model("library/b", "latest", b, b'{"b":1}')
    pull(client, "library/a", "latest")
    clock.now += 100
    pull(client, "library/b", "latest")  # 20 KB cached: within the limit
    listing = client.get(f"{API}/mirror").json
    assert {m["name"] for m in listing["models"]} == {"library/a:latest", "library/b:latest"}
    c = b"c" * 10_000
    upstream.add_model("library/c", "latest", c, b'{"c":1}')
    clock.now += 100
    pull(client, "library/c", "latest")  # 30 KB: a, used longest ago, goes
    listing = client.get(f"{API}/mirror").json
    assert {m["name"] for m in listing["models"]} == {"library/b:latest", "library/c:latest"}
    assert listing["total_bytes"] <= 25_000 and sha(a) not in {blob["digest"] for blob in listing["blobs"]}
    assert client.head(f"/v2/library/b/blobs/{sha(b)}").status_code == 200


def test_the_listing_shows_sizes_last_use_and_partly_cached_models(app, upstream, clock) -> None:
    model = b"m" * 3000
    upstream.add_model("library/part", "q4", model)
    client = app.test_client()
    client.get("/v2/library/part/manifests/q4")
    (entry,) = client.get(f"{API}/mirror").json["models"]
    assert entry["name"] == "library/part:q4" and entry["size"] == 3000 + len(b'{"model_format":"gguf"}')
    assert entry["cached_bytes"] == 0 and entry["complete"] is False and entry["update_available"] is False
    assert client.get(f"/v2/library/part/blobs/{sha(model)}").data == model
    listing = client.get(f"{API}/mirror").json
    assert listing["models"][0]["cached_bytes"] == 3000 and listing["models"][0]["last_used"].endswith("Z")
    assert listing["blobs"] == [{"digest": sha(model), "size": 3000, "last_used": listing["blobs"][0]["last_used"]}]
    assert listing["upstream"] == "http://upstream.test"


def test_the_update_check_records_what_upstream_points_at_and_pulls_nothing(app, upstream, clock) -> None:
    upstream.add_model("library/u", "latest", b"old")
    client = app.test_client()
    cached = client.get("/v2/library/u/manifests/latest").headers["Docker-Content-Digest"]
    checked = client.post(f"{API}/mirror/check").json["checked"]
    assert checked == [{"name": "library/u:latest", "digest": cached, "upstream_digest": cached,
                        "update_available": False, "error": None}]
    moved = upstream.add_model("library/u", "latest", b"new")
    fetched_before = (upstream.manifest_fetches, list(upstream.blob_fetches))
    (result,) = client.post(f"{API}/mirror/check").json["checked"]
    assert result["update_available"] is True and result["upstream_digest"] == sha(moved)
    assert (upstream.manifest_fetches, upstream.blob_fetches) == fetched_before  # HEAD only: nothing pulled
    entry = client.get(f"{API}/mirror").json["models"][0]
    assert entry["update_available"] is True and entry["digest"] == cached and entry["checked_at"]
    upstream.down = True
    (failed,) = client.post(f"{API}/mirror/check").json["checked"]
    assert failed["update_available"] is False and "connection refused" in failed["error"]

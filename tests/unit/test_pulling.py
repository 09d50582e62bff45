"""worker_agent.pulling: a whole model into Ollama's layout, blobs first and the manifest last."""

from __future__ import annotations

import io
import json
import threading

import fakeredis
import pytest

from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError
from eldric.core.manifests import CONFIG, MANIFEST_V2, OLLAMA_LICENSE, OLLAMA_MODEL, OLLAMA_TEMPLATE, Manifest
from eldric.core.names import ModelName
from eldric.transfer.download import DownloadOptions
from eldric.transfer.errors import SourceError
from worker_agent.ollama_store import OllamaStore
from eldric.cluster.jobs.progress import Progress
from worker_agent.pulling import pull_model

NAME = ModelName.parse("tiny")
JOB, WORKER = "job1", "gpu1"
OPTIONS = DownloadOptions(parts=2, part_bytes=4096, part_attempts=1, chunk_bytes=1024, save_every_seconds=0.02)

CONFIG_BLOB = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
MODEL_BLOB = bytes((i * 7 + 3) % 256 for i in range(20_000))
TEMPLATE_BLOB = b"{{ .Prompt }}"
LICENSE_BLOB = b"MIT"


def manifest_bytes(blobs: dict[str, bytes]) -> bytes:
    def entry(media_type: str, data: bytes) -> dict:
        return {"mediaType": media_type, "digest": str(Digest.of_bytes(data)), "size": len(data)}

    doc = {"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": entry(CONFIG, blobs["config"]),
           "layers": [entry(OLLAMA_MODEL, blobs["model"]), entry(OLLAMA_TEMPLATE, blobs["template"]),
                      entry(OLLAMA_LICENSE, blobs["license"])]}
    return json.dumps(doc, indent=1).encode()  # not our own serialisation: must be stored as received


BLOBS = {"config": CONFIG_BLOB, "model": MODEL_BLOB, "template": TEMPLATE_BLOB, "license": LICENSE_BLOB}
RAW = manifest_bytes(BLOBS)
MANIFEST = Manifest.parse(RAW)
BY_DIGEST = {Digest.of_bytes(data): data for data in BLOBS.values()}


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return self._stream.read(amt)


class FakeResponse:
    """A streaming `requests.Response` over bytes: context manager, status, iter_content, raw.read."""

    def __init__(self, data: bytes) -> None:
        self.status_code = 206
        self.raw = FakeBody(data)

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def iter_content(self, chunk_size: int = 1):
        while chunk := self.raw.read(chunk_size):
            yield chunk


class FakeSource:
    """A BlobSource serving one model from memory; records what was asked for."""

    def __init__(self, raw: bytes = RAW, blobs: dict[Digest, bytes] = BY_DIGEST,
                 refuse: set[Digest] = frozenset()) -> None:
        self.raw, self.blobs, self.refuse = raw, blobs, refuse
        self.manifest_requests: list[ModelName] = []
        self.range_requests: list[tuple[Digest, int, int]] = []
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "memory://fake"

    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        self.manifest_requests.append(name)
        return self.raw, Manifest.parse(self.raw)

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int, read_timeout: float) -> FakeResponse:
        with self._lock:
            self.range_requests.append((digest, start, end))
        if digest in self.refuse:
            raise SourceError(f"blob {digest} not found")
        return FakeResponse(self.blobs[digest][start:end + 1])

    @property
    def digests_requested(self) -> set[Digest]:
        return {d for d, _, _ in self.range_requests}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def store(tmp_path) -> OllamaStore:
    return OllamaStore(tmp_path / "models")


@pytest.fixture
def progress(client) -> Progress:
    return Progress(client, JOB, WORKER, min_interval=0.25, clock=FakeClock())


def record(client) -> dict:
    return json.loads(client.hget(keys.job_workers(JOB), WORKER))


def test_pull_writes_blobs_and_manifest_in_ollama_layout(store, progress, client):
    source = FakeSource()

    result = pull_model(NAME, store=store, source=source, progress=progress, options=OPTIONS)

    manifest_file = store.root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    assert manifest_file.read_bytes() == RAW
    for data in BLOBS.values():
        assert (store.root / "blobs" / f"sha256-{Digest.of_bytes(data).hex}").read_bytes() == data
    assert store.has_model(NAME)
    assert [m["name"] for m in store.list_models()] == ["tiny:latest"]
    assert [p.name for p in (store.root / ".eldric-partial").iterdir() if not p.name.endswith(".lock")] == []
    assert result.to_json() == {"model": "tiny:latest", "digest": str(Digest.of_bytes(RAW)),
                                "size": MANIFEST.total_size, "downloaded": MANIFEST.total_size}
    assert source.manifest_requests == [NAME]
    assert source.digests_requested == set(BY_DIGEST)


def test_progress_ends_with_every_byte_counted(store, progress, client):
    pull_model(NAME, store=store, source=FakeSource(), progress=progress, options=OPTIONS)
    rec = record(client)
    assert rec["state"] == jobstate.PULLING  # completion is the job runner's call, after this returns
    assert rec["total"] == rec["completed"] == MANIFEST.total_size
    assert rec["percent"] == 100.0
    assert rec["source"] == "memory://fake"
    assert rec["layer"] is None
    assert rec["status"] == "writing manifest"


def test_present_blobs_are_not_requested_again(store, progress, client):
    store.ensure()
    store.blobs.put_bytes(MODEL_BLOB)
    store.blobs.put_bytes(LICENSE_BLOB)
    source = FakeSource()

    result = pull_model(NAME, store=store, source=source, progress=progress, options=OPTIONS)

    assert source.digests_requested == {Digest.of_bytes(CONFIG_BLOB), Digest.of_bytes(TEMPLATE_BLOB)}
    assert result.downloaded == len(CONFIG_BLOB) + len(TEMPLATE_BLOB)
    assert record(client)["completed"] == MANIFEST.total_size
    assert record(client)["reused"] == len(MODEL_BLOB) + len(LICENSE_BLOB)  # not network bytes (metrics)
    assert store.has_model(NAME)


def test_pulling_a_complete_model_again_requests_only_the_manifest(store, progress):
    pull_model(NAME, store=store, source=FakeSource(), progress=progress, options=OPTIONS)
    again = FakeSource()
    result = pull_model(NAME, store=store, source=again, progress=progress, options=OPTIONS)
    assert again.manifest_requests == [NAME]
    assert again.range_requests == []
    assert result.downloaded == 0


def test_manifest_is_written_last(store, progress):
    last = MANIFEST.blobs()[-1].digest
    source = FakeSource(refuse={last})

    with pytest.raises(SourceError):
        pull_model(NAME, store=store, source=source, progress=progress, options=OPTIONS)

    assert last in source.digests_requested
    assert not store.manifest_path(NAME).exists()
    assert list(store.manifests_dir.rglob("*")) == []
    assert not store.has_model(NAME)
    assert store.list_models() == []
    assert all(store.blobs.has(b.digest, b.size) for b in MANIFEST.blobs()[:-1])


def test_corrupt_blob_fails_the_pull_without_a_manifest(store, progress):
    model = Digest.of_bytes(MODEL_BLOB)
    tampered = {**BY_DIGEST, model: MODEL_BLOB[:-1] + b"\x00"}
    with pytest.raises(DigestMismatchError):
        pull_model(NAME, store=store, source=FakeSource(blobs=tampered), progress=progress, options=OPTIONS)
    assert not store.blobs.has(model)
    assert not store.manifest_path(NAME).exists()


def test_tagged_name_from_another_registry_lands_under_its_host(store, progress):
    name = ModelName.parse("mirror.local:5000/team/tiny:q4")
    pull_model(name, store=store, source=FakeSource(), progress=progress, options=OPTIONS)
    assert (store.root / "manifests" / "mirror.local:5000" / "team" / "tiny" / "q4").read_bytes() == RAW
    assert [m["name"] for m in store.list_models()] == ["mirror.local:5000/team/tiny:q4"]

"""worker_agent.blob_leases: a running job's blobs survive any delete; a dead job's lease lapses."""

from __future__ import annotations

import json
import threading

import fakeredis
import pytest

from eldric.cluster.jobs.progress import Progress
from eldric.core.digests import Digest
from eldric.core.names import ModelName
from worker_agent.blob_leases import BlobLease, BlobLeases
from worker_agent.ollama_store import OllamaStore
from worker_agent.pulling import pull_model
from tests.unit.test_pulling import BLOBS, MODEL_BLOB, OPTIONS, RAW, FakeClock, FakeSource, manifest_bytes

OTHER = ModelName.parse("other")  # shares MODEL_BLOB with the pulled model
OTHER_RAW = manifest_bytes({**BLOBS, "license": b"another license", "template": b"{{ .System }}"})


@pytest.fixture
def store(tmp_path) -> OllamaStore:
    s = OllamaStore(tmp_path / "models")
    s.ensure()
    return s


def install_other(store: OllamaStore) -> None:
    for data in (*BLOBS.values(), b"another license", b"{{ .System }}"):
        store.blobs.put_bytes(data)
    store.write_manifest(OTHER, OTHER_RAW)


def test_a_leased_blob_outlives_the_delete_of_its_last_model(store):
    install_other(store)
    model = Digest.of_bytes(MODEL_BLOB)
    with store.leases.hold("job1", [model]):
        removed = store.delete_model(OTHER)
        assert str(model) not in removed and store.blobs.has(model)
        assert str(Digest.of_bytes(b"another license")) in removed  # what nobody leased went
    assert list(store.leases.root.glob("*.json")) == []  # given back
    assert store.delete_blobs([model]) == [str(model)]


def test_a_lease_of_a_job_that_died_lapses_and_pins_nothing(tmp_path):
    clock = FakeClock()
    leases = BlobLeases(tmp_path / "leases", lease_seconds=60, clock=clock)
    digest = Digest.of_bytes(b"x")
    BlobLease(leases, "dead", [digest]).write()  # what a killed agent leaves: written, never renewed nor removed
    with leases.exclusive():
        assert leases.leased() == {digest.hex}
        clock.now += 61
        assert leases.leased() == set()
    assert list(leases.root.glob("*.json")) == []  # the lapsed file is removed


def test_a_lease_is_renewed_while_its_job_runs(tmp_path):
    clock = FakeClock()
    leases = BlobLeases(tmp_path / "leases", lease_seconds=0.3, clock=clock)
    with leases.hold("alive", [Digest.of_bytes(b"x")]) as lease:
        first = json.loads(lease.path.read_bytes())["expires_at"]
        clock.now += 10
        threading.Event().wait(0.25)  # more than a third of the lease
        assert json.loads(lease.path.read_bytes())["expires_at"] > first


def test_keep_is_read_under_the_lock(store):
    """A catalog entry written and its lease given back while the delete waits is still seen."""
    install_other(store)
    model = Digest.of_bytes(MODEL_BLOB)
    assert store.delete_blobs([model], keep=lambda: {model.hex}) == []
    assert store.blobs.has(model)


def test_a_delete_during_a_pull_spares_the_blobs_the_pull_found_present(store, tmp_path):
    install_other(store)
    deleted: list[list[str]] = []
    source = FakeSource()
    opened = source.open_range

    def open_range(name, digest, start, end, timeout):  # the first fetch of a missing blob: delete `other` then
        if not deleted:
            deleted.append(store.delete_model(OTHER))
        return opened(name, digest, start, end, timeout)
    source.open_range = open_range
    progress = Progress(fakeredis.FakeRedis(decode_responses=True), "job1", "w1", min_interval=0)
    store.blobs.delete(Digest.of_bytes(BLOBS["config"]))  # one blob the pull must fetch, so it opens a range

    pull_model(ModelName.parse("tiny"), store=store, source=source, progress=progress, options=OPTIONS)

    assert deleted and str(Digest.of_bytes(MODEL_BLOB)) not in deleted[0]
    assert store.has_model(ModelName.parse("tiny"))
    assert Digest.of_bytes(MODEL_BLOB) not in source.digests_requested  # found present, and still there
    assert store.read_manifest(ModelName.parse("tiny"))[0] == RAW
    assert list(store.leases.root.glob("*.json")) == []

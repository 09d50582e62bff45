"""Unfinished downloads (eldric.transfer.partials): locks, what a retry resumes, and their cleanup.

Issue 11 findings 3 and 7: a failed job's partial data stayed forever, lock files piled up, and the
space check counted a whole blob although most of it was on disk already.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from eldric.cluster import keys
from eldric.cluster.jobs import catchups
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import create_job, fail_worker
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.transfer.download import DownloadOptions, download_blob
from eldric.transfer.partials import clean_partials, locked, resumable_bytes
from eldric.cluster import maintenance
from eldric.cluster.queues import worker_queue
from worker_agent import partial_cleanup
from eldric.transfer.errors import SourceError, SourceUnavailableError
from worker_agent.ollama_store import OllamaStore

DATA = bytes(range(256)) * 40
DIGEST = Digest.of_bytes(DATA)
OPTIONS = DownloadOptions(parts=1, part_bytes=2048, chunk_bytes=512, part_attempts=1, retry_backoff_seconds=0,
                          save_every_seconds=0.01)
DAY = 86400.0


class Body:
    def __init__(self, data: bytes, then: Exception | None = None) -> None:
        self.data, self.then, self.pos = data, then, 0

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        chunk = self.data[self.pos:self.pos + (amt or len(self.data))]
        self.pos += len(chunk)
        if not chunk and self.then is not None:
            raise self.then
        return chunk


class Answer:
    def __init__(self, data: bytes, status: int = 206, then: Exception | None = None) -> None:
        self.status_code, self.raw = status, Body(data, then)

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc) -> None:
        pass


def cut_after(limit: int):
    """A source whose every range breaks (transiently) once `limit` bytes of the blob were sent."""
    def open_range(start: int, end: int, timeout: float) -> Answer:
        if start >= limit:
            return Answer(b"", then=ConnectionResetError("reset"))
        return Answer(DATA[start:min(end + 1, limit)], then=ConnectionResetError("reset") if end >= limit else None)
    return open_range


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


@pytest.fixture
def store(blob_store) -> BlobStore:
    return blob_store


def test_a_transient_failure_keeps_the_partial_for_the_retry_and_records_its_job(store, partial):
    with pytest.raises(SourceUnavailableError):
        download_blob(cut_after(6000), DIGEST, len(DATA), store, partial, OPTIONS, owner="job-1")
    assert files(partial) == {DIGEST.filename, f"{DIGEST.filename}.json"}  # no lock file left behind
    state = json.loads((partial / f"{DIGEST.filename}.json").read_text())
    assert state["owner"] == "job-1"
    assert resumable_bytes(partial, DIGEST, len(DATA)) == 6000
    assert resumable_bytes(partial, DIGEST, len(DATA) + 1) == 0  # another size: nothing to resume


def test_a_final_failure_deletes_the_partial_at_once(store, partial):
    with pytest.raises(SourceUnavailableError):
        download_blob(cut_after(6000), DIGEST, len(DATA), store, partial, OPTIONS)

    def refuses(start: int, end: int, timeout: float) -> Answer:
        raise SourceError("blob not found at the registry")
    with pytest.raises(SourceError):
        download_blob(refuses, DIGEST, len(DATA), store, partial, OPTIONS)
    assert files(partial) == set()


def test_a_successful_download_leaves_no_lock_file(store, partial):
    download_blob(lambda s, e, t: Answer(DATA[s:e + 1]), DIGEST, len(DATA), store, partial, OPTIONS)
    assert store.path(DIGEST).read_bytes() == DATA
    assert files(partial) == set()


def test_a_held_lock_is_reported_busy_and_a_waiter_takes_the_lock_file_that_replaced_a_removed_one(partial):
    partial.mkdir()
    lock = partial / "x.lock"
    order: list[str] = []
    with locked(lock) as first:
        assert first
        with locked(lock, blocking=False) as second:
            assert second is False

        def waiter() -> None:
            with locked(lock) as got:
                order.append(f"waiter {got} {lock.exists()}")
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        order.append("holder leaves")
    thread.join(5)
    assert order == ["holder leaves", "waiter True True"]
    assert not lock.exists()


def make_partial(partial: Path, name: str, *, age: float, owner: str | None = None, size: int = 4096) -> None:
    partial.mkdir(parents=True, exist_ok=True)
    (partial / name).write_bytes(b"\1" * size)
    (partial / f"{name}.json").write_text(json.dumps({"digest": "x", "size": size, "owner": owner, "parts": []}))
    then = time.time() - age
    for path in (partial / name, partial / f"{name}.json"):
        os.utime(path, (then, then))


def test_cleanup_deletes_stale_partials_and_those_of_ended_jobs_and_keeps_the_rest(partial, tmp_path):
    make_partial(partial, "sha256-" + "a" * 64, age=2 * DAY)
    make_partial(partial, "sha256-" + "b" * 64, age=60, owner="ended")
    make_partial(partial, "sha256-" + "c" * 64, age=60, owner="retrying")
    make_partial(partial, "url-fresh", age=60)
    (partial / ("sha256-" + "d" * 64 + ".lock")).touch()  # a lock file a killed process left
    incoming = tmp_path / "blobs"
    incoming.mkdir()
    (incoming / ".incoming-old").write_bytes(b"x")
    os.utime(incoming / ".incoming-old", (time.time() - 2 * DAY,) * 2)
    (incoming / ".incoming-new").write_bytes(b"x")

    cleaned = clean_partials(partial, max_age=DAY, is_finished=lambda job: job == "ended", incoming_dirs=(incoming,))

    assert sorted(cleaned.removed) == ["blobs/.incoming-old", "sha256-" + "a" * 64, "sha256-" + "b" * 64]
    assert cleaned.freed >= 2 * 4096
    assert files(partial) == {"sha256-" + "c" * 64, "sha256-" + "c" * 64 + ".json", "url-fresh", "url-fresh.json"}
    assert files(incoming) == {".incoming-new"}


def test_cleanup_leaves_a_download_in_progress_alone(partial):
    name = "sha256-" + "e" * 64
    make_partial(partial, name, age=3 * DAY, owner="ended")
    with locked(partial / f"{name}.lock"):
        cleaned = clean_partials(partial, max_age=DAY, is_finished=lambda job: True)
        assert cleaned.removed == [] and (partial / name).exists()


# --- the maintenance task over Redis ------------------------------------------------------------

@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def test_cleanup_is_sent_to_every_online_worker(r):
    for wid, online in (("a", True), ("b", True), ("off", False)):
        cluster_workers.register(r, {"id": wid, "type": "inference", "address": f"http://{wid}", "backends": []}, ttl=15)
        if not online:
            cluster_workers.go_offline(r, wid)
    sent: list[tuple] = []
    def send(task, args, worker_ids):
        sent.extend((task, args, worker_queue(w)) for w in worker_ids)
        return {}

    assert maintenance.request_partial_cleanup(r, send, DAY) == ["a", "b"]
    assert sent == [("maintenance.clean_partials", [DAY], "worker.a"),
                    ("maintenance.clean_partials", [DAY], "worker.b")]


def test_a_worker_drops_the_partials_of_its_failed_jobs_and_keeps_those_a_retry_may_resume(r, tmp_path):
    store = OllamaStore(tmp_path / "models")
    failed = create_job(r, kind="pull", model="m", targets=["w"], source="ollama", deadline_seconds=60)
    retrying = create_job(r, kind="pull", model="n", targets=["w"], source="ollama", deadline_seconds=60)
    fail_worker(r, failed, "w", "registry unreachable; retries used up")
    r.hset(keys.job_workers(retrying), "w", json.dumps(dict(jobstate.new_record(0), state=jobstate.RETRYING)))
    make_partial(store.partial_dir, "sha256-" + "1" * 64, age=60, owner=failed)
    make_partial(store.partial_dir, "sha256-" + "2" * 64, age=60, owner=retrying)
    make_partial(store.partial_dir, "sha256-" + "3" * 64, age=60, owner="forgotten-job")

    cleaned = partial_cleanup.clean_partials(r, "w", store, max_age=DAY)

    assert sorted(cleaned.removed) == ["sha256-" + "1" * 64, "sha256-" + "3" * 64]
    assert (store.partial_dir / ("sha256-" + "2" * 64)).exists()


def hold(r, digest: str, **holders: str) -> None:
    """The swarm board of blob `digest` lists those ranges -> holders (space-separated workers)."""
    r.hset(keys.swarm(digest, "holders"), mapping=holders)
    r.hset(keys.swarm(digest, "sha"), mapping={i: "ab" * 32 for i in holders})


def test_a_job_that_failed_for_good_can_drop_its_partials_at_once(store, partial, tmp_path, r):
    models = OllamaStore(tmp_path / "models")
    with pytest.raises(SourceUnavailableError):  # the last retry: the engine keeps the data, not knowing it is the last
        download_blob(cut_after(6000), DIGEST, len(DATA), store, models.partial_dir, OPTIONS, owner="job-1")
    make_partial(models.partial_dir, "sha256-" + "f" * 64, age=60, owner="job-2")
    hold(r, str(DIGEST), **{"0": "w other", "1": "w"})

    assert partial_cleanup.discard_job_partials(r, "w", models, "job-1").removed == [DIGEST.filename]
    assert files(models.partial_dir) == {"sha256-" + "f" * 64, "sha256-" + "f" * 64 + ".json"}
    # Issue 22: its peers must not ask it for those ranges any more; a range nobody holds is unfetched again.
    assert r.hgetall(keys.swarm(str(DIGEST), "holders")) == {"0": "other"}
    assert r.hkeys(keys.swarm(str(DIGEST), "sha")) == ["0"]


def test_the_cleanup_keeps_a_partial_a_pending_catch_up_resumes_and_unlists_what_it_deletes(r, tmp_path):
    """Issue 22, finding 4: a part failed while its worker was offline gets a catch-up, which resumes the partial."""
    store = OllamaStore(tmp_path / "models")
    caught_up = create_job(r, kind="pull", model="m", targets=["w"], source="ollama", deadline_seconds=60)
    gone = create_job(r, kind="pull", model="n", targets=["w"], source="ollama", deadline_seconds=60)
    for job in (caught_up, gone):
        fail_worker(r, job, "w", "worker went offline mid-pull (40 s without news)")
    assert catchups.record_catchup(r, "w", caught_up)
    kept, dropped = "sha256-" + "1" * 64, "sha256-" + "2" * 64
    make_partial(store.partial_dir, kept, age=60, owner=caught_up)
    make_partial(store.partial_dir, dropped, age=60, owner=gone)
    hold(r, "sha256:" + "1" * 64, **{"0": "w"})
    hold(r, "sha256:" + "2" * 64, **{"0": "w", "1": "peer w"})

    cleaned = partial_cleanup.clean_partials(r, "w", store, max_age=DAY)

    assert cleaned.removed == [dropped]
    assert (store.partial_dir / kept).exists()
    assert r.hgetall(keys.swarm("sha256:" + "1" * 64, "holders")) == {"0": "w"}
    assert r.hgetall(keys.swarm("sha256:" + "2" * 64, "holders")) == {"1": "peer"}

    # The worker is back: the catch-up's job starts (its entry goes); the partial stays for that job to resume.
    cluster_workers.register(r, {"id": "w", "type": "inference", "address": "http://w", "backends": []}, ttl=15)
    started = catchups.reconcile_catchups(r, lambda task, args, targets: {}, deadline_seconds=60, busy={})
    assert [s["catch_up_of"] for s in started] == [caught_up] and not catchups.pending_catchups(r, "w")
    assert partial_cleanup.clean_partials(r, "w", store, max_age=DAY).removed == []
    assert (store.partial_dir / kept).exists()

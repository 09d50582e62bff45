"""worker_agent.download: ranged parallel download of one blob, verified, atomic and resumable.

The source is an in-memory fake of `open_range(start, end, timeout)` whose responses behave
like a streaming `requests.Response` (context manager, `status_code`, `iter_content(n)`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests

from registry.blobstore import BlobStore
from registry.digests import Digest
from registry.errors import DigestMismatchError
from worker_agent.download import DownloadOptions, download_blob, plan_parts
from worker_agent.errors import SourceError, SourceUnavailableError

DATA = bytes((i * 31 + 7) % 251 for i in range(10_000))
DIGEST = Digest.of_bytes(DATA)
OPTIONS = DownloadOptions(parts=4, min_part_bytes=1, stall_seconds=7.0, part_attempts=1, chunk_bytes=300,
                          save_every_seconds=0.02)
PART_STARTS = [0, 2500, 5000, 7500]


class FakeResponse:
    """What `requests.get(..., stream=True)` returns, reduced to what the engine uses."""

    def __init__(self, body: bytes, status_code: int = 206, then_raise: Exception | None = None) -> None:
        self.body, self.status_code, self.then_raise = body, status_code, then_raise
        self.closed = False

    def __enter__(self) -> "FakeResponse":
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True

    def iter_content(self, chunk_size: int):
        for i in range(0, len(self.body), chunk_size):
            yield self.body[i:i + chunk_size]
        if self.then_raise is not None:
            raise self.then_raise


class RangeServer:
    """Serves `data` for inclusive byte ranges and records every request."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.requests: list[tuple[int, int, float]] = []
        self._lock = threading.Lock()

    def __call__(self, start: int, end: int, timeout: float) -> FakeResponse:
        with self._lock:
            self.requests.append((start, end, timeout))
        return self.respond(start, end)

    def respond(self, start: int, end: int) -> FakeResponse:
        return FakeResponse(self.data[start:end + 1])

    @property
    def starts(self) -> list[int]:
        return sorted(r[0] for r in self.requests)

    @property
    def bytes_requested(self) -> int:
        return sum(end + 1 - start for start, end, _ in self.requests)


class CuttingServer(RangeServer):
    """Drops the connection after `keep` bytes of every part, and keeps dropping it there."""

    def __init__(self, keep: int, data: bytes = DATA) -> None:
        super().__init__(data)
        self.keep = keep
        self.limits: dict[int, int] = {}  # a part is known by its range end, stable across retries

    def respond(self, start: int, end: int) -> FakeResponse:
        with self._lock:
            limit = self.limits.setdefault(end, start + self.keep)
        return FakeResponse(self.data[start:min(end + 1, limit)],
                            then_raise=requests.ConnectionError("connection reset") if limit <= end else None)


class DropOnceServer(RangeServer):
    """Drops the first connection of every part after `keep` bytes; later ones are fine."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.seen: set[int] = set()

    def respond(self, start: int, end: int) -> FakeResponse:
        with self._lock:
            first = end not in self.seen
            self.seen.add(end)
        if first:
            return FakeResponse(self.data[start:start + self.keep], then_raise=requests.ConnectionError("reset"))
        return super().respond(start, end)


class ShortServer(RangeServer):
    """Ends every stream cleanly after `keep` bytes, as a misbehaving proxy might."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def respond(self, start: int, end: int) -> FakeResponse:
        return FakeResponse(self.data[start:min(end + 1, start + self.keep)])


class IgnoresRange(RangeServer):
    """Answers 200 with the whole blob whatever range is asked for."""

    def respond(self, start: int, end: int) -> FakeResponse:
        return FakeResponse(self.data, status_code=200)


class Unreachable(RangeServer):
    def respond(self, start: int, end: int) -> FakeResponse:
        raise AssertionError("the source must not be asked")


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def partial(tmp_path) -> Path:
    return tmp_path / "partial"


def fetch(server, store, partial, digest=DIGEST, size=len(DATA), options=OPTIONS, counted=None) -> Path:
    on_bytes = counted.append if counted is not None else (lambda n: None)
    return download_blob(server, digest, size, store, partial, options, on_bytes=on_bytes)


def partial_files(partial: Path) -> set[str]:
    return {p.name for p in partial.iterdir() if not p.name.endswith(".lock")} if partial.exists() else set()


# plan_parts --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "size, parts, min_part, expected",
    [
        (0, 8, 1, []),
        (-5, 8, 1, []),
        (1, 8, 1, [(0, 1)]),
        (10, 3, 1, [(0, 4), (4, 4), (8, 2)]),
        (10, 1, 1, [(0, 10)]),
        (100, 8, 64, [(0, 100)]),
        (128, 8, 64, [(0, 64), (64, 64)]),
        (10_000, 4, 1, [(0, 2500), (2500, 2500), (5000, 2500), (7500, 2500)]),
        (10, 4, 0, [(0, 3), (3, 3), (6, 3), (9, 1)]),
    ],
)
def test_plan_parts(size, parts, min_part, expected):
    assert plan_parts(size, parts, min_part) == expected


@pytest.mark.parametrize("size", [1, 7, 99, 1000, 12_345, (64 << 20) * 3 + 1])
@pytest.mark.parametrize("parts, min_part", [(1, 1), (4, 1), (8, 1000), (16, 64 << 20)])
def test_plan_parts_cover_the_blob_exactly_within_limits(size, parts, min_part):
    plan = plan_parts(size, parts, min_part)
    assert 1 <= len(plan) <= parts
    assert plan[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(plan, plan[1:]))
    assert sum(n for _, n in plan) == size
    if len(plan) > 1:
        assert min(n for _, n in plan[:-1]) >= min_part


# download_blob -----------------------------------------------------------------------------------

def test_parallel_download_commits_the_exact_bytes_under_the_digest(store, partial):
    server = RangeServer()
    counted: list[int] = []

    path = fetch(server, store, partial, counted=counted)

    assert path == store.path(DIGEST) == store.root / f"sha256-{DIGEST.hex}"
    assert path.read_bytes() == DATA
    assert server.starts == PART_STARTS
    assert sorted((s, e) for s, e, _ in server.requests) == [(0, 2499), (2500, 4999), (5000, 7499), (7500, 9999)]
    assert {t for _, _, t in server.requests} == {OPTIONS.stall_seconds}
    assert sum(counted) == len(DATA)
    assert partial_files(partial) == set()
    assert [p.name for p in store.root.iterdir()] == [DIGEST.filename]


def test_single_part_when_the_blob_is_smaller_than_a_part(store, partial):
    server = RangeServer()
    fetch(server, store, partial, options=DownloadOptions(parts=8, min_part_bytes=1 << 20))
    assert [(s, e) for s, e, _ in server.requests] == [(0, len(DATA) - 1)]
    assert store.path(DIGEST).read_bytes() == DATA


def test_digest_mismatch_raises_and_leaves_neither_blob_nor_partial(store, partial):
    promised = Digest.of_bytes(b"other bytes of the same length".ljust(len(DATA), b"."))

    with pytest.raises(DigestMismatchError) as info:
        fetch(RangeServer(), store, partial, digest=promised)

    assert str(promised) in str(info.value) and str(DIGEST) in str(info.value)
    assert not store.has(promised) and not store.has(DIGEST)
    assert not store.root.exists() or list(store.root.iterdir()) == []
    assert partial_files(partial) == set()


def test_failed_download_keeps_its_state_and_the_next_one_fetches_only_what_is_missing(store, partial):
    keep = 1000
    with pytest.raises(SourceUnavailableError):
        fetch(CuttingServer(keep), store, partial)

    assert not store.has(DIGEST)
    assert partial_files(partial) == {DIGEST.filename, f"{DIGEST.filename}.json"}
    state = json.loads((partial / f"{DIGEST.filename}.json").read_text())
    assert state["digest"] == str(DIGEST) and state["size"] == len(DATA)
    assert state["parts"] == [[start, 2500, keep] for start in PART_STARTS]

    good = RangeServer()
    counted: list[int] = []
    path = fetch(good, store, partial, counted=counted)

    assert path.read_bytes() == DATA
    assert good.starts == [start + keep for start in PART_STARTS]
    assert all(start > part for start, part in zip(good.starts, PART_STARTS))
    assert good.bytes_requested == len(DATA) - 4 * keep
    assert sum(counted) == len(DATA)  # resumed bytes are reported too, so progress reaches 100 %
    assert partial_files(partial) == set()


def test_dropped_connection_is_resumed_at_the_byte_it_stopped(store, partial):
    server = DropOnceServer(keep=600)
    fetch(server, store, partial, options=DownloadOptions(parts=2, min_part_bytes=1, part_attempts=1,
                                                          chunk_bytes=300, save_every_seconds=0.02))
    assert store.path(DIGEST).read_bytes() == DATA
    assert server.starts == [0, 600, 5000, 5600]


def test_source_that_keeps_closing_early_is_unavailable(store, partial):
    with pytest.raises(SourceUnavailableError, match="closing"):
        fetch(ShortServer(keep=100), store, partial)
    assert not store.has(DIGEST)
    assert f"{DIGEST.filename}.json" in partial_files(partial)


def test_source_ignoring_range_is_a_source_error(store, partial):
    with pytest.raises(SourceError, match="ignored the Range"):
        fetch(IgnoresRange(), store, partial)
    assert not store.has(DIGEST)


def test_full_answer_to_a_request_for_everything_is_fine(store, partial):
    fetch(IgnoresRange(), store, partial, options=DownloadOptions(parts=1, min_part_bytes=1, chunk_bytes=300))
    assert store.path(DIGEST).read_bytes() == DATA


def test_zero_size_blob_is_stored_without_a_request(store, partial):
    empty = Digest.of_bytes(b"")
    server = RangeServer(b"")
    path = fetch(server, store, partial, digest=empty, size=0)
    assert path.read_bytes() == b""
    assert server.requests == []
    assert store.has(empty, 0)


def test_present_blob_is_not_requested(store, partial):
    store.put_bytes(DATA)
    server = Unreachable()
    assert fetch(server, store, partial) == store.path(DIGEST)
    assert server.requests == []


def test_blob_of_the_wrong_size_in_the_store_is_downloaded_again(store, partial):
    store.root.mkdir(parents=True)
    store.path(DIGEST).write_bytes(DATA[:10])
    server = RangeServer()
    fetch(server, store, partial)
    assert server.requests
    assert store.path(DIGEST).read_bytes() == DATA


def test_state_of_another_size_is_not_resumed(store, partial):
    partial.mkdir()
    (partial / DIGEST.filename).write_bytes(b"\0" * 5)
    (partial / f"{DIGEST.filename}.json").write_text(json.dumps(
        {"digest": str(DIGEST), "size": 5, "parts": [[0, 5, 5]]}))
    server = RangeServer()
    fetch(server, store, partial)
    assert server.starts == PART_STARTS
    assert store.path(DIGEST).read_bytes() == DATA


def test_garbled_state_file_starts_over(store, partial):
    partial.mkdir()
    (partial / DIGEST.filename).write_bytes(b"junk")
    (partial / f"{DIGEST.filename}.json").write_text("{not json")
    server = RangeServer()
    fetch(server, store, partial)
    assert server.starts == PART_STARTS
    assert store.path(DIGEST).read_bytes() == DATA

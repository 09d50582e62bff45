"""eldric.transfer.download: ranged parallel download of one blob, verified, atomic and resumable.

The source is an in-memory fake of `open_range(start, end, timeout)` whose responses behave
like a streaming `requests.Response` (context manager, `status_code`, `iter_content(n)` and
`raw.read(n)`); one group of tests uses real `requests.Response` objects over in-memory bodies
to check how real connection failures surface.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import urllib3

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError
from eldric.transfer.download import DownloadOptions, download_blob, plan_parts
from eldric.transfer.errors import DownloadStoppedError, SourceError, SourceUnavailableError
import itertools

DATA = bytes((i * 31 + 7) % 251 for i in range(10_000))
DIGEST = Digest.of_bytes(DATA)
# Four ranges of 2500 bytes, all fetched at once.
OPTIONS = DownloadOptions(parts=4, start_connections=4, part_bytes=2500, stall_seconds=7.0, part_attempts=1, chunk_bytes=300,
                          save_every_seconds=0.02)
PART_STARTS = [0, 2500, 5000, 7500]


class FakeBody:
    """`response.raw`: urllib3's read(amt, decode_content=...) over bytes, then optionally an error."""

    def __init__(self, body: bytes, then_raise: Exception | None) -> None:
        self._stream, self.then_raise = io.BytesIO(body), then_raise

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        chunk = self._stream.read(amt)
        if not chunk and self.then_raise is not None:
            raise self.then_raise
        return chunk


class FakeResponse:
    """What `session.get(..., stream=True)` returns, reduced to what a download uses."""

    def __init__(self, body: bytes, status_code: int = 206, then_raise: Exception | None = None,
                 on_close=lambda: None) -> None:
        self.status_code = status_code
        self.raw = FakeBody(body, then_raise)
        self.closed = False
        self._on_close = on_close

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()

    def iter_content(self, chunk_size: int = 1):
        while chunk := self.raw.read(chunk_size):
            yield chunk


class RangeServer:
    """Serves `data` for inclusive byte ranges; records every request and the open responses."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.requests: list[tuple[int, int, float]] = []
        self.responses: list[FakeResponse] = []
        self._lock = threading.Lock()

    def __call__(self, start: int, end: int, timeout: float) -> FakeResponse:
        with self._lock:
            self.requests.append((start, end, timeout))
        resp = self.respond(start, end)
        self.responses.append(resp)
        return resp

    def respond(self, start: int, end: int) -> FakeResponse:
        return FakeResponse(self.data[start:end + 1])

    @property
    def starts(self) -> list[int]:
        return sorted(r[0] for r in self.requests)

    @property
    def bytes_requested(self) -> int:
        return sum(end + 1 - start for start, end, _ in self.requests)


class CuttingServer(RangeServer):
    """Breaks after `keep` bytes of each range starting in `cut` (default: every range).

    It breaks with `error`, or closes the stream cleanly when `error` is None, and never
    serves past that point again, so a retry gets nothing and fails too.
    """

    def __init__(self, keep: int, cut: set[int] | None = None,
                 error: Exception | None = requests.ConnectionError("connection reset")) -> None:
        super().__init__()
        self.keep, self.cut, self.error = keep, cut, error
        self.part_start: dict[int, int] = {}  # a range is known by its end, stable across retries

    def respond(self, start: int, end: int) -> FakeResponse:
        with self._lock:
            first = self.part_start.setdefault(end, start)
        if self.cut is not None and first not in self.cut:
            return super().respond(start, end)
        limit = first + self.keep
        return FakeResponse(self.data[start:min(end + 1, limit)],
                            then_raise=self.error if limit <= end else None)


class DropOnceServer(RangeServer):
    """Drops the first connection of every range after `keep` bytes; later ones are fine."""

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


class IgnoresRange(RangeServer):
    """Answers 200 with the whole blob whatever range is asked for."""

    def respond(self, start: int, end: int) -> FakeResponse:
        return FakeResponse(self.data, status_code=200)


class Unreachable(RangeServer):
    def respond(self, start: int, end: int) -> FakeResponse:
        raise AssertionError("the source must not be asked")


class GatedServer(RangeServer):
    """Holds the first responses open until more than `limit` are open at once, or for `hold` seconds.

    With at most `limit` connections the hold simply expires, and then max_active == limit;
    with more, the (limit + 1)-th connection shows up in max_active.
    """

    def __init__(self, limit: int, hold: float = 0.3) -> None:
        super().__init__()
        self.limit, self.hold = limit, hold
        self.active = self.max_active = 0
        self.released = False
        self._cond = threading.Condition()

    def respond(self, start: int, end: int) -> FakeResponse:
        with self._cond:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.active > self.limit:
                self.released = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self.released, timeout=self.hold):
                self.released = True
                self._cond.notify_all()
        return FakeResponse(self.data[start:end + 1], on_close=self._closed)

    def _closed(self) -> None:
        with self._cond:
            self.active -= 1


@pytest.fixture
def store(blob_store) -> BlobStore:
    return blob_store


def fetch(server, store, partial, digest=DIGEST, size=len(DATA), options=OPTIONS, counted=None) -> Path:
    on_bytes = counted.append if counted is not None else (lambda n: None)
    return download_blob(server, digest, size, store, partial, options, on_bytes=on_bytes)


def partial_files(partial: Path) -> set[str]:
    return {p.name for p in partial.iterdir() if not p.name.endswith(".lock")} if partial.exists() else set()


# plan_parts --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "size, part_bytes, expected",
    [
        (0, 10, []),
        (-5, 10, []),
        (1, 10, [(0, 1)]),
        (10, 10, [(0, 10)]),
        (10, 4, [(0, 4), (4, 4), (8, 2)]),
        (10, 100, [(0, 10)]),
        (3, 0, [(0, 1), (1, 1), (2, 1)]),
        (10_000, 2500, [(0, 2500), (2500, 2500), (5000, 2500), (7500, 2500)]),
    ],
)
def test_plan_parts(size, part_bytes, expected):
    assert plan_parts(size, part_bytes) == expected


@pytest.mark.parametrize("size, part_bytes", [(1, 1), (7, 1), (99, 10), (1000, 1000), (12_345, 1000),
                                              ((32 << 20) * 3 + 1, 32 << 20), (5, 32 << 20)])
def test_plan_parts_cover_the_blob_exactly_in_order(size, part_bytes):
    plan = plan_parts(size, part_bytes)
    assert plan[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(plan))
    assert sum(n for _, n in plan) == size
    assert all(n == part_bytes for _, n in plan[:-1])
    assert 0 < plan[-1][1] <= part_bytes


# download_blob -----------------------------------------------------------------------------------

def test_parallel_download_commits_the_exact_bytes_under_the_digest(store, partial):
    server = RangeServer()
    counted: list[int] = []

    path = fetch(server, store, partial, counted=counted)

    assert path == store.path(DIGEST) == store.root / f"sha256-{DIGEST.hex}"
    assert path.read_bytes() == DATA
    assert sorted((s, e) for s, e, _ in server.requests) == [(0, 2499), (2500, 4999), (5000, 7499), (7500, 9999)]
    assert {t for _, _, t in server.requests} == {OPTIONS.stall_seconds}
    assert sum(counted) == len(DATA)
    assert all(r.closed for r in server.responses)
    assert partial_files(partial) == set()
    assert [p.name for p in store.root.iterdir()] == [DIGEST.filename]


def test_many_ranges_use_at_most_parts_connections_at_once(store, partial):
    server = GatedServer(limit=3)
    fetch(server, store, partial, options=DownloadOptions(parts=3, part_bytes=1000, chunk_bytes=300,
                                                          save_every_seconds=0.02, ramp_every_seconds=0.01))
    assert store.path(DIGEST).read_bytes() == DATA
    assert server.starts == list(range(0, 10_000, 1000))
    assert server.max_active == 3


def test_a_fast_source_keeps_a_single_connection(store, partial):
    server = GatedServer(limit=1, hold=0.05)
    fetch(server, store, partial, options=DownloadOptions(parts=4, part_bytes=1000, chunk_bytes=300,
                                                          ramp_every_seconds=0.01, ramp_below_bytes_per_second=0))
    assert store.path(DIGEST).read_bytes() == DATA
    assert server.max_active == 1
    assert server.starts == list(range(0, 10_000, 1000)), "one connection takes the ranges in order"


def test_single_range_when_the_blob_is_smaller_than_a_part(store, partial):
    server = RangeServer()
    fetch(server, store, partial, options=DownloadOptions(parts=8, part_bytes=1 << 20))
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


def test_failed_download_keeps_its_state_and_the_next_one_resumes_every_range(store, partial):
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
    assert all(start > part for start, part in zip(good.starts, PART_STARTS, strict=False))
    assert good.bytes_requested == len(DATA) - 4 * keep
    assert sum(counted) == len(DATA)  # resumed bytes are reported too, so progress reaches 100 %
    assert partial_files(partial) == set()


def test_resumed_bytes_are_reported_apart_from_the_bytes_that_crossed_the_network(store, partial):
    """Issue 22, finding 4: a resumed download counted what it found on disk as if it had been received."""
    keep = 1000
    with pytest.raises(SourceUnavailableError):
        fetch(CuttingServer(keep), store, partial)
    received: list[int] = []
    resumed: list[int] = []

    download_blob(RangeServer(), DIGEST, len(DATA), store, partial, OPTIONS, on_bytes=received.append,
                  on_resumed=resumed.append)

    assert resumed == [4 * keep]
    assert sum(received) == len(DATA) - 4 * keep
    assert store.path(DIGEST).read_bytes() == DATA


class StoppingServer(RangeServer):
    """Serves each range slowly, in chunks; sets `stop` once `after` bytes went out."""

    def __init__(self, stop: threading.Event, after: int) -> None:
        super().__init__()
        self.stop, self.after, self.sent = stop, after, 0

    def respond(self, start: int, end: int) -> FakeResponse:
        server = self

        class Slow(FakeBody):
            def read(self, amt=None, decode_content=None):
                chunk = super().read(min(amt or 100, 100))
                with server._lock:
                    server.sent += len(chunk)
                    if server.sent >= server.after:
                        server.stop.set()
                return chunk
        resp = FakeResponse(b"")
        resp.raw = Slow(self.data[start:end + 1], None)
        return resp


def test_a_stop_ends_the_download_at_the_next_read_and_keeps_the_partial_for_the_next_start(store, partial):
    """SIGTERM (DownloadOptions.stop): no more bytes are asked for, the partial and its state stay."""
    stop = threading.Event()
    server = StoppingServer(stop, after=3000)
    received: list[int] = []

    with pytest.raises(DownloadStoppedError, match="shutting down"):
        download_blob(server, DIGEST, len(DATA), store, partial, replace(OPTIONS, stop=stop), on_bytes=received.append)

    assert not store.has(DIGEST)
    assert partial_files(partial) == {DIGEST.filename, f"{DIGEST.filename}.json"}
    saved = sum(c for _, _, c in json.loads((partial / f"{DIGEST.filename}.json").read_text())["parts"])
    assert saved == sum(received) and 3000 <= saved < 3000 + 4 * 300  # at most one read per connection after it
    resumed: list[int] = []
    again = RangeServer()
    download_blob(again, DIGEST, len(DATA), store, partial, OPTIONS, on_resumed=resumed.append)
    assert resumed == [saved] and again.bytes_requested == len(DATA) - saved
    assert store.path(DIGEST).read_bytes() == DATA


def test_resume_fetches_only_the_missing_ranges(store, partial):
    with pytest.raises(SourceUnavailableError):
        fetch(CuttingServer(keep=700, cut={2500}), store, partial)
    state = json.loads((partial / f"{DIGEST.filename}.json").read_text())
    assert state["parts"] == [[0, 2500, 2500], [2500, 2500, 700], [5000, 2500, 2500], [7500, 2500, 2500]]

    good = RangeServer()
    fetch(good, store, partial)

    assert [(s, e) for s, e, _ in good.requests] == [(3200, 4999)]
    assert store.path(DIGEST).read_bytes() == DATA


def test_dropped_connection_is_resumed_at_the_byte_it_stopped(store, partial):
    server = DropOnceServer(keep=600)
    fetch(server, store, partial, options=DownloadOptions(parts=2, part_bytes=5000, part_attempts=1,
                                                          chunk_bytes=300, save_every_seconds=0.02))
    assert store.path(DIGEST).read_bytes() == DATA
    assert server.starts == [0, 600, 5000, 5600]


def test_source_that_keeps_closing_early_is_unavailable(store, partial):
    with pytest.raises(SourceUnavailableError, match="closing"):
        fetch(CuttingServer(keep=100, error=None), store, partial)
    assert not store.has(DIGEST)
    assert f"{DIGEST.filename}.json" in partial_files(partial)


def test_source_ignoring_range_is_a_source_error(store, partial):
    with pytest.raises(SourceError, match="ignored the Range"):
        fetch(IgnoresRange(), store, partial)
    assert not store.has(DIGEST)


def test_full_answer_to_a_request_for_everything_is_fine(store, partial):
    fetch(IgnoresRange(), store, partial, options=DownloadOptions(parts=1, part_bytes=1 << 20, chunk_bytes=300))
    assert store.path(DIGEST).read_bytes() == DATA


def test_single_stream_from_a_source_ignoring_range_restarts_by_reading_past_what_it_has(store, partial):
    class CutOnceIgnoresRange(IgnoresRange):
        def respond(self, start: int, end: int) -> FakeResponse:
            if len(self.requests) == 1:
                return FakeResponse(self.data[:3000], status_code=200, then_raise=requests.ConnectionError("reset"))
            return super().respond(start, end)

    server = CutOnceIgnoresRange()
    counted: list[int] = []
    fetch(server, store, partial, counted=counted, options=DownloadOptions(
        parts=1, part_bytes=len(DATA), chunk_bytes=300, retry_backoff_seconds=0))
    assert store.path(DIGEST).read_bytes() == DATA
    assert [(s, e) for s, e, _ in server.requests] == [(0, 9999), (3000, 9999)]
    assert sum(counted) == len(DATA), "the bytes read past are not counted twice"


class StreamServer(RangeServer):
    """A source that cannot tell the size: `open_range(start, None)`; the first answer breaks after 4000 bytes."""

    def respond(self, start: int, end: int | None) -> FakeResponse:
        assert end is None
        if len(self.requests) == 1:
            return FakeResponse(self.data[:4000], status_code=200, then_raise=requests.ConnectionError("reset"))
        return FakeResponse(self.data[start:], status_code=206)


@pytest.mark.parametrize("digest", [None, DIGEST], ids=["unknown-digest", "known-digest"])
def test_unknown_size_is_one_stream_resumed_where_it_broke(store, partial, digest):
    server = StreamServer()
    counted: list[int] = []
    path = download_blob(server, digest, None, store, partial, replace(OPTIONS, retry_backoff_seconds=0),
                         on_bytes=counted.append, key="k")
    assert path == store.path(DIGEST) and path.read_bytes() == DATA
    assert [s for s, _, _ in server.requests] == [0, 4000]
    assert sum(counted) == len(DATA)
    assert partial_files(partial) == set()


def test_unknown_size_with_other_bytes_than_promised_is_dropped(store, partial):
    promised = Digest.of_bytes(b"x")
    with pytest.raises(DigestMismatchError):
        download_blob(StreamServer(), promised, None, store, partial, replace(OPTIONS, retry_backoff_seconds=0))
    assert partial_files(partial) == set() and not store.has(DIGEST)


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


# real requests.Response objects over in-memory bodies (no socket) -------------------------------

class BreakingBody(io.RawIOBase):
    """A connection's byte stream: `data`, then `error` (a reset or a read timeout) if given."""

    def __init__(self, data: bytes, error: Exception | None) -> None:
        self.data, self.error, self.pos = data, error, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pos >= len(self.data):
            if self.error is not None:
                raise self.error
            return 0
        n = min(len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def real_response(body: bytes, error: Exception | None = None, status: int = 206) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.raw = urllib3.HTTPResponse(body=BreakingBody(body, error), preload_content=False, status=status)
    return resp


def test_download_through_real_responses(store, partial):
    path = download_blob(lambda start, end, timeout: real_response(DATA[start:end + 1]),
                         DIGEST, len(DATA), store, partial, OPTIONS)
    assert path.read_bytes() == DATA


@pytest.mark.parametrize("error", [ConnectionResetError("reset by peer"), TimeoutError("timed out")],
                         ids=["reset", "read-timeout"])
def test_real_connection_failures_are_transient(store, partial, error):
    keep = 1000

    def open_range(start: int, end: int, timeout: float) -> requests.Response:
        part = start - start % 2500
        return real_response(DATA[start:part + keep] if start < part + keep else b"", error)

    with pytest.raises(SourceUnavailableError):
        download_blob(open_range, DIGEST, len(DATA), store, partial, OPTIONS)
    state = json.loads((partial / f"{DIGEST.filename}.json").read_text())
    # urllib3 drops the bytes of the read that broke, so up to one chunk per range is fetched again.
    assert all(keep - OPTIONS.chunk_bytes <= c <= keep for _, _, c in state["parts"])


def test_ensure_space_refuses_what_does_not_fit(tmp_path):
    from eldric.transfer.diskspace import ensure_space
    from eldric.transfer.errors import InsufficientSpaceError
    ensure_space(tmp_path, 1, "tiny", reserve=0)
    with pytest.raises(InsufficientSpaceError, match=r"no space left on .* for huge: needs 1024.00 TiB, has "):
        ensure_space(tmp_path, 1 << 50, "huge", reserve=0)

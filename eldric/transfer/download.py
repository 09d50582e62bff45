"""Parallel ranged download of one blob: resume, stall detection, sha256 verified, atomic.

The blob is cut into fixed-size byte ranges handed out in order to `parts`
concurrent connections and written in place (pwrite) into
`<partial dir>/sha256-<hex>`. Handing out many ranges in order (instead of one
big range per connection) keeps the written prefix contiguous, so the hasher
keeps pace with the download instead of waiting for the last range. A JSON state file records how
far each part got, so a killed agent resumes instead of starting over. A hasher
thread follows the contiguous written prefix, so verification overlaps the
download instead of re-reading the whole file afterwards. Only a verified file is
renamed into the store (after Ollama's server/download.go and verifyBlob).

A source that ignores Range answers a resumed first range with the whole file
(200): the bytes already on disk are read past and dropped, which is starting
over without rewriting them. A blob of unknown size (a URL without
Content-Length) is fetched as one stream, hashed as it arrives; such a download
resumes within a run but starts over in the next one.

A failure a retry can mend (a transient one) keeps the partial data for the retry;
any other (digest mismatch, a source error, a full disk) deletes it at once
(eldric.transfer.partials). A full disk is reported as `no space left on <device>:
needs X, has Y` (eldric.transfer.diskspace), an ordinary failure.

With a `Swarm` (eldric.transfer.swarm) the parts are the swarm's ranges, and each
connection asks the swarm whether its next range comes from a peer (hashed while it
arrives, kept only if it matches the range's sha256 on the board) or from upstream
under a lease; what a connection fetched from upstream is hashed per range and
published for the peers. The resume state, the hasher and the rename are the same.
`DownloadOptions.limiter` caps the worker's download rate (all its downloads share
one bucket); `upstream_take` the job's cluster-wide upstream rate.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import requests

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError, EldricError
from eldric.transfer.bodies import direct_reader, pwrite_all, read_past, reuse_connection
from eldric.transfer.diskspace import is_disk_full, no_space_error
from eldric.transfer.errors import DownloadStoppedError, SourceError, SourceUnavailableError
from eldric.transfer.partials import LOCK_SUFFIX, STATE_SUFFIX, discard, locked, partial_name, saved_parts
from eldric.transfer.ratelimit import NoLimit, TokenBucket
from eldric.transfer.retry import TRANSIENT_ERRORS, backoff_delay, connection_cause
from eldric.transfer.swarm import PeerRead, Swarm, Task, range_bytes_for

# open_range(start, end_inclusive, read_timeout) -> streaming response for those bytes;
# end None (only for a blob of unknown size): from `start` to the end of the file.
RangeOpener = Callable[[int, int | None, float], requests.Response]
PACED_READ = 256 << 10  # bytes read at a time under a rate cap
log = logging.getLogger(__name__)
_TRANSIENT = (*TRANSIENT_ERRORS, SourceUnavailableError)
_KEEPS_PARTIAL = (*_TRANSIENT, DownloadStoppedError)  # a retry or the next start resumes it


@dataclass(frozen=True)
class DownloadOptions:
    parts: int = 8  # most connections at once
    part_bytes: int = 64 << 20
    stall_seconds: float = 30.0
    part_attempts: int = 4  # tries of one range in a row that bring no new byte
    retry_backoff_seconds: float = 0.5  # first wait before another try; it doubles, up to 5 s
    chunk_bytes: int = 1 << 20
    save_every_seconds: float = 1.0
    hash_step: int = 1 << 20  # small steps keep the hasher right behind the writer, on cache-hot data
    # Start with one connection and open another each interval while slower than this:
    # a WAN link gains from parallel ranges, a fast LAN or loopback only loses CPU to them.
    ramp_below_bytes_per_second: int = 256 << 20
    ramp_every_seconds: float = 0.5
    start_connections: int = 1
    # The worker's download cap (ELDRIC_MAX_DOWNLOAD_RATE): one bucket shared by all its downloads.
    limiter: TokenBucket | NoLimit = field(default_factory=NoLimit, compare=False)
    # Set when the process shuts down: every connection stops at its next read, the partial stays.
    stop: threading.Event = field(default_factory=threading.Event, compare=False)


class _Part:
    __slots__ = ("completed", "length", "offset")

    def __init__(self, offset: int, length: int, completed: int = 0) -> None:
        self.offset, self.length, self.completed = offset, length, completed


def plan_parts(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """Cut `size` bytes into (offset, length) ranges of `part_bytes` (the last may be shorter)."""
    step = max(1, part_bytes)
    return [(off, min(step, size - off)) for off in range(0, max(0, size), step)]


def download_blob(open_range: RangeOpener, digest: Digest | None, size: int | None, store: BlobStore,
                  partial_dir: Path, options: DownloadOptions = DownloadOptions(),
                  on_bytes: Callable[[int], None] = lambda n: None, key: str | None = None,
                  owner: str | None = None, swarm: Swarm | None = None,
                  upstream_take: Callable[[int], None] | None = None,
                  on_resumed: Callable[[int], None] | None = None) -> Path:
    """Fetch one blob into `store` unless present; raise DigestMismatchError on bad bytes.

    With `digest` None (a plain URL whose hash nobody published) the bytes are
    stored under the digest they turn out to have; `key` then names the partial
    download so a retry resumes it. `size` None: unknown, fetched as one stream.
    `on_bytes(n)` is called with each batch of new bytes, from the download threads; `on_resumed(n)` once
    with the bytes a resumed partial download already had (given to `on_bytes` when None: progress only).
    `owner` (a job id) is recorded in the resume state, so the partial data can be
    dropped once that job has ended. InsufficientSpaceError when the disk fills.
    `swarm`: share the blob's ranges with peers (only for a known digest and size, one MiB
    or more); `upstream_take(n)` waits until `n` more upstream bytes fit the job's cap.
    DownloadStoppedError when `options.stop` is set: the partial data stays for the next start.
    """
    partial_dir.mkdir(parents=True, exist_ok=True)
    if swarm is not None and (digest is None or size is None or size < swarm.options.min_size):
        swarm = None
    if swarm is not None:
        agreed = swarm.join(size, swarm.options.range_bytes or range_bytes_for(size))
        if agreed is None:
            swarm = None  # the board is away (Redis down): alone, as without fan-out
        else:
            options = replace(options, part_bytes=agreed)
    name = partial_name(digest, key)
    with locked(partial_dir / f"{name}{LOCK_SUFFIX}"):
        # Another thread or process may have finished it while we waited for the lock.
        if digest is not None and store.has(digest, size):
            return store.path(digest)
        try:
            return _Download(open_range, digest, size, store, partial_dir, options, on_bytes, name, owner,
                             swarm, upstream_take, on_resumed or on_bytes).run()
        except _KEEPS_PARTIAL:
            raise  # the partial data stays for the retry
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            _drop_partial(partial_dir, name, swarm)  # a retry starts over, so the message says what that needs
            raise no_space_error(partial_dir, size, str(digest) if digest else name) from None
        except EldricError:
            _drop_partial(partial_dir, name, swarm)  # no retry follows: nothing will resume it
            raise


def _drop_partial(partial_dir: Path, name: str, swarm: Swarm | None) -> None:
    """Delete a download's partial data; its peers must not ask us for its ranges any more."""
    discard(partial_dir, name)
    if swarm is not None:
        swarm.forget()


class _Download:
    def __init__(self, open_range: RangeOpener, digest: Digest | None, size: int | None, store: BlobStore,
                 partial_dir: Path, options: DownloadOptions, on_bytes: Callable[[int], None], name: str,
                 owner: str | None = None, swarm: Swarm | None = None,
                 upstream_take: Callable[[int], None] | None = None,
                 on_resumed: Callable[[int], None] | None = None) -> None:
        self.open_range, self.digest, self.size, self.store = open_range, digest, size, store
        self.options, self.on_bytes, self.owner = options, on_bytes, owner
        self.on_resumed = on_resumed or on_bytes
        self.swarm, self.upstream_take = swarm, upstream_take
        self.busy: set[int] = set()  # parts one of my connections works on (swarm mode)
        self._peer_reads: dict[int, PeerRead] = {}  # ranges in flight from peers (swarm mode)
        capped = upstream_take is not None or not isinstance(options.limiter, NoLimit)
        self._paced_read = PACED_READ if capped else options.chunk_bytes  # small reads keep a capped link smooth
        self._state_lock = threading.Lock()
        self.partial_dir, self.name = partial_dir, name
        self.data_path = partial_dir / name
        self.state_path = partial_dir / f"{name}{STATE_SUFFIX}"
        self.failed = threading.Event()
        self.wrote = threading.Event()
        self.parts: list[_Part] = []
        self._first_open = 0  # parts before it are complete; the hasher asks for the frontier often

    def run(self) -> Path:
        if self.size is None:  # nothing to plan or resume by: one stream, kept only if it completes
            self.state_path.unlink(missing_ok=True)
            try:
                with open(self.data_path, "wb") as out:
                    actual = self._fetch_stream(out)
            except BaseException:
                self.data_path.unlink(missing_ok=True)
                raise
            return self._commit(actual)
        self.parts = self._load_or_plan()
        fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            if self.swarm is not None:
                self._join_swarm(fd)
            resumed = sum(p.completed for p in self.parts)
            if resumed:
                self.on_resumed(resumed)
            actual = self._fetch_all(fd)
        finally:
            os.close(fd)
        return self._commit(actual)

    def _commit(self, actual: Digest) -> Path:
        """Move the verified file into the store under its digest; drop it if it is not what was promised."""
        if self.digest is not None and actual != self.digest:
            self.data_path.unlink(missing_ok=True)
            self.state_path.unlink(missing_ok=True)
            if self.swarm is not None and not self.swarm.alone:  # its ranges' hashes came from bad bytes: start clean
                try:
                    self.swarm.board.reset()
                except Exception as exc:  # noqa: BLE001 - the board expires by itself
                    log.info("could not clear the swarm board: %s", exc)
            raise DigestMismatchError(f"digest mismatch: expected {self.digest}, got {actual}")
        final = self.store.commit(self.data_path, actual)
        self.state_path.unlink(missing_ok=True)
        return final

    def _fetch_all(self, fd: int) -> Digest:
        hasher: dict[str, object] = {}
        hash_thread = threading.Thread(target=self._hash_loop, args=(fd, hasher), daemon=True)
        hash_thread.start()
        self.todo = deque(p for p in self.parts if p.completed < p.length)
        self.todo_lock = threading.Lock()
        most = max(1, min(self.options.parts, len(self.todo)))
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=most, thread_name_prefix="part") as pool:
                self._supervise(pool, fd, most)
            fetched = time.monotonic()
        except BaseException:
            self.failed.set()
            self.wrote.set()
            if self.swarm is not None:
                self.swarm.release_all()
            try:
                self._save_state()
            except OSError:  # a full disk: the data is dropped anyway
                pass
            raise
        hash_thread.join()
        if self.swarm is not None:
            self.swarm.release_all()  # my upstream slot goes to whoever still needs one
        log.info("%s: %d bytes fetched in %.2f s, verified %.2f s later", self.data_path.name, self.size,
                 fetched - started, time.monotonic() - fetched)
        if "error" in hasher:
            raise hasher["error"]  # type: ignore[misc]
        return Digest(hasher["sha256"].hexdigest())  # type: ignore[union-attr]

    def _supervise(self, pool: ThreadPoolExecutor, fd: int, most: int) -> None:
        """Run connections over the ordered range queue; save resume state; add one while the link is slow."""
        active = max(1, min(most, self.options.start_connections))
        pending = {pool.submit(self._connection, fd) for _ in range(active)}
        last_save = time.monotonic()
        last_bytes, last_time = self._done_bytes(), last_save
        while pending:
            done, pending = wait(pending, timeout=self.options.ramp_every_seconds, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            now = time.monotonic()
            if self.swarm is not None:
                self.swarm.keep_leases()
                self._judge_peers()
            if now - last_save >= self.options.save_every_seconds:
                self._save_state()
                last_save = now
            rate = (self._done_bytes() - last_bytes) / max(1e-6, now - last_time)
            if pending and active < most and self._more_to_do() and rate < self.options.ramp_below_bytes_per_second:
                pending.add(pool.submit(self._connection, fd))
                active += 1
                log.debug("%s: %.0f MB/s, opening connection %d", self.data_path.name, rate / 1e6, active)
            last_bytes, last_time = self._done_bytes(), now
        self._save_state()
        # Every part, not the queue: a connection that took the last part off the queue and then saw the stop
        # leaves the queue empty and its part unfinished, and the hasher would wait for those bytes for ever.
        if any(p.completed < p.length for p in self.parts):
            if self.options.stop.is_set():
                raise DownloadStoppedError(f"download of {self.data_path.name} stopped: the agent is shutting down")
            raise SourceError(f"download of {self.data_path.name} ended with parts unfinished")

    def _halted(self) -> bool:
        """The download failed elsewhere, or the process is shutting down: connections stop at their next read."""
        return self.failed.is_set() or self.options.stop.is_set()

    def _done_bytes(self) -> int:
        return sum(p.completed for p in self.parts)

    def _more_to_do(self) -> bool:
        if self.swarm is None:
            return bool(self.todo)
        return any(p.completed < p.length for p in self.parts)

    def _connection(self, fd: int) -> None:
        """One connection's loop: take the next range in order until none is left."""
        if self.swarm is not None:
            self._swarm_connection(fd, self.swarm)
            return
        while not self._halted():
            with self.todo_lock:
                if not self.todo:
                    return
                part = self.todo.popleft()
            self._fetch_part_now(fd, part)

    def _fetch_part_now(self, fd: int, part: _Part) -> None:
        failures = 0
        while part.completed < part.length and not self._halted():
            start = part.offset + part.completed
            before = part.completed
            try:
                self._stream_range(fd, part, start)
            except _TRANSIENT as exc:
                failures = 0 if part.completed > before else failures + 1
                self._wait_before_retry(failures, exc)
                continue
            if part.completed == before:
                failures += 1  # the source closed the stream early without sending anything
                if failures >= self.options.part_attempts:
                    raise SourceUnavailableError(f"source keeps closing the download of {self.data_path.name}")

    def _wait_before_retry(self, failures: int, exc: BaseException) -> None:
        if failures >= self.options.part_attempts:
            raise SourceUnavailableError(f"download of {self.data_path.name} stalled or failed: {connection_cause(exc)}") from None
        time.sleep(backoff_delay(failures - 1, base=self.options.retry_backoff_seconds, cap=5.0))

    def _stream_range(self, fd: int, part: _Part, start: int) -> None:
        end = part.offset + part.length - 1
        with self.open_range(start, end, self.options.stall_seconds) as resp:
            readinto = direct_reader(resp)
            buf = memoryview(bytearray(self.options.chunk_bytes))
            if resp.status_code == 200 and start != 0:
                if part.offset != 0:
                    raise SourceError(f"source ignored the Range request for {self.data_path.name}")
                if not read_past(readinto, buf, start):  # the whole file again: read past what we have
                    return
            while part.completed < part.length:
                if self._halted():
                    return
                want = min(len(buf), part.length - part.completed, self._paced_read)
                # Caps are paid before the read: a read of a whole chunk ahead of its tokens is a burst on the link.
                self.options.limiter.take(want)
                if self.upstream_take is not None:
                    self.upstream_take(want)
                n = readinto(buf[:want])
                if not n:
                    return
                pwrite_all(fd, buf[:n], part.offset + part.completed)
                part.completed += n
                self.on_bytes(n)
                self.wrote.set()
            reuse_connection(resp)

    def _fetch_stream(self, out: BinaryIO) -> Digest:
        """The whole blob of unknown size as one stream, hashed as it arrives; a retry resumes where it broke."""
        hasher, written, failures = hashlib.sha256(), 0, 0
        while True:
            before = written
            try:
                with self.open_range(written, None, self.options.stall_seconds) as resp:
                    # urllib3's read enforces Content-Length (a cut is an error, not a short file) and decodes
                    # a Content-Encoding the server applied anyway.
                    skip = written if resp.status_code == 200 else 0  # 200: sent from byte 0 again
                    while chunk := resp.raw.read(self.options.chunk_bytes, decode_content=True):
                        dropped = min(skip, len(chunk))
                        skip -= dropped
                        if dropped < len(chunk):
                            fresh = memoryview(chunk)[dropped:]
                            out.write(fresh)
                            hasher.update(fresh)
                            written += len(fresh)
                            self.on_bytes(len(fresh))
                    if not skip:
                        return Digest(hasher.hexdigest())
            except _TRANSIENT as exc:
                failures = 0 if written > before else failures + 1
                self._wait_before_retry(failures, exc)
                continue
            failures += 1  # the source sent fewer bytes than we already had
            self._wait_before_retry(failures, SourceError("the source sent a shorter file than before"))

    def _frontier(self) -> int:
        """End of the contiguous written prefix. Parts never lose bytes, so the scan resumes where it stopped:
        a 100 GiB blob has 1600 parts and the hasher asks once per MiB."""
        parts = self.parts
        while self._first_open < len(parts) and parts[self._first_open].completed >= parts[self._first_open].length:
            self._first_open += 1
        if self._first_open < len(parts):
            p = parts[self._first_open]
            return p.offset + p.completed
        return self.size

    def _hash_loop(self, fd: int, out: dict) -> None:
        h = hashlib.sha256()
        hashed = 0
        step = self.options.hash_step
        view = memoryview(bytearray(step))
        try:
            while hashed < self.size:
                if self.failed.is_set():
                    return
                frontier = self._frontier()
                if frontier > hashed:
                    n = os.preadv(fd, [view[: min(step, frontier - hashed)]], hashed)
                    if n <= 0:
                        raise OSError(f"short read of {self.data_path} at {hashed}")
                    h.update(view[:n])
                    hashed += n
                else:
                    self.wrote.wait(0.05)
                    self.wrote.clear()
            out["sha256"] = h
        except OSError as exc:
            out["error"] = exc

    def _load_or_plan(self) -> list[_Part]:
        saved = saved_parts(self.partial_dir, self.name, self.digest, self.size)
        if saved is not None and self.swarm is not None:
            plan = plan_parts(self.size, self.options.part_bytes)
            if [(o, n) for o, n, _ in saved] != plan:  # resumed outside a swarm, or with another range size
                return relayout(saved, plan)
        if saved is not None:
            return [_Part(o, n, c) for o, n, c in saved]
        self.data_path.unlink(missing_ok=True)
        return [_Part(o, n) for o, n in plan_parts(self.size, self.options.part_bytes)]

    def _save_state(self) -> None:
        with self._state_lock:  # connections save too (swarm mode): one writer of the temp file at a time
            state = {"digest": str(self.digest), "size": self.size, "owner": self.owner,
                     "parts": [[p.offset, p.length, p.completed] for p in self.parts]}
            tmp = self.state_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.state_path)

    # --- swarm mode -------------------------------------------------------------------------------

    def _join_swarm(self, fd: int) -> None:
        """Bring resumed parts into the swarm: publish whole ones, drop what the board contradicts.

        A whole part nobody published is my own earlier upstream fetch (the agent died before
        publishing): trusted as any upstream byte, hashed and published. A part that does not
        match the board's hash, or a half part someone else has whole, starts over.
        """
        view = self.swarm.view(fresh=True)
        if self.swarm.alone:
            return
        for i, p in enumerate(self.parts):
            if not p.completed:
                continue
            if p.completed < p.length:
                if i in view.sha:
                    p.completed = 0
                continue
            sha = self._range_sha(fd, p)
            known = view.sha.get(i)
            if known is not None and known != sha:
                p.completed = 0
            else:
                self.swarm.fetched(i, None if known else sha)
        self._save_state()

    def _range_sha(self, fd: int, part: _Part) -> str:
        h = hashlib.sha256()
        view = memoryview(bytearray(min(self.options.hash_step, part.length) or 1))
        pos, end = part.offset, part.offset + part.length
        while pos < end:
            n = os.preadv(fd, [view[: min(len(view), end - pos)]], pos)
            if n <= 0:
                raise OSError(f"short read of {self.data_path} at {pos}")
            h.update(view[:n])
            pos += n
        return h.hexdigest()

    def _swarm_connection(self, fd: int, swarm: Swarm) -> None:
        """One connection's loop in a swarm: a range from a peer, or from upstream under a lease, or wait."""
        while not self._halted():
            with self.todo_lock:
                open_ranges = [i for i, p in enumerate(self.parts) if p.completed < p.length and i not in self.busy]
            if not open_ranges:
                return  # the rest is on my other connections (one of them takes back a range that fails)
            task = swarm.next_task(open_ranges)
            if task is None:
                swarm.wait()
                continue
            with self.todo_lock:
                part = self.parts[task.index]
                if task.index in self.busy or part.completed >= part.length:
                    if task.peer is None:
                        swarm.give_up(task.index)
                    continue
                self.busy.add(task.index)
            try:
                if task.peer is None:
                    self._upstream_range(fd, swarm, task.index)
                else:
                    self._peer_range(fd, swarm, task)
            finally:
                with self.todo_lock:
                    self.busy.discard(task.index)

    def _upstream_range(self, fd: int, swarm: Swarm, index: int) -> None:
        part = self.parts[index]
        before = part.completed
        try:
            self._fetch_part_now(fd, part)
        except BaseException:
            swarm.give_up(index)
            raise
        if part.completed < part.length:  # the download failed elsewhere meanwhile
            swarm.give_up(index)
            return
        sha = self._range_sha(fd, part)
        self._save_state()  # my blob server serves what the state file says is whole: save before telling peers
        swarm.fetched(index, sha, nbytes=part.length - before)

    def _peer_range(self, fd: int, swarm: Swarm, task: Task) -> None:
        """Range `task.index` from a peer, hashed as it arrives; counted only if it matches the board.

        A peer that falls behind the swarm's minimum rate (Swarm.is_too_slow) is cut off, by its own
        connection between reads or by the supervisor (`_judge_peers`) while a read blocks, and dropped.
        """
        part = self.parts[task.index]
        read = PeerRead(task.peer, part.length, swarm.clock)
        why, lacks = "", False
        with self.todo_lock:
            self._peer_reads[task.index] = read
        try:
            with swarm.open_range_from(task.peer, part.offset, part.offset + part.length - 1) as resp:
                read.resp = resp
                if resp.status_code != 206:
                    why, lacks = f"answered {resp.status_code}", resp.status_code in (404, 416)
                else:
                    self._read_peer_body(fd, swarm, part, read)
        except _LocalWriteError as exc:
            swarm.received(task.peer, -read.got)
            self.on_bytes(-read.got)
            raise exc.__cause__ from None  # our disk, not the peer: the download's own failure
        except (OSError, requests.RequestException, http.client.HTTPException) as exc:
            why = connection_cause(exc) if isinstance(exc, requests.RequestException) else type(exc).__name__
        finally:
            with self.todo_lock:
                self._peer_reads.pop(task.index, None)
        drop = read.slow is not None
        if drop:
            why = read.slow
        elif read.got == part.length and not why:
            if read.sha.hexdigest() == task.sha:
                part.completed = part.length
                self.wrote.set()
                self._save_state()
                swarm.fetched(task.index, None, peer=task.peer)
                return
            why, drop = "failed its sha256 check", True
        if lacks:
            swarm.peer_lacks(task.peer, task.index, why)
        elif drop or not self._halted():
            swarm.peer_failed(task.peer, task.index, why or f"ended after {read.got} of {part.length} bytes", drop=drop)
        swarm.received(task.peer, -read.got)
        self.on_bytes(-read.got)

    def _read_peer_body(self, fd: int, swarm: Swarm, part: _Part, read: PeerRead) -> None:
        readinto = direct_reader(read.resp)
        buf = memoryview(bytearray(self.options.chunk_bytes))
        while read.got < part.length and not self._halted():
            if read.judge(swarm):
                return
            want = min(len(buf), part.length - read.got, self._paced_read)
            with read.paused():  # our own download cap is not the peer's slowness
                self.options.limiter.take(want)
            n = readinto(buf[:want])
            if not n:
                return
            read.sha.update(buf[:n])
            try:
                pwrite_all(fd, buf[:n], part.offset + read.got)
            except OSError as exc:
                raise _LocalWriteError(str(exc)) from exc
            read.got += n
            swarm.received(read.peer, n)
            self.on_bytes(n)
        if read.got == part.length:
            reuse_connection(read.resp)

    def _judge_peers(self) -> None:
        """Cut off every peer range that fell behind the minimum rate (its read may block for long)."""
        with self.todo_lock:
            reads = list(self._peer_reads.values())
        for read in reads:
            if read.judge(self.swarm):
                read.cut()


def relayout(saved: list[tuple[int, int, int]], plan: list[tuple[int, int]]) -> list[_Part]:
    """Parts of a new layout, each as far complete as the saved parts' written bytes reach from its start."""
    written = sorted((o, o + c) for o, _, c in saved if c > 0)
    parts = []
    for offset, length in plan:
        reach = offset
        for start, stop in written:
            if start <= reach < stop:
                reach = stop
        parts.append(_Part(offset, length, min(length, reach - offset)))
    return parts


class _LocalWriteError(EldricError):
    """A write to our own partial file failed (full disk, I/O error): not the peer's fault."""

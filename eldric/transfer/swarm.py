"""Peer-assisted download of one blob: each range from upstream once per cluster, the rest from peers.

Every worker downloading the same blob joins its *swarm*: a board (eldric/cluster/swarmboard.py,
in Redis) that all of them read and write. The blob is cut into ranges of one size the first
joiner fixes. For each range the board keeps

- its sha256, written by the worker that fetched it from upstream;
- its holders: workers that have it verified (finished blobs and downloads in progress);
- at most one upstream lease (worker, expiry): only the holder of a live lease fetches that
  range from upstream. A lease is renewed while its worker lives and lapses when it dies, so
  another worker takes the range over: a lost worker costs at most the ranges it was fetching.

A connection of the download engine asks `next_task` what to do next, in this order: a range
a usable peer holds (lowest index first, so the written prefix stays contiguous and the
whole-blob hash keeps pace); else an upstream lease on a range nobody has fetched (or whose
holders all failed us), if the job's cap on upstream workers allows; else it waits for the
board to change. Bytes taken from a peer are hashed as they arrive and the range counts only
when its sha256 matches the board's; a peer that serves a bad range is dropped for this blob,
a peer that fails to answer is skipped for `PEER_COOLDOWN` seconds. A range no usable peer
holds any more is fetched from upstream again (costing that range, never more). The whole blob's sha256
is still checked before the rename (eldric/transfer/download.py).

A peer may also be slow on purpose: answer 206, then one byte every few seconds, each within
the read timeout (issue 21, finding 6). So a peer range has a minimum rate and, with it, an
overall deadline (`is_too_slow`): after `peer_range_base_seconds` it must have delivered
`peer_min_rate` bytes for every second beyond them, which lets a whole range of n bytes take
base + n / min_rate seconds at most. A peer that falls behind is dropped for the blob, like
one that sent bad bytes, and the range is fetched elsewhere (another holder, or upstream).
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import requests

from eldric.core.errors import EldricError

log = logging.getLogger(__name__)

MIN_RANGE = 4 << 20
MAX_RANGE = 64 << 20
SWARM_MIN_SIZE = 1 << 20  # smaller blobs (configs, templates) are not worth a board
PEER_COOLDOWN = 10.0
VIEW_MAX_AGE = 0.2  # seconds a board view is reused by the connections of one download


def range_bytes_for(size: int) -> int:
    """About 128 ranges per blob, a power of two between 4 and 64 MiB.

    Small ranges pipeline well (a peer can pass a range on as soon as it has it); large ones
    keep the board's writes few on big blobs (a 40 GB blob: 625 ranges).
    """
    want = max(1, size // 128)
    step = MIN_RANGE
    while step < want and step < MAX_RANGE:
        step <<= 1
    return step


@dataclass
class BoardView:
    sha: dict[int, str] = field(default_factory=dict)  # range -> sha256 hex, from its upstream fetcher
    holders: dict[int, list[str]] = field(default_factory=dict)  # range -> workers holding it verified


class BoardUnavailableError(EldricError):
    """The board cannot be read or written (Redis away): the download goes on alone."""


class SwarmBoard(Protocol):
    """The shared state of one blob's swarm (Redis in production). Calls raise BoardUnavailableError
    when the board cannot be reached."""

    me: str

    def join(self, size: int, range_bytes: int) -> int:
        """Agree on the range size (the first joiner's); returns it."""

    def view(self) -> BoardView: ...

    def claim_upstream(self, candidates: list[int], max_workers: int, again: Collection[int] = (),
                       max_ranges: int = 0) -> int | None:
        """Lease the first candidate nobody else holds a live lease on and nobody fetched yet (those in
        `again` even if fetched: their holders failed us); None if none, if `max_workers` other
        workers already fetch from upstream, or if `max_ranges` ranges are in flight (0: no such cap)."""

    def renew(self, ranges: Collection[int]) -> None: ...

    def release(self, index: int) -> None: ...

    def retire(self) -> None:
        """Give back all my leases and my upstream slot (my download ended)."""

    def publish(self, index: int, sha: str | None) -> None:
        """I hold range `index`, verified; `sha` when I fetched it from upstream. Drops my lease."""

    def drop_holder(self, worker: str, ranges: Collection[int] | None = None) -> int:
        """`worker` no longer holds those ranges (None: any): off their holders; a range nobody holds then
        counts as never fetched."""

    def address(self, worker: str) -> str | None: ...

    def reset(self) -> None:
        """Forget the swarm (its ranges did not add up to the blob's digest)."""


PeerOpener = Callable[[str, int, int, float], requests.Response]  # (address, start, end, read timeout)


@dataclass(frozen=True)
class Task:
    index: int
    peer: str | None = None  # a worker id; None: from upstream (under my lease)
    sha: str | None = None  # what the peer's bytes must hash to


@dataclass
class SwarmOptions:
    max_upstream_workers: int = 0  # 0: no cap
    upstream_connections: int = 4  # most upstream ranges one worker fetches at once
    upstream_ranges: int = 8  # most ranges in flight from upstream, cluster-wide (0: no cap)
    lease_seconds: float = 30.0
    peer_read_timeout: float = 10.0
    peer_range_base_seconds: float = 10.0  # a peer range's grace before its rate is judged
    peer_min_rate: int = 256 << 10  # bytes/s a peer range must keep up after that grace; 0: no minimum
    poll_seconds: float = 0.1
    range_bytes: int | None = None  # None: range_bytes_for(size)
    min_size: int = SWARM_MIN_SIZE  # smaller blobs are fetched without a board


class Swarm:
    """One worker's side of one blob's swarm: what each connection does next, and who sent what."""

    def __init__(self, board: SwarmBoard, open_peer: PeerOpener, options: SwarmOptions | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.board, self.open_peer, self.clock = board, open_peer, clock
        self.options = options or SwarmOptions()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._view: BoardView | None = None
        self._view_at = -1.0
        self.bad_peers: dict[str, str] = {}  # dropped for this blob: worker -> why
        self._cooldown: dict[str, float] = {}
        self._upstream: set[int] = set()  # ranges I lease
        self._last_renew = clock()
        self.upstream_bytes = 0
        self.peer_bytes: dict[str, int] = {}
        self.notes: list[str] = []
        self.alone_why: str | None = None  # set when the board could not be reached: why, for the progress record

    @property
    def alone(self) -> bool:
        """The board could not be reached: no peers, no leases, every range from upstream."""
        return self.alone_why is not None

    @property
    def me(self) -> str:
        return self.board.me

    def view(self, fresh: bool = False) -> BoardView:
        now = self.clock()
        if self.alone:
            return BoardView()
        if fresh or self._view is None or now - self._view_at > VIEW_MAX_AGE:
            try:
                self._view, self._view_at = self.board.view(), now
            except BoardUnavailableError as exc:
                self._go_alone(exc)
                return BoardView()
        return self._view

    def _go_alone(self, exc: BaseException) -> None:
        """The board is unreachable: fetch every missing range from upstream, as without a swarm."""
        if not self.alone:
            self.alone_why = f"swarm board unavailable: {exc}"
            self.notes.append(f"swarm board unavailable ({exc}); downloading alone")
            log.warning("swarm board unavailable (%s); this blob is downloaded alone", exc)

    def next_task(self, open_ranges: Iterable[int]) -> Task | None:
        """What one connection does next with one of `open_ranges` (missing here, nobody local on it).

        None: wait (`wait()`) and ask again.
        """
        open_list = sorted(open_ranges)
        if not open_list:
            return None
        with self._lock:
            view = self.view()
            now = self.clock()
            orphaned = []
            for i in open_list:
                sha = view.sha.get(i)
                if sha is None:
                    continue
                holders = [w for w in view.holders.get(i, ()) if w != self.me and w not in self.bad_peers]
                usable = [w for w in holders if self._cooldown.get(w, 0) <= now]
                if usable:
                    return Task(i, peer=random.choice(usable), sha=sha)  # noqa: S311 - load spreading, not security
                orphaned.append(i)  # fetched once, but no holder can give it to us now: upstream again
            if len(self._upstream) >= self.options.upstream_connections:
                return None
            candidates = [i for i in open_list if i not in view.sha and i not in self._upstream] + orphaned
            if not candidates:
                return None
            if self.alone:
                got = candidates[0]
            else:
                try:
                    got = self.board.claim_upstream(candidates[:64], self.options.max_upstream_workers,
                                                    again=orphaned, max_ranges=self.options.upstream_ranges)
                except BoardUnavailableError as exc:
                    self._go_alone(exc)
                    got = candidates[0]
            if got is None:
                return None
            self._upstream.add(got)
            return Task(got)

    def wait(self) -> None:
        with self._changed:
            self._changed.wait(self.options.poll_seconds)
        with self._lock:
            self._view_at = -1.0  # the next ask reads the board again

    def keep_leases(self) -> None:
        """Renew my upstream leases and slot (called often by the download's supervisor; writes every third of a lease)."""
        now = self.clock()
        if now - self._last_renew < self.options.lease_seconds / 3:
            return
        self._last_renew = now
        with self._lock:
            ranges = set(self._upstream)
            fetcher = ranges or self.upstream_bytes
        if fetcher and not self.alone:
            try:
                self.board.renew(ranges)
            except BoardUnavailableError as exc:
                self._go_alone(exc)

    def fetched(self, index: int, sha: str | None, *, peer: str | None = None, nbytes: int = 0) -> None:
        """Range `index` is verified here: tell the board (with its sha when it came from upstream)."""
        if not self.alone:
            try:
                self.board.publish(index, sha)
            except BoardUnavailableError as exc:
                self._go_alone(exc)
        with self._changed:
            if peer is None:
                self._upstream.discard(index)
                self.upstream_bytes += nbytes
            self._view_at = -1.0
            self._changed.notify_all()

    def received(self, peer: str, n: int) -> None:
        """`n` bytes arrived from `peer` (negative: a range that failed its check is taken back)."""
        with self._lock:
            self.peer_bytes[peer] = self.peer_bytes.get(peer, 0) + n

    def give_up(self, index: int) -> None:
        """My upstream fetch of `index` failed: let others take the range at once."""
        with self._lock:
            held = index in self._upstream
            self._upstream.discard(index)
        if held and not self.alone:
            try:
                self.board.release(index)
            except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
                log.info("could not release the lease on range %d: %s", index, exc)

    def release_all(self) -> None:
        """My download ended (done or failed): give back my leases and my upstream slot at once."""
        with self._lock:
            self._upstream = set()
        if self.alone:
            return
        try:
            self.board.retire()
        except Exception as exc:  # noqa: BLE001 - leases and slot lapse by themselves
            log.info("could not give back my upstream leases: %s", exc)

    def is_too_slow(self, got: int, elapsed: float) -> bool:
        """A peer range that delivered `got` bytes in `elapsed` seconds is behind the minimum rate.

        Allowed: `peer_range_base_seconds` + got / `peer_min_rate`, so a range of n bytes has an
        overall deadline of base + n / min_rate, and a peer sending nothing is judged at base.
        """
        rate = self.options.peer_min_rate
        return rate > 0 and elapsed > self.options.peer_range_base_seconds + got / rate

    def peer_failed(self, peer: str, index: int, why: str, *, drop: bool) -> None:
        """A peer did not deliver range `index`: drop it for this blob (bad bytes, too slow) or skip it a while."""
        with self._lock:
            if drop:
                self.bad_peers[peer] = why
                self.notes.append(f"dropped peer {peer}: range {index} {why}")
                log.warning("dropped peer %s for this blob: range %d %s", peer, index, why)
            else:
                self._cooldown[peer] = self.clock() + PEER_COOLDOWN
                log.info("peer %s did not deliver range %d (%s); trying elsewhere", peer, index, why)

    def peer_lacks(self, peer: str, index: int, why: str) -> None:
        """A peer the board lists for range `index` answered that it does not have it (416, 404: deleted,
        cancelled, cleaned up): off the board at once, for everyone, so nobody asks it again (issue 22)."""
        log.info("peer %s does not have range %d (%s); taken off the board", peer, index, why)
        self._unhold(peer, [index])

    def forget(self) -> None:
        """My partial data of this blob is gone: take me off the board (my peers' 416 would, one range at a time)."""
        self._unhold(self.me, None)

    def _unhold(self, worker: str, ranges: list[int] | None) -> None:
        if not self.alone:
            try:
                self.board.drop_holder(worker, ranges)
            except BoardUnavailableError as exc:
                self._go_alone(exc)
        with self._lock:
            self._view_at = -1.0

    def join(self, size: int, range_bytes: int) -> int | None:
        """The swarm's range size for a blob of `size` bytes; None when the board cannot be reached."""
        try:
            return self.board.join(size, range_bytes)
        except BoardUnavailableError as exc:
            self._go_alone(exc)
            return None

    def open_range_from(self, peer: str, start: int, end: int) -> requests.Response:
        try:
            address = self.board.address(peer)
        except BoardUnavailableError:
            address = None
        if not address:
            raise requests.ConnectionError(f"peer {peer} has no address")
        return self.open_peer(address, start, end, self.options.peer_read_timeout)

    def stats(self) -> dict:
        with self._lock:
            return {"upstream_bytes": self.upstream_bytes, "peer_bytes": sum(self.peer_bytes.values()),
                    "peers": dict(self.peer_bytes), "bad_peers": dict(self.bad_peers), "alone": self.alone_why}


class PeerRead:
    """One range in flight from a peer: what arrived, when, and whether it fell behind the minimum rate."""

    def __init__(self, peer: str, length: int, clock: Callable[[], float]) -> None:
        self.peer, self.length, self.clock = peer, length, clock
        self.began = clock()
        self.got = 0
        self.sha = hashlib.sha256()
        self.resp: requests.Response | None = None
        self.slow: str | None = None  # why it was judged too slow
        self._paused = 0.0
        self._paused_since: float | None = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused_since = self.clock()
        try:
            yield
        finally:
            self._paused += self.clock() - self._paused_since
            self._paused_since = None

    def judge(self, swarm: Swarm) -> bool:
        """True once the range is too slow (and stays so); a whole range is never judged."""
        if self.slow is not None:
            return True
        if self.got >= self.length:
            return False
        now = self.clock()
        since = self._paused_since
        elapsed = now - self.began - self._paused - (now - since if since is not None else 0.0)
        if not swarm.is_too_slow(self.got, elapsed):
            return False
        o = swarm.options
        self.slow = (f"too slow: {self.got} of {self.length} bytes in {elapsed:.1f} s "
                     f"(under {o.peer_min_rate} bytes/s after {o.peer_range_base_seconds:g} s)")
        return True

    def cut(self) -> None:
        """Unblock a read in progress from another thread: shut the connection's socket down."""
        raw = getattr(self.resp, "raw", None)
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is None:  # an HTTP/1.0 or `Connection: close` answer: http.client detached the socket from the
            # connection, and only the body's file still holds it (as bodies.direct_reader reads it)
            sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

"""Peer-assisted downloads: the engine's swarm mode over the Redis board (fakeredis with Lua).

A few workers, each with its own blob store and partial directory, download one blob at
the same time. Upstream is an in-memory source that counts the bytes it sends; a peer is
served the way the agent's blob server serves it (the finished blob, or the whole parts of a
download in progress: eldric.transfer.partials.servable).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import replace
from pathlib import Path

import fakeredis
import pytest
import requests

from eldric.cluster import keys
from eldric.cluster.swarmboard import RedisSwarmBoard, UpstreamRateCap, leave_swarms
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.transfer.download import DownloadOptions, download_blob, relayout
from eldric.transfer.partials import servable
from eldric.transfer.swarm import BoardUnavailableError, Swarm, SwarmOptions, range_bytes_for

RANGE = 64 << 10
DATA = bytes((i * 131 + (i >> 9)) % 251 for i in range(16 * RANGE + 1234))  # 17 ranges, the last short
DIGEST = Digest.of_bytes(DATA)
OPTIONS = DownloadOptions(parts=4, start_connections=2, chunk_bytes=16 << 10, save_every_seconds=0.05,
                          part_attempts=2, retry_backoff_seconds=0.01)


class Body:
    def __init__(self, data: bytes, delay: float) -> None:
        self.stream, self.delay = io.BytesIO(data), delay

    def read(self, amt=None, decode_content=None) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        return self.stream.read(amt)


class Trickle(Body):
    """A body that comes one byte at a time, each well within any read timeout."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data, delay=0.02)

    def read(self, amt=None, decode_content=None) -> bytes:
        return super().read(1)


class Resp:
    def __init__(self, data: bytes, status: int = 206, delay: float = 0.0) -> None:
        self.status_code, self.raw, self.headers = status, Body(data, delay), {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass


class World:
    """One fake Redis, one counting upstream, and `names` workers that serve each other."""

    def __init__(self, tmp: Path, names: list[str], *, upstream_delay: float = 0.002) -> None:
        self.server = fakeredis.FakeServer()
        self.tmp, self.names, self.upstream_delay = tmp, names, upstream_delay
        self.upstream_bytes = 0
        self.upstream_ranges: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.flip: set[str] = set()  # peers that serve one wrong byte
        self.trickle: set[str] = set()  # peers that answer 206, then one byte every 20 ms
        self.peer_requests: list[tuple[str, int]] = []
        client = self.client()
        for name in names:
            client.hset(keys.worker(name), "address", name)

    def client(self):
        return fakeredis.FakeRedis(server=self.server)

    def store(self, name: str) -> BlobStore:
        return BlobStore(self.tmp / name / "blobs")

    def partial_dir(self, name: str) -> Path:
        return self.tmp / name / "partial"

    def upstream(self, start: int, end: int, timeout: float) -> Resp:
        with self.lock:
            self.upstream_bytes += end + 1 - start
            self.upstream_ranges.append((start, end))
        return Resp(DATA[start:end + 1], delay=self.upstream_delay)

    def open_peer(self, address: str, start: int, end: int, timeout: float) -> Resp:
        with self.lock:
            self.peer_requests.append((address, start))
        path = servable(self.store(address), self.partial_dir(address), DIGEST, start, end)
        if path is None:
            return Resp(b'{"error": "not here"}', status=416)
        try:
            f = open(path, "rb")
        except FileNotFoundError:  # renamed into the store since servable looked, as the agent's server handles it
            f = open(self.store(address).path(DIGEST), "rb")
        with f:
            f.seek(start)
            body = bytearray(f.read(end + 1 - start))
        if address in self.flip:
            body[len(body) // 2] ^= 0xFF
        if address in self.trickle:
            resp = Resp(b"")
            resp.raw = Trickle(bytes(body))
            return resp
        return Resp(bytes(body))

    def swarm(self, name: str, **opts) -> Swarm:
        board = RedisSwarmBoard(self.client(), str(DIGEST), name, lease_seconds=opts.pop("lease_seconds", 30.0))
        return Swarm(board, self.open_peer, SwarmOptions(range_bytes=RANGE, min_size=1, poll_seconds=0.01, **opts))

    def download(self, name: str, swarm: Swarm | None = None, **kw) -> Path:
        return download_blob(self.upstream, DIGEST, len(DATA), self.store(name), self.partial_dir(name), OPTIONS,
                             swarm=swarm or self.swarm(name), **kw)


def run_all(world: World, swarms: dict[str, Swarm]) -> dict[str, object]:
    results: dict[str, object] = {}

    def one(name: str) -> None:
        try:
            results[name] = world.download(name, swarms[name])
        except Exception as exc:  # reported by the test
            results[name] = exc
    threads = [threading.Thread(target=one, args=(n,)) for n in swarms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_range_sizes_are_powers_of_two_between_4_and_64_mib() -> None:
    assert range_bytes_for(200 << 20) == 4 << 20
    assert range_bytes_for(40 << 30) == 64 << 20
    assert range_bytes_for(1 << 30) == 8 << 20


def test_four_workers_fetch_every_range_from_upstream_once(tmp_path: Path) -> None:
    names = ["w1", "w2", "w3", "w4"]
    world = World(tmp_path, names)
    swarms = {n: world.swarm(n) for n in names}
    results = run_all(world, swarms)
    for name in names:
        assert isinstance(results[name], Path), results[name]
        assert results[name].read_bytes() == DATA
    assert world.upstream_bytes == len(DATA)  # one copy, whatever N
    starts = sorted(s for s, _ in world.upstream_ranges)
    assert starts == list(range(0, len(DATA), RANGE))
    stats = [swarms[n].stats() for n in names]
    assert sum(s["upstream_bytes"] for s in stats) == len(DATA)
    assert sum(s["peer_bytes"] for s in stats) == 3 * len(DATA)
    board = world.client()
    assert len(board.hgetall(keys.swarm(str(DIGEST), "sha"))) == 17
    assert not board.hgetall(keys.swarm(str(DIGEST), "leases"))  # every lease given back


def good_and_bad_holders(tmp_path: Path, bad: str, how: str) -> World:
    """Workers `good` and `bad` hold the whole blob; then `bad` misbehaves `how` ("flip" or "trickle")."""
    world = World(tmp_path, ["good", bad, "late"])
    assert world.download("good").read_bytes() == DATA
    assert world.download(bad).read_bytes() == DATA
    getattr(world, how).add(bad)
    return world


def test_a_peer_serving_a_flipped_byte_is_dropped_and_the_range_fetched_elsewhere(tmp_path: Path) -> None:
    # The liar holds everything too (it had the blob), but serves one wrong byte per range.
    world = good_and_bad_holders(tmp_path, "liar", "flip")
    upstream_before = world.upstream_bytes
    swarm = world.swarm("late")
    path = world.download("late", swarm)
    assert path.read_bytes() == DATA  # nothing corrupt stored
    assert world.upstream_bytes == upstream_before  # the good peer had it all
    assert "liar" in swarm.stats()["bad_peers"]
    assert any("dropped peer liar" in note and "sha256" in note for note in swarm.notes)
    # Dropped for the rest of the blob: asked at most once per connection that was already on its way.
    assert [a for a, _ in world.peer_requests].count("liar") <= OPTIONS.parts


def test_a_range_whose_holders_are_all_gone_comes_from_upstream_again(tmp_path: Path) -> None:
    world = World(tmp_path, ["first", "second"])
    assert world.download("first").read_bytes() == DATA
    world.store("first").path(DIGEST).unlink()  # the only holder lost its copy (answers 416 now)
    swarm = world.swarm("second")
    assert world.download("second", swarm).read_bytes() == DATA
    assert world.upstream_bytes == 2 * len(DATA)


def test_a_peer_answering_416_is_taken_off_the_board_and_its_ranges_come_from_upstream_once(tmp_path: Path) -> None:
    """Issue 22, finding 2: a holder that deleted the blob stayed listed, and every worker fell back to upstream."""
    world = World(tmp_path, ["first", "second", "third"])
    assert world.download("first").read_bytes() == DATA
    world.store("first").path(DIGEST).unlink()
    world.upstream_bytes = 0

    results = run_all(world, {n: world.swarm(n) for n in ("second", "third")})

    assert all(isinstance(r, Path) and r.read_bytes() == DATA for r in results.values()), results
    assert world.upstream_bytes == len(DATA)  # the orphaned ranges went to one fetcher each, not to both
    holders = world.client().hgetall(keys.swarm(str(DIGEST), "holders"))
    assert not any(b"first" in h.split() for h in holders.values()), holders
    # Each range asked of it at most once by each of the two (both may ask before the first 416 lands).
    assert [a for a, _ in world.peer_requests].count("first") <= 2 * 17


def test_leaving_the_boards_drops_a_worker_as_holder_of_every_range_and_orphans_only_its_own() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    client.hset(keys.swarm(a, "holders"), mapping={"0": "me", "1": "me other", "2": "other"})
    client.hset(keys.swarm(a, "sha"), mapping={"0": "x", "1": "y", "2": "z"})
    client.hset(keys.swarm(b, "holders"), mapping={"0": "other"})
    client.hset(keys.swarm(b, "sha"), mapping={"0": "x"})

    assert leave_swarms(client, "me", [a, b]) == 2

    assert client.hgetall(keys.swarm(a, "holders")) == {"1": "other", "2": "other"}
    assert client.hgetall(keys.swarm(a, "sha")) == {"1": "y", "2": "z"}  # range 0: never fetched again
    assert client.hgetall(keys.swarm(b, "holders")) == {"0": "other"}
    board = RedisSwarmBoard(client, a, "other")
    assert board.drop_holder("other", [2]) == 1 and board.drop_holder("nobody") == 0
    assert client.hgetall(keys.swarm(a, "holders")) == {"1": "other"}


def test_a_lapsed_lease_of_a_dead_worker_is_taken_over(tmp_path: Path) -> None:
    world = World(tmp_path, ["dead", "alive"])
    dead = RedisSwarmBoard(world.client(), str(DIGEST), "dead", lease_seconds=0.3)
    dead.join(len(DATA), RANGE)
    assert dead.claim_upstream([0, 1, 2], 1) == 0  # ... and then the worker dies without renewing
    assert RedisSwarmBoard(world.client(), str(DIGEST), "other").claim_upstream([1], 1) is None  # its slot holds
    alive = world.swarm("alive", lease_seconds=0.3)
    started = time.monotonic()
    assert world.download("alive", alive).read_bytes() == DATA
    assert (0, RANGE - 1) in world.upstream_ranges
    assert time.monotonic() - started >= 0.25  # range 0 waited for the lease to lapse


def test_the_cap_on_upstream_workers_keeps_the_others_on_peers(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d"]
    world = World(tmp_path, names)
    swarms = {n: world.swarm(n, max_upstream_workers=1) for n in names}
    results = run_all(world, swarms)
    assert all(isinstance(r, Path) for r in results.values()), results
    fetchers = [n for n in names if swarms[n].stats()["upstream_bytes"]]
    assert len(fetchers) == 1
    assert world.upstream_bytes == len(DATA)


def test_resume_publishes_what_an_earlier_run_fetched_and_relayouts_foreign_parts(tmp_path: Path) -> None:
    # A saved state of 100 KiB parts (a download outside any swarm), 250 KiB written from 0.
    saved = [(0, 100 << 10, 100 << 10), (100 << 10, 100 << 10, 100 << 10), (200 << 10, 100 << 10, 50 << 10)]
    plan = [(o, RANGE) for o in range(0, 5 * RANGE, RANGE)]
    assert [p.completed for p in relayout(saved, plan)] == [RANGE, RANGE, RANGE, 250 * 1024 - 3 * RANGE, 0]


def test_a_peer_that_dies_mid_range_costs_a_retry_elsewhere(tmp_path: Path) -> None:
    world = World(tmp_path, ["holder", "flaky", "taker"])
    world.download("holder")
    world.download("flaky")
    original = world.open_peer

    def open_peer(address, start, end, timeout):
        if address == "flaky":
            raise requests.ConnectionError("connection reset by peer")
        return original(address, start, end, timeout)
    world.open_peer = open_peer
    swarm = world.swarm("taker")
    assert world.download("taker", swarm).read_bytes() == DATA
    assert world.upstream_bytes == len(DATA)
    assert "flaky" not in swarm.stats()["bad_peers"]  # skipped a while, not accused


def pour_together(caps: list[UpstreamRateCap], takes: int, size: int) -> float:
    """Seconds for every cap's worker (a thread each) to take `takes` times `size` bytes at once."""
    def pour(cap):
        for _ in range(takes):
            cap.take(size)
    threads = [threading.Thread(target=pour, args=(c,)) for c in caps]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def test_the_job_upstream_cap_is_a_bucket_shared_by_workers(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    caps = [UpstreamRateCap(client, "job1", rate=4 << 20), UpstreamRateCap(client, "job1", rate=4 << 20)]
    elapsed = pour_together(caps, takes=16, size=128 << 10)
    # 4 MiB together at 4 MiB/s, less the initial burst (a quarter second of rate) and the last grant.
    assert 0.6 <= elapsed <= 1.4, elapsed


def test_the_job_upstream_caps_grants_shrink_with_its_fetchers() -> None:
    """Eight fetchers may book ahead only a tenth of a second of the job's rate between them, not 0.8 s."""
    client = fakeredis.FakeRedis()
    rate = 16 << 20
    caps = [UpstreamRateCap(client, "job8", rate=rate, fetchers=8) for _ in range(8)]
    assert caps[0].grant == rate // 80
    elapsed = pour_together(caps, takes=64, size=32 << 10)
    # 16 MiB at 16 MiB/s is 1 s, less what may pass ahead of the rate: 0.02 s of burst and 0.1 s of grants.
    assert 0.85 <= elapsed <= 1.6, elapsed


@pytest.mark.parametrize("rate", [2 << 20])
def test_the_worker_download_cap_is_honoured(tmp_path: Path, rate: int) -> None:
    from eldric.transfer.ratelimit import TokenBucket
    world = World(tmp_path, ["solo"], upstream_delay=0)
    started = time.monotonic()
    download_blob(world.upstream, DIGEST, len(DATA), world.store("solo"), world.partial_dir("solo"),
                  replace(OPTIONS, limiter=TokenBucket(rate)))
    elapsed = time.monotonic() - started
    burst = rate * 0.25  # the bucket starts full: a quarter second of rate
    assert (len(DATA) - burst) / rate * 0.95 <= elapsed <= len(DATA) / rate * 1.3, elapsed


class AwayBoard:
    """A board whose Redis went away after `calls` calls."""

    def __init__(self, inner: RedisSwarmBoard, calls: int) -> None:
        self.inner, self.left, self.me = inner, calls, inner.me

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.left -= 1
            if self.left < 0:
                raise BoardUnavailableError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            return method(*args, **kwargs)
        return call


@pytest.mark.parametrize("calls", [0, 1, 5])
def test_a_board_that_goes_away_leaves_the_download_to_go_on_alone(tmp_path: Path, calls: int) -> None:
    """Redis away at the join (0), at the first view (1) or mid-download (5): the blob still arrives, verified."""
    world = World(tmp_path, ["solo"])
    board = AwayBoard(RedisSwarmBoard(world.client(), str(DIGEST), "solo"), calls)
    swarm = Swarm(board, world.open_peer, SwarmOptions(range_bytes=RANGE, min_size=1, poll_seconds=0.01))
    assert world.download("solo", swarm).read_bytes() == DATA
    assert world.upstream_bytes == len(DATA)
    assert swarm.alone and any("downloading alone" in note for note in swarm.notes)
    # ... and the progress record can say so (worker_agent/fanout.py puts it in the record's `alone`).
    assert swarm.stats()["alone"] == "swarm board unavailable: Error 111 connecting to 127.0.0.1:6379. Connection refused."


@pytest.mark.parametrize(("got", "elapsed", "slow"), [
    (0, 0.9, False),  # within the grace, however little came
    (0, 1.1, True),  # nothing after the grace
    (4 << 20, 4.9, False),  # 4 MiB may take 1 + 4 s at 1 MiB/s
    (4 << 20, 5.1, True),
    (64 << 20, 60.0, False),  # the deadline grows with the bytes delivered
])
def test_a_peer_range_must_keep_the_minimum_rate_after_its_grace(got: int, elapsed: float, slow: bool) -> None:
    swarm = Swarm(None, lambda *a: None, SwarmOptions(peer_range_base_seconds=1.0, peer_min_rate=1 << 20))
    assert swarm.is_too_slow(got, elapsed) is slow


def test_no_minimum_rate_judges_nobody() -> None:
    assert not Swarm(None, lambda *a: None, SwarmOptions(peer_min_rate=0)).is_too_slow(0, 1e9)


def test_a_trickling_peer_is_dropped_as_too_slow_and_the_ranges_come_from_another_holder(tmp_path: Path) -> None:
    world = good_and_bad_holders(tmp_path, "slowpoke", "trickle")
    upstream_before = world.upstream_bytes
    swarm = world.swarm("late", peer_range_base_seconds=0.2, peer_min_rate=1 << 20)
    started = time.monotonic()
    assert world.download("late", swarm).read_bytes() == DATA
    took = time.monotonic() - started
    assert world.upstream_bytes == upstream_before  # the good holder had every range
    why = swarm.stats()["bad_peers"]["slowpoke"]
    assert why.startswith("too slow: ") and "after 0.2 s" in why, why
    assert swarm.stats()["peers"].get("slowpoke", 0) == 0  # what it trickled in was taken back
    assert took < 3, took  # one grace (and a range's deadline), not 64 KiB at 50 bytes/s
    # Dropped for the rest of the blob: asked at most once per connection that was already on its way.
    assert [a for a, _ in world.peer_requests].count("slowpoke") <= OPTIONS.parts


def test_a_peer_slowed_only_by_our_own_download_cap_is_kept(tmp_path: Path) -> None:
    from eldric.transfer.ratelimit import TokenBucket
    world = World(tmp_path, ["holder", "capped"])
    assert world.download("holder").read_bytes() == DATA
    upstream_before = world.upstream_bytes
    swarm = world.swarm("capped", peer_range_base_seconds=0.1, peer_min_rate=4 << 20)
    download_blob(world.upstream, DIGEST, len(DATA), world.store("capped"), world.partial_dir("capped"),
                  replace(OPTIONS, limiter=TokenBucket(1 << 20)), swarm=swarm)  # 1 MiB/s, under the 4 MiB/s minimum
    assert world.store("capped").path(DIGEST).read_bytes() == DATA
    assert not swarm.stats()["bad_peers"]
    assert world.upstream_bytes == upstream_before

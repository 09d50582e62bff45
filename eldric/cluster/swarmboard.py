"""The swarm board in Redis: what every worker downloading one blob knows about its ranges.

See eldric/transfer/swarm.py for what the board is for. Each write is one Lua script, so
two workers never both lease a range, and the job's cap on upstream workers is checked in the
same step as the lease. Keys (eldric.cluster.keys.swarm) expire SWARM_TTL after the last
write, so a finished swarm serves late joiners for a while and then cleans itself up.
The job's upstream rate cap is a token bucket in Redis shared by all of its workers; each
take covers at least `grant` bytes (a tenth of a second of a fetcher's share of the rate), so a
worker writes about ten times a second and the bytes booked ahead, cluster-wide, stay a tenth of
a second of the rate however many workers fetch.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Collection

import redis

from eldric.cluster import keys
from eldric.transfer.ratelimit import TokenBucket
from eldric.transfer.swarm import BoardUnavailableError, BoardView

SWARM_TTL = 3600
_PARTS = ("meta", "sha", "holders", "leases", "fetchers")

# Redis's clock, not the workers': leases and buckets mean the same on every node.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: meta sha holders leases; ARGV: ttl
_TOUCH = "for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end"

_JOIN = """
redis.call('HSETNX', KEYS[1], 'size', ARGV[1])
redis.call('HSETNX', KEYS[1], 'range_bytes', ARGV[2])
""" + _TOUCH.replace("ARGV[1]", "ARGV[3]") + """
return redis.call('HGET', KEYS[1], 'range_bytes')
"""

# ARGV: me, max_ranges, lease_ms, max_workers, ttl, candidates...
# max_ranges caps the ranges in flight from upstream cluster-wide, so they complete one after
# another at the uplink's rate and peers pass each on while the next arrives (a pipeline),
# instead of all finishing together at the end.
# A worker keeps its upstream slot (`fetchers`) from its first lease until it retires or its
# slot lapses, so the cap counts workers, not the instants between two of a worker's ranges.
_CLAIM = _NOW + """
local me, lease, most = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local function live_entries(key)
  local all, live = redis.call('HGETALL', key), {}
  for i = 1, #all, 2 do
    local who, exp = string.match(all[i + 1], '^(%S+) (%d+)$')
    if exp == nil or tonumber(exp) <= now then redis.call('HDEL', key, all[i]) else live[all[i]] = who end
  end
  return live
end
local live = live_entries(KEYS[4])
local slots = live_entries(KEYS[5])
local in_flight = 0
for _ in pairs(live) do in_flight = in_flight + 1 end
if tonumber(ARGV[2]) > 0 and in_flight >= tonumber(ARGV[2]) then return -1 end
if most > 0 and slots[me] == nil then
  local n = 0
  for _ in pairs(slots) do n = n + 1 end
  if n >= most then return -1 end
end
for i = 6, #ARGV do
  -- '!' marks a range fetched before whose holders all failed the caller: fetch it again.
  local r, again = string.gsub(ARGV[i], '^!', '')
  local holder = live[r]
  if (holder == nil or holder == me) and (again > 0 or redis.call('HEXISTS', KEYS[2], r) == 0) then
    redis.call('HSET', KEYS[4], r, me .. ' ' .. tostring(now + lease))
    redis.call('HSET', KEYS[5], me, me .. ' ' .. tostring(now + lease))
""" + _TOUCH.replace("ARGV[1]", "ARGV[5]") + """
    return tonumber(r)
  end
end
return -1
"""

# KEYS: leases fetchers; ARGV: me, (unused), lease_ms, ranges...
_RENEW = _NOW + """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[1] .. ' ' .. tostring(now + tonumber(ARGV[3])))
for i = 4, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and string.match(cur, '^(%S+) ') == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ' ' .. tostring(now + tonumber(ARGV[3])))
  end
end
"""

# ARGV: me, range
_RELEASE = """
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur and string.match(cur, '^(%S+) ') == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[2]) end
"""

# KEYS: leases fetchers; ARGV: me. Gives back every lease and the upstream slot.
_RETIRE = """
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.match(all[i + 1], '^(%S+) ') == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HDEL', KEYS[2], ARGV[1])
"""

# KEYS: meta sha holders leases fetchers; ARGV: me, range, sha ('' when taken from a peer), ttl
_PUBLISH = """
local me, r = ARGV[1], ARGV[2]
if ARGV[3] ~= '' then redis.call('HSETNX', KEYS[2], r, ARGV[3]) end
local cur = redis.call('HGET', KEYS[3], r)
if not cur then
  redis.call('HSET', KEYS[3], r, me)
elseif not string.find(' ' .. cur .. ' ', ' ' .. me .. ' ', 1, true) then
  redis.call('HSET', KEYS[3], r, cur .. ' ' .. me)
end
local lease = redis.call('HGET', KEYS[4], r)
if lease and string.match(lease, '^(%S+) ') == me then redis.call('HDEL', KEYS[4], r) end
""" + _TOUCH.replace("ARGV[1]", "ARGV[4]")

# KEYS: sha holders; ARGV: worker, ranges... (none: every range). The worker no longer holds them (a delete,
# a cancel, a cleanup, or a 416 from it): off their holders. A range nobody holds any more loses its sha too, so
# it is "never fetched" again and the lease (claim's HEXISTS) hands it to one upstream fetcher, not to every
# worker that saw it orphaned. Returns how many ranges it was taken off.
_UNHOLD = """
local who, ranges, dropped = ARGV[1], {}, 0
if #ARGV > 1 then for i = 2, #ARGV do ranges[#ranges + 1] = ARGV[i] end else ranges = redis.call('HKEYS', KEYS[2]) end
for _, r in ipairs(ranges) do
  local cur = redis.call('HGET', KEYS[2], r)
  if cur and string.find(' ' .. cur .. ' ', ' ' .. who .. ' ', 1, true) then
    local kept = {}
    for w in string.gmatch(cur, '%S+') do if w ~= who then kept[#kept + 1] = w end end
    if #kept == 0 then
      redis.call('HDEL', KEYS[2], r)
      redis.call('HDEL', KEYS[1], r)
    else
      redis.call('HSET', KEYS[2], r, table.concat(kept, ' '))
    end
    dropped = dropped + 1
  end
end
return dropped
"""

# A token bucket: KEYS[1]; ARGV: rate, capacity, (unused), n. Returns ms to wait (the take is booked).
_BUCKET = _NOW + """
local rate, cap, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or cap)
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
tokens = math.min(cap, tokens + (now - stamp) * rate / 1000) - n
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(math.max(now, stamp)))
redis.call('PEXPIRE', KEYS[1], 600000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens * 1000 / rate)
"""


def _board_call(method):
    """A board method whose Redis errors become BoardUnavailableError: the download then goes on alone."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise BoardUnavailableError(str(exc) or type(exc).__name__) from None
    return call


class RedisSwarmBoard:
    """One worker's handle on one blob's board (eldric.transfer.swarm.SwarmBoard)."""

    def __init__(self, client: redis.Redis, digest: str, me: str, lease_seconds: float = 30.0) -> None:
        self.client, self.digest, self.me = client, digest, me
        self.keys = [keys.swarm(digest, part) for part in _PARTS]
        self.lease_ms = int(lease_seconds * 1000)
        self._join = client.register_script(_JOIN)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._publish = client.register_script(_PUBLISH)
        self._retire = client.register_script(_RETIRE)
        self._unhold = client.register_script(_UNHOLD)
        self._addresses: dict[str, str] = {}

    @_board_call
    def join(self, size: int, range_bytes: int) -> int:
        return int(self._join(keys=self.keys, args=[size, range_bytes, SWARM_TTL]))

    @_board_call
    def view(self) -> BoardView:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys[1])
        pipe.hgetall(self.keys[2])
        sha, holders = pipe.execute()
        return BoardView(sha={int(k): _text(v) for k, v in sha.items()},
                         holders={int(k): _text(v).split() for k, v in holders.items()})

    @_board_call
    def claim_upstream(self, candidates: list[int], max_workers: int, again: Collection[int] = (),
                       max_ranges: int = 0) -> int | None:
        marked = [f"!{i}" if i in again else str(i) for i in candidates]
        got = self._claim(keys=self.keys, args=[self.me, max_ranges, self.lease_ms, max_workers, SWARM_TTL, *marked])
        return None if int(got) < 0 else int(got)

    @_board_call
    def renew(self, ranges) -> None:
        self._renew(keys=[self.keys[3], self.keys[4]], args=[self.me, 0, self.lease_ms, *sorted(ranges)])

    @_board_call
    def release(self, index: int) -> None:
        self._release(keys=[self.keys[3]], args=[self.me, index])

    @_board_call
    def retire(self) -> None:
        self._retire(keys=[self.keys[3], self.keys[4]], args=[self.me])

    @_board_call
    def publish(self, index: int, sha: str | None) -> None:
        self._publish(keys=self.keys, args=[self.me, index, sha or "", SWARM_TTL])

    @_board_call
    def drop_holder(self, worker: str, ranges: Collection[int] | None = None) -> int:
        return int(self._unhold(keys=self.keys[1:3], args=[worker, *sorted(ranges or ())]))

    @_board_call
    def address(self, worker: str) -> str | None:
        if worker not in self._addresses:
            value = self.client.hget(keys.worker(worker), "address")
            if not value:
                return None
            self._addresses[worker] = _text(value)
        return self._addresses[worker]

    @_board_call
    def reset(self) -> None:
        self.client.delete(*self.keys)


def leave_swarms(client: redis.Redis, worker: str, digests: Collection[str]) -> int:
    """Take `worker` off the boards of the blobs `digests` (it deleted them, or their partial data): how many
    ranges it was listed for. Raises redis.RedisError; its peers' 416 then does it (Swarm.peer_lacks)."""
    unhold = client.register_script(_UNHOLD)
    pipe = client.pipeline(transaction=False)
    for digest in digests:
        unhold(keys=[keys.swarm(digest, "sha"), keys.swarm(digest, "holders")], args=[worker], client=pipe)
    return sum(int(n) for n in pipe.execute())


class UpstreamRateCap:
    """`take(n)`: wait until `n` more upstream bytes fit the job's cluster-wide rate (bytes/s).

    Takes are booked in grants of `grant` bytes, a tenth of a second of one fetcher's share
    (rate / `fetchers`), so the Redis writes per worker stay at about ten a second whatever the
    chunk size. What the link may carry over the rate in any window is the bucket's burst plus
    the grants booked and not yet read, one per fetcher: 0.02 s + 0.1 s of the rate together.
    """

    def __init__(self, client: redis.Redis, job_id: str, rate: float, fetchers: int = 1,
                 burst_seconds: float = 0.02) -> None:
        self.client, self.key, self.rate = client, keys.upstream_rate(job_id), float(rate)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.grant = max(16 << 10, int(self.rate / 10 / max(1, fetchers)))
        self._bucket = client.register_script(_BUCKET)
        self._lock = threading.Lock()
        self._credit = 0
        self._local = TokenBucket(self.rate)

    def take(self, n: int) -> None:
        with self._lock:
            self._credit -= n
            if self._credit >= 0:
                return
            want = max(self.grant, -self._credit)
            self._credit += want
            try:
                wait_ms = int(self._bucket(keys=[self.key], args=[self.rate, self.capacity, 0, want]))
            except redis.RedisError:
                # Redis away: this worker alone keeps to the job's cap (the cluster may briefly exceed it).
                self._local.take(want)
                return
            # Sleeping under the lock holds this worker's other connections back too: the cap is the cluster's.
            if wait_ms > 0:
                time.sleep(wait_ms / 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""The job store: every write to a job's per-worker records goes through here (README "Job states").

One write path, a Lua script run atomically by Redis, used by the agents' progress,
the registry's importer, the controller (`fail_worker`) and the reaper alike:

- a final record (`completed`, `failed`, `skipped`, `cancelled`) is never overwritten, except by an explicit
  reset (`write_record(..., reset=True)`), so a late `completed` from an agent cannot
  undo a deadline failure the event stream already reported as final;
- the per-job state counts (`eldric:job:<id>:states`) change in the same step, so the
  job's own state is known without reading every worker's record;
- every accepted write publishes the record on the job's channel, carrying the job's
  state (`job_state`), so no client derives it again.

Readers never write: the reaper (beat's `maintenance.reap_stale_jobs`) persists the
derived deadline and stale-worker failures, through `write_record(..., expect=...)`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import redis

from eldric.cluster import catchup, jobstate, keys
from eldric.core.errors import EldricError, cap_text

log = logging.getLogger(__name__)

# A URL import is a job like a pull, with the registry as its one target "worker".
REGISTRY_WORKER_ID = "registry"

# KEYS: job workers hash, job state counts, worker's job set, events channel
# ARGV: worker id, record JSON, job id, mode ("write" | "reset" | "expect"), expected record JSON
_WRITE = """
local FINAL = {completed = true, failed = true, skipped = true, cancelled = true}
local current = redis.call('HGET', KEYS[1], ARGV[1])
local before = nil
if current then
  before = cjson.decode(current)['state']
  if ARGV[4] == 'expect' and current ~= ARGV[5] then return {0, before} end
  if FINAL[before] and ARGV[4] ~= 'reset' then return {0, before} end
elseif ARGV[4] == 'expect' then
  return {0, false}
end
local after = cjson.decode(ARGV[2])['state']
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if before ~= after then
  if before then redis.call('HINCRBY', KEYS[2], before, -1) end
  redis.call('HINCRBY', KEYS[2], after, 1)
end
if FINAL[after] then redis.call('SREM', KEYS[3], ARGV[3]) end
local counts = redis.call('HGETALL', KEYS[2])
local total, final, by = 0, 0, {}
for i = 1, #counts, 2 do
  local s, n = counts[i], tonumber(counts[i + 1])
  total = total + n
  by[s] = n
  if FINAL[s] then final = final + n end
end
local job_state = 'running'
if final == total then
  if (by['cancelled'] or 0) > 0 then job_state = 'cancelled'
  elseif (by['failed'] or 0) > 0 then job_state = 'failed'
  elseif (by['skipped'] or 0) > 0 then job_state = 'completed_with_skipped'
  else job_state = 'completed' end
elseif (by['pending'] or 0) + (by['skipped'] or 0) == total then job_state = 'pending'
end
redis.call('PUBLISH', KEYS[4], '{"worker":' .. cjson.encode(ARGV[1]) .. ',"job_state":"' .. job_state .. '",'
           .. string.sub(ARGV[2], 2))
return {1, job_state}
"""


class JobEndedError(EldricError):
    """This worker's part of the job was ended elsewhere (cancelled, skipped, failed by the reaper): stop the work."""


# Parts ended by someone else that make a running download pointless.
STOPS_WORK = frozenset({jobstate.CANCELLED, jobstate.SKIPPED, jobstate.FAILED})


@dataclass(frozen=True)
class Written:
    accepted: bool
    state: str | None  # the job's state after an accepted write; the record's kept state after a refusal


_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _write_script(client: redis.Redis):
    """One Script per client: it hashes the source once and runs by EVALSHA (loading it after a Redis restart)."""
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(_WRITE)
    return script


def write_record(client: redis.Redis, job_id: str, worker_id: str, record: dict, *, reset: bool = False,
                 expect: str | None = None) -> Written:
    """Store `record` as the worker's part of the job and publish it, unless the part is already final.

    `expect`: write only if the stored record is still exactly this JSON (the reaper's guard
    against an agent that wrote in between). `reset`: overwrite even a final record.
    """
    mode = "expect" if expect is not None else "reset" if reset else "write"
    script = _write_script(client)
    ok, state = script(keys=[keys.job_workers(job_id), keys.job_states(job_id), keys.worker_jobs(worker_id),
                             keys.job_events(job_id)],
                       args=[worker_id, json.dumps(record), job_id, mode, expect or ""])
    return Written(bool(ok), state or None)


def create_job(client: redis.Redis, *, kind: str, model: str, targets: list[str], source: str,
               deadline_seconds: float, options: dict | None = None, now: float | None = None) -> str:
    """Write the job and a pending record per target worker in one transaction."""
    now = time.time() if now is None else now
    job_id = uuid.uuid4().hex
    meta = {"id": job_id, "kind": kind, "model": model, "source": source, "created_at": now,
            "deadline_at": now + deadline_seconds, "targets": json.dumps(targets),
            "options": json.dumps(options or {})}
    pipe = client.pipeline()
    pipe.hset(keys.job(job_id), mapping=meta)
    if targets:
        pipe.hset(keys.job_workers(job_id),
                  mapping={wid: json.dumps(jobstate.new_record(now)) for wid in targets})
        pipe.hset(keys.job_states(job_id), jobstate.PENDING, len(targets))
    for wid in targets:
        pipe.sadd(keys.worker_jobs(wid), job_id)
    pipe.zadd(keys.JOBS, {job_id: now})
    pipe.execute()
    return job_id


def fail_worker(client: redis.Redis, job_id: str, worker_id: str, reason: str) -> Written:
    """End the worker's part as failed (unless it already ended), keeping what it reported so far."""
    now = time.time()
    reason = cap_text(reason)
    raw = client.hget(keys.job_workers(job_id), worker_id)
    record = json.loads(raw) if raw else jobstate.new_record(now)
    record.update(state=jobstate.FAILED, error=reason, status=reason, finished_at=now, updated_at=now, layer=None)
    return write_record(client, job_id, worker_id, record)


def delete_jobs(client: redis.Redis, job_ids: list[str]) -> None:
    pipe = client.pipeline()
    for job_id in job_ids:
        pipe.delete(keys.job(job_id), keys.job_workers(job_id), keys.job_states(job_id), keys.job_secrets(job_id))
        pipe.zrem(keys.JOBS, job_id)
    pipe.execute()


@dataclass(frozen=True)
class Reaped:
    job_id: str
    worker_id: str
    reason: str
    state: str = jobstate.FAILED


def reap_stale_jobs(client: redis.Redis, *, stale_after: float, offline_grace: float = math.inf,
                    now: float | None = None) -> list[Reaped]:
    """End every unfinished worker record that `jobstate.derive_worker` says is over, and persist it.

    A worker that stopped heartbeating mid-pull for `stale_after` seconds, or any
    unfinished worker past its job's deadline, is failed with the reason; a worker
    offline for longer than `offline_grace` (when the job started or during it) is skipped and
    gets a catch-up (eldric/cluster/catchup.py). So the job finishes even when nobody reads it.
    """
    now = time.time() if now is None else now
    job_ids = client.zrange(keys.JOBS, 0, -1)
    if not job_ids:
        return []
    uptime = _redis_uptime(client)
    # Redis itself was away: agents could not report, so their silence says nothing yet. Give them
    # one stale period (and one grace) from Redis's return (a heartbeat brings them back) before
    # failing or skipping anyone; deadlines still apply.
    if uptime < stale_after:
        stale_after = math.inf
    if uptime < offline_grace:
        offline_grace = math.inf
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "deadline_at")
        pipe.hgetall(keys.job_workers(job_id))
    fetched = pipe.execute()
    open_parts: list[tuple[str, float, str, str]] = []
    for i, job_id in enumerate(job_ids):
        deadline, records = fetched[2 * i], fetched[2 * i + 1]
        if deadline is None:
            continue
        for wid, raw in records.items():
            if not jobstate.is_terminal(json.loads(raw).get("state", "")):
                open_parts.append((job_id, float(deadline), wid, raw))
    presence = worker_presence(client, sorted({wid for _, _, wid, _ in open_parts}))
    reaped: list[Reaped] = []
    for job_id, deadline, wid, raw in open_parts:
        alive, last_seen = presence[wid]
        derived, final = jobstate.derive_worker(
            json.loads(raw), now=now, alive=alive, deadline_at=deadline, stale_after=stale_after,
            offline_grace=offline_grace, last_seen=last_seen)
        if not final or not write_record(client, job_id, wid, derived, expect=raw).accepted:
            continue
        if derived["state"] == jobstate.SKIPPED:
            catchup.record_catchup(client, wid, job_id, now=now)
        reaped.append(Reaped(job_id, wid, derived.get("error") or derived.get("status") or "failed", derived["state"]))
    return reaped


def cancel_job(client: redis.Redis, job_id: str, *, now: float | None = None) -> list[str]:
    """End every unfinished part of the job `cancelled`; return the workers whose part was cancelled.

    Agents notice at their next progress write (refused over a final record) and stop.
    """
    now = time.time() if now is None else now
    out = []
    for wid, stored in client.hgetall(keys.job_workers(job_id)).items():
        raw = stored
        for _attempt in range(5):  # an agent may write in between: read again and retry
            record = json.loads(raw)
            if jobstate.is_terminal(record.get("state", "")):
                break
            if write_record(client, job_id, wid, jobstate.cancelled(record, now), expect=raw).accepted:
                out.append(wid)
                break
            raw = client.hget(keys.job_workers(job_id), wid) or raw
    return out


def _redis_uptime(client: redis.Redis) -> float:
    try:
        return float(client.info("server").get("uptime_in_seconds", math.inf))
    except (redis.RedisError, ValueError, TypeError):
        return math.inf


def worker_presence(client: redis.Redis, ids: list[str]) -> dict[str, tuple[bool, float | None]]:
    """worker id -> (online, last heartbeat time or None when unknown).

    The heartbeat time is read only for offline workers (online ones get None): it only tells how
    long a worker has been away. All online marks come in one MGET, so a 900-worker job costs two
    commands plus one per offline worker instead of two per worker (issue 13).
    """
    if not ids:
        return {}
    marks = client.mget([keys.worker_alive(wid) for wid in ids])
    offline = [wid for wid, mark in zip(ids, marks, strict=True) if mark is None]
    seen: dict[str, float | None] = {}
    if offline:
        pipe = client.pipeline(transaction=False)
        for wid in offline:
            pipe.hget(keys.worker(wid), "last_seen")
        seen = {wid: _number(value) for wid, value in zip(offline, pipe.execute(), strict=True)}
    return {wid: (mark is not None, seen.get(wid)) for wid, mark in zip(ids, marks, strict=True)}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def alive_flags(client: redis.Redis, ids: list[str]) -> dict[str, bool]:
    if not ids:
        return {}
    marks = client.mget([keys.worker_alive(wid) for wid in ids])
    return {wid: mark is not None for wid, mark in zip(ids, marks, strict=True)}


class Progress:
    """One worker's part of a job, reported through `write_record` at most every `min_interval` seconds.

    State changes are always written. Once the store refuses a write (the part was ended
    elsewhere: deadline, reaper, cancel), `ended_elsewhere` is set and later writes are
    skipped; with `stop_when_ended`, `add_bytes` then raises JobEndedError, so a download
    stops within one progress interval of a cancel or skip. `client=None` keeps the record local; `on_write` sees every write either way;
    with `tolerate_redis_errors` a Redis failure is logged instead of raised (the registry's
    imports and the agents' pulls must not fail because Redis blinked), and the periodic
    writes pause for `quiet_after_error` seconds: the writer's thread (a download's) then
    waits for a Redis that does not answer at most once per pause, not on every write.
    """

    def __init__(self, client: redis.Redis | None, job_id: str, worker_id: str, *, min_interval: float = 0.25,
                 clock: Callable[[], float] = time.time, on_write: Callable[[dict], None] = lambda record: None,
                 tolerate_redis_errors: bool = False, quiet_after_error: float = 10.0,
                 stop_when_ended: bool = False) -> None:
        self.client, self.job_id, self.worker_id = client, job_id, worker_id
        self.stop_when_ended = stop_when_ended
        self.min_interval, self.clock, self.on_write = min_interval, clock, on_write
        self.tolerate_redis_errors, self.quiet_after_error = tolerate_redis_errors, quiet_after_error
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last_done = 0
        self._quiet_until = 0.0
        self.ended_elsewhere: str | None = None
        self.record: dict = self._load() or jobstate.new_record(clock())

    def _load(self) -> dict | None:
        if self.client is None:
            return None
        try:
            raw = self.client.hget(keys.job_workers(self.job_id), self.worker_id)
        except redis.RedisError:
            if not self.tolerate_redis_errors:
                raise
            return None
        return json.loads(raw) if raw else None

    def update(self, *, force: bool = False, **fields: object) -> None:
        """Merge `fields` into the record; write if the state changed or enough time passed."""
        with self._lock:
            changed = fields.get("state", self.record["state"]) != self.record["state"]
            self.record.update(fields)
            self._maybe_write(force or changed)

    def start(self, total: int = 0, source: str | None = None, status: str | None = None) -> None:
        fields = {"status": status} if status else {}
        self.update(force=True, state=jobstate.PULLING, started_at=self.record.get("started_at") or self.clock(),
                    total=total, completed=0, percent=0.0, error=None, source=source, **fields)

    def add_bytes(self, n: int) -> None:
        """Count `n` more bytes; with `stop_when_ended`, raise JobEndedError once the part was ended elsewhere."""
        with self._lock:
            self.record["completed"] = int(self.record.get("completed") or 0) + n
            self._maybe_write(False)
        self.check_ended()

    def check_ended(self) -> None:
        if self.stop_when_ended and self.ended_elsewhere in STOPS_WORK:
            raise JobEndedError(f"this worker's part of job {self.job_id} was {self.ended_elsewhere} elsewhere")

    def finish(self, **fields: object) -> None:
        total = int(fields.pop("total", self.record.get("total") or 0))
        final = {"status": "success", "finished_at": self.clock(), "layer": None, "error": None, **fields}
        self.update(force=True, state=jobstate.COMPLETED, completed=total, total=total, **final)

    def fail(self, reason: str) -> None:
        reason = cap_text(reason)  # a worker's error is a few KiB at most, whatever an upstream sent
        self.update(force=True, state=jobstate.FAILED, status=reason, error=reason,
                    finished_at=self.clock(), layer=None)

    def retrying(self, reason: str) -> None:
        self.update(force=True, state=jobstate.RETRYING, status=cap_text(reason), error=None)

    def flush(self) -> None:
        with self._lock:
            self._maybe_write(True)

    def detach(self, reason: str) -> None:
        """Stop writing (the job is gone, or another runner owns it); no write is in flight on return."""
        with self._lock:
            self.ended_elsewhere = reason

    def _maybe_write(self, force: bool) -> None:
        now = self.clock()
        if self.ended_elsewhere or (not force and (now - self._last_write < self.min_interval
                                                   or now < self._quiet_until)):
            return
        rec = self.record
        done = int(rec.get("completed") or 0)
        if rec.get("state") in jobstate.ACTIVE and self._last_write:
            rec["rate"] = round(max(0, done - self._last_done) / max(1e-3, now - self._last_write), 1)
        else:
            rec.pop("rate", None)
        self._last_write, self._last_done = now, done
        rec["percent"] = jobstate.percent(done, int(rec.get("total") or 0))
        rec["updated_at"] = now
        self.on_write(rec)
        if self.client is None:
            return
        try:
            written = write_record(self.client, self.job_id, self.worker_id, rec)
        except redis.RedisError as exc:
            if not self.tolerate_redis_errors:
                raise
            self._quiet_until = self.clock() + self.quiet_after_error
            log.warning("could not report progress of job %s to Redis: %s; next try in %.0f s",
                        self.job_id, exc, self.quiet_after_error)
            return
        if not written.accepted:
            self.ended_elsewhere = written.state
            log.warning("job %s: %s's part already ended (%s); this report was not stored",
                        self.job_id, self.worker_id, written.state)

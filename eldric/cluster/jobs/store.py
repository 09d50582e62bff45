"""The job store: every write to a job's records goes through here (README "Job states").

One write path, a Lua script run atomically by Redis, used by the agents' progress,
the registry's importer, the controller, the reaper and the scheduled work alike:

- a final record (`completed`, `failed`, `skipped`, `cancelled`) is never overwritten, except by an explicit
  reset (`write_record(..., reset=True)`), so a late `completed` from an agent cannot
  undo a deadline failure the event stream already reported as final;
- the per-job state counts (`eldric:job:<id>:states`, and whether any part ever started) change
  in the same step, so the job's own state is known without reading every worker's record;
- every accepted write publishes the record on the job's channel with those counts; the event
  feed turns them into the job's state by the one rule (`state.job_state_of`), so the rule is
  written once and no client derives it.

Readers never write: the reaper (jobs/reaper.py) persists the derived deadline and stale-worker
failures, through `write_record(..., expect=...)`.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.core.errors import EldricError, cap_text

# A URL import is a job like a pull, with the registry as its one target "worker".
REGISTRY_WORKER_ID = "registry"
# The states hash's field that says a part has started (it is no state, and counts nothing).
STARTED_FIELD = "+started"

# KEYS: job workers hash, job state counts, worker's job set, events channel
# ARGV: worker id, record JSON, job id, mode ("write" | "reset" | "expect"), expected record JSON
# Returns {accepted, kept state (refused) | counts JSON (accepted)}. FINAL is written in from state.py.
_WRITE = """
local FINAL = {FINAL_STATES}
local current = redis.call('HGET', KEYS[1], ARGV[1])
local before = nil
if current then
  before = cjson.decode(current)['state']
  if ARGV[4] == 'expect' and current ~= ARGV[5] then return {0, before} end
  if FINAL[before] and ARGV[4] ~= 'reset' then return {0, before} end
elseif ARGV[4] == 'expect' then
  return {0, false}
end
local record = cjson.decode(ARGV[2])
local after = record['state']
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if before ~= after then
  if before then redis.call('HINCRBY', KEYS[2], before, -1) end
  redis.call('HINCRBY', KEYS[2], after, 1)
end
if record['started_at'] and record['started_at'] ~= cjson.null then redis.call('HSET', KEYS[2], 'STARTED_FIELD', 1) end
if FINAL[after] then redis.call('SREM', KEYS[3], ARGV[3]) end
local counts = redis.call('HGETALL', KEYS[2])
local by = {}
for i = 1, #counts, 2 do by[counts[i]] = tonumber(counts[i + 1]) end
local job = cjson.encode(by)
redis.call('PUBLISH', KEYS[4], '{"worker":' .. cjson.encode(ARGV[1]) .. ',"job_counts":' .. job .. ','
           .. string.sub(ARGV[2], 2))
return {1, job}
""".replace("FINAL_STATES", ", ".join(f"{s} = true" for s in sorted(jobstate.TERMINAL))).replace("STARTED_FIELD", STARTED_FIELD)


def job_state_of_counts(counts: dict[str, int | str]) -> str:
    """The job's state from the states hash as the write path keeps it (counts plus the started mark)."""
    started = bool(int(counts.get(STARTED_FIELD) or 0))
    return jobstate.job_state_of({s: int(n) for s, n in counts.items() if s != STARTED_FIELD}, started)


def published(message: dict) -> dict:
    """A record as the job channel carries it, with its own finality (`final`) and the job's state and
    finality (`job_state`, `job_final`) in place of the raw counts: clients derive neither."""
    if "state" in message:
        message["final"] = jobstate.is_terminal(message["state"])
    counts = message.pop("job_counts", None)
    if isinstance(counts, dict):
        state = job_state_of_counts(counts)
        message["job_state"], message["job_final"] = state, jobstate.is_final_job(state)
    return message


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
    ok, answer = script(keys=[keys.job_workers(job_id), keys.job_states(job_id), keys.worker_jobs(worker_id),
                              keys.job_events(job_id)],
                        args=[worker_id, json.dumps(record), job_id, mode, expect or ""])
    if ok:
        return Written(True, job_state_of_counts(json.loads(answer)))
    return Written(False, answer or None)


def create_job(client: redis.Redis, *, kind: str, model: str, targets: list[str], source: str,
               deadline_seconds: float, options: dict | None = None, now: float | None = None,
               reasons: Mapping[str, str] | None = None, skipped: Mapping[str, str] | None = None) -> str:
    """Write the job and a pending record per target worker in one transaction.

    `reasons`: why placement chose each target (its record's `placement_reason`, kept by the agent's
    progress writes, which merge into the record). `skipped`: workers placement could not use, each a
    part ended `skipped` at once with its reason (listed in the job's targets after the others; no
    task goes to them and no catch-up follows: they were refused, not away).
    """
    now = time.time() if now is None else now
    job_id = uuid.uuid4().hex
    reasons, skipped = reasons or {}, skipped or {}
    meta = {"id": job_id, "kind": kind, "model": model, "source": source, "created_at": now,
            "deadline_at": now + deadline_seconds, "targets": json.dumps([*targets, *skipped]),
            "options": json.dumps(options or {})}
    pipe = client.pipeline()
    pipe.hset(keys.job(job_id), mapping=meta)
    if targets:
        pipe.hset(keys.job_workers(job_id),
                  mapping={wid: json.dumps(_placed(jobstate.new_record(now), reasons.get(wid))) for wid in targets})
        pipe.hset(keys.job_states(job_id), jobstate.PENDING, len(targets))
    if skipped:
        pipe.hset(keys.job_workers(job_id), mapping={
            wid: json.dumps(_placed(jobstate.skipped(jobstate.new_record(now), now, f"skipped ({why})"), why))
            for wid, why in skipped.items()})
        pipe.hset(keys.job_states(job_id), jobstate.SKIPPED, len(skipped))
    for wid in targets:
        pipe.sadd(keys.worker_jobs(wid), job_id)
    pipe.zadd(keys.JOBS, {job_id: now})
    pipe.execute()
    return job_id


def _placed(record: dict, reason: str | None) -> dict:
    return dict(record, placement_reason=reason) if reason else record


def fail_worker(client: redis.Redis, job_id: str, worker_id: str, reason: str) -> Written:
    """End the worker's part as failed (unless it already ended), keeping what it reported so far."""
    now = time.time()
    reason = cap_text(reason)
    raw = client.hget(keys.job_workers(job_id), worker_id)
    record = json.loads(raw) if raw else jobstate.new_record(now)
    record.update(state=jobstate.FAILED, error=reason, status=reason, finished_at=now, updated_at=now, layer=None)
    return write_record(client, job_id, worker_id, record)


def delete_jobs(client: redis.Redis, job_ids: list[str], *, keep_records: float = 0) -> None:
    """Forget the jobs; with `keep_records`, their workers' records stay that many seconds (then expire),
    so an agent still at work is refused over a final record instead of writing a record nobody owns."""
    pipe = client.pipeline()
    for job_id in job_ids:
        pipe.delete(keys.job(job_id), keys.job_states(job_id), keys.job_secrets(job_id))
        if keep_records > 0:
            pipe.expire(keys.job_workers(job_id), int(keep_records))
        else:
            pipe.delete(keys.job_workers(job_id))
        pipe.zrem(keys.JOBS, job_id)
    pipe.execute()


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



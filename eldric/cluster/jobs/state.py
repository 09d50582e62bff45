"""Per-worker progress records of a job and the job state derived from them (pure functions).

A worker's record goes pending -> pulling | deleting (-> retrying -> pulling) -> completed | failed,
or ends `skipped` (its worker was offline) or `cancelled` (the operator cancelled the job).
Readers add one derived state, `offline`: the worker has not finished and its agent
stopped heartbeating. An offline worker still gets its task when it returns within the
offline grace; a worker offline for longer than the grace (when the job starts or
during it) ends `skipped` (beat's catch-up brings it the model later); one that went silent
mid-pull for longer than the stale timeout, or missed the job's deadline, is failed with
the reason. So no job waits for an unreachable worker (issue 12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PENDING = "pending"
PULLING = "pulling"
RETRYING = "retrying"
DELETING = "deleting"
INSTALLING = "installing"  # the bytes are in; the agent places them for its backends
OFFLINE = "offline"
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"

TERMINAL = frozenset({COMPLETED, FAILED, SKIPPED, CANCELLED})
ACTIVE = frozenset({PULLING, RETRYING, DELETING, INSTALLING})
WORKER_STATES = (PENDING, PULLING, INSTALLING, DELETING, RETRYING, OFFLINE, COMPLETED, FAILED, SKIPPED, CANCELLED)

JOB_PENDING = "pending"
JOB_RUNNING = "running"
JOB_COMPLETED = "completed"
JOB_COMPLETED_WITH_SKIPPED = "completed_with_skipped"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_STATES = (JOB_PENDING, JOB_RUNNING, JOB_COMPLETED, JOB_COMPLETED_WITH_SKIPPED, JOB_FAILED, JOB_CANCELLED)
JOB_FINAL = frozenset({JOB_COMPLETED, JOB_COMPLETED_WITH_SKIPPED, JOB_FAILED, JOB_CANCELLED})

SKIPPED_OFFLINE = "skipped (offline)"


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def percent(completed: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return round(min(100.0, 100.0 * completed / total), 1)


def new_record(now: float) -> dict:
    return {"state": PENDING, "completed": 0, "total": 0, "percent": 0.0, "layer": None,
            "status": "waiting for the worker", "error": None, "updated_at": now,
            "started_at": None, "finished_at": None}


def derive_worker(record: dict, *, now: float, alive: bool, deadline_at: float, stale_after: float,
                  offline_grace: float = math.inf, last_seen: float | None = None) -> tuple[dict, bool]:
    """Return (record as readers should see it, whether the change is final and worth persisting).

    `last_seen`: the worker's last heartbeat (None when unknown: the record's last update counts).
    """
    state = record.get("state", PENDING)
    if is_terminal(state):
        return record, False
    if now > deadline_at:
        why = "worker offline" if not alive else f"still {state}"
        return _failed(record, now, f"job deadline passed ({why})"), True
    if alive:
        return record, False
    silent_for = now - float(record.get("updated_at") or now)
    if state in ACTIVE and silent_for > stale_after:
        return _failed(record, now, f"worker went offline mid-pull ({int(silent_for)} s without news)"), True
    # Offline since its last heartbeat: a worker gone for longer than the grace when the job starts is
    # skipped at once; one that went away just before (an agent restart) or during the job gets the rest.
    offline_since = last_seen if last_seen else float(record.get("updated_at") or now)
    if now - offline_since > offline_grace:
        return skipped(record, now, SKIPPED_OFFLINE), True
    derived = dict(record, state=OFFLINE, status="worker offline; it gets the task when it returns")
    return derived, False


def skipped(record: dict, now: float, reason: str) -> dict:
    return dict(record, state=SKIPPED, status=reason, error=None, finished_at=now, updated_at=now, layer=None)


def cancelled(record: dict, now: float) -> dict:
    return dict(record, state=CANCELLED, status="cancelled", error=None, finished_at=now, updated_at=now, layer=None)


def _failed(record: dict, now: float, reason: str) -> dict:
    return dict(record, state=FAILED, error=reason, status=reason, finished_at=now, updated_at=now)


# The job-state rule, written once (README "Job states"). The job store's Lua script only keeps the
# per-state counts and whether a part ever started; readers and the event feed apply this rule to them.
FINAL_PRECEDENCE = ((CANCELLED, JOB_CANCELLED), (FAILED, JOB_FAILED), (SKIPPED, JOB_COMPLETED_WITH_SKIPPED))
WAITING = frozenset({PENDING, OFFLINE, SKIPPED})  # parts that have not begun (or never will)


def job_state_of(counts: Mapping[str, int], started: bool) -> str:
    """The job's state from how many of its parts are in each state, and whether any part ever started.

    pending until a worker starts (never again after), running, then the final state:
    cancelled if the operator cancelled it, failed if any worker failed,
    completed_with_skipped if some were skipped, completed otherwise.
    """
    present = {s for s, n in counts.items() if n > 0}
    if not present:
        return JOB_PENDING
    if not all(is_terminal(s) for s in present):
        return JOB_PENDING if present <= WAITING and not started else JOB_RUNNING
    for found, job in FINAL_PRECEDENCE:
        if found in present:
            return job
    return JOB_COMPLETED


def job_state(records: list[dict], started: bool = False) -> str:
    """job_state_of the records' states; the job has started if `started` (the write path's mark) or a
    record has `started_at`."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("state", PENDING)] = counts.get(r.get("state", PENDING), 0) + 1
    return job_state_of(counts, started or any(r.get("started_at") for r in records))


def is_final_job(state: str) -> bool:
    return state in JOB_FINAL


def network_bytes(record: dict) -> int:
    """Bytes a worker's part of a job moved over the network.

    A finished part says so (`transferred`: 0 for a model on a shared mount or already on the
    node); a running one counts what it received beyond what it found on disk: whole blobs
    (`reused`) and the bytes of partial downloads it resumed (`resumed_bytes`).
    """
    if record.get("transferred") is not None:
        return int(record.get("transferred") or 0)
    if record.get("state") in ACTIVE:
        found = int(record.get("reused") or 0) + int(record.get("resumed_bytes") or 0)
        return max(0, int(record.get("completed") or 0) - found)
    return 0


def summarize(records: dict[str, dict]) -> dict:
    """Counts per state, the cluster-wide byte progress, how many bytes came from upstream and from peers,
    and how many were taken from partial downloads on the workers' disks (`resumed_bytes`)."""
    counts: dict[str, int] = {}
    completed = total = upstream = peer = resumed = 0
    for record in records.values():
        counts[record.get("state", PENDING)] = counts.get(record.get("state", PENDING), 0) + 1
        completed += int(record.get("completed") or 0)
        total += int(record.get("total") or 0)
        upstream += int(record.get("upstream_bytes") or 0)
        peer += int(record.get("peer_bytes") or 0)
        resumed += int(record.get("resumed_bytes") or 0)
    return {"counts": counts, "completed": completed, "total": total, "percent": percent(completed, total),
            "upstream_bytes": upstream, "peer_bytes": peer, "resumed_bytes": resumed}

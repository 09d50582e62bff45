"""Per-worker progress records of a job and the job state derived from them (pure functions).

A worker's record goes pending -> pulling (-> retrying -> pulling) -> completed | failed.
Readers add one derived state, `offline`: the worker has not finished and its agent
stopped heartbeating. An offline worker still gets its task when it returns, unless
the job's deadline passes first (or it went silent mid-pull for longer than the stale
timeout); then it is failed with the reason, so no job waits forever.
"""

from __future__ import annotations

PENDING = "pending"
PULLING = "pulling"
RETRYING = "retrying"
OFFLINE = "offline"
COMPLETED = "completed"
FAILED = "failed"

TERMINAL = frozenset({COMPLETED, FAILED})
ACTIVE = frozenset({PULLING, RETRYING})

JOB_PENDING = "pending"
JOB_RUNNING = "running"
JOB_COMPLETED = "completed"
JOB_FAILED = "failed"


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


def derive_worker(record: dict, *, now: float, alive: bool, deadline_at: float,
                  stale_after: float) -> tuple[dict, bool]:
    """Return (record as readers should see it, whether the change is final and worth persisting)."""
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
    derived = dict(record, state=OFFLINE, status="worker offline; it gets the task when it returns")
    return derived, False


def _failed(record: dict, now: float, reason: str) -> dict:
    return dict(record, state=FAILED, error=reason, status=reason, finished_at=now, updated_at=now)


def job_state(records: list[dict]) -> str:
    states = [r.get("state", PENDING) for r in records]
    if not states or all(s in (PENDING, OFFLINE) for s in states):
        return JOB_PENDING
    if all(s == COMPLETED for s in states):
        return JOB_COMPLETED
    if all(is_terminal(s) for s in states):
        return JOB_FAILED
    return JOB_RUNNING


def summarize(records: dict[str, dict]) -> dict:
    """Counts per state and the cluster-wide byte progress."""
    counts: dict[str, int] = {}
    completed = total = 0
    for record in records.values():
        counts[record.get("state", PENDING)] = counts.get(record.get("state", PENDING), 0) + 1
        completed += int(record.get("completed") or 0)
        total += int(record.get("total") or 0)
    return {"counts": counts, "completed": completed, "total": total, "percent": percent(completed, total)}

"""eldric.cluster.jobstate: per-worker records, the derived `offline`/reaped states, and job state."""

from __future__ import annotations

import fakeredis
import pytest

from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import create_job
from eldric.cluster.jobs.state import (
    COMPLETED,
    FAILED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_RUNNING,
    OFFLINE,
    PENDING,
    PULLING,
    RETRYING,
    derive_worker,
    job_state,
    percent,
    summarize,
)

NOW = 10_000.0
DEADLINE = NOW + 3600
STALE = 120.0


def record(state: str, *, updated_at: float = NOW, **extra) -> dict:
    return dict(jobstate.new_record(updated_at), state=state, **extra)


def derive(rec: dict, *, now: float = NOW, alive: bool = True, deadline_at: float = DEADLINE,
           stale_after: float = STALE) -> tuple[dict, bool]:
    return derive_worker(rec, now=now, alive=alive, deadline_at=deadline_at, stale_after=stale_after)


def test_new_record_is_pending_with_nothing_done():
    rec = jobstate.new_record(NOW)
    assert rec["state"] == PENDING
    assert (rec["completed"], rec["total"], rec["percent"]) == (0, 0, 0.0)
    assert rec["updated_at"] == NOW
    assert rec["error"] is None and rec["finished_at"] is None


@pytest.mark.parametrize("state", [COMPLETED, FAILED])
@pytest.mark.parametrize("alive", [True, False])
def test_terminal_records_are_never_touched(state, alive):
    rec = record(state, updated_at=0.0)
    out, final = derive(rec, now=DEADLINE + 10_000, alive=alive, stale_after=1)
    assert out == rec
    assert final is False


@pytest.mark.parametrize("state", [PENDING, PULLING, RETRYING])
@pytest.mark.parametrize("alive, why", [(True, "still"), (False, "worker offline")])
def test_passed_deadline_fails_every_unfinished_worker(state, alive, why):
    out, final = derive(record(state), now=DEADLINE + 1, alive=alive)
    assert final is True
    assert out["state"] == FAILED
    assert out["error"].startswith("job deadline passed")
    assert why in out["error"]
    assert out["status"] == out["error"]
    assert out["finished_at"] == DEADLINE + 1
    assert out["updated_at"] == DEADLINE + 1


def test_deadline_reason_names_the_state_the_live_worker_was_in():
    out, _ = derive(record(RETRYING), now=DEADLINE + 1, alive=True)
    assert out["error"] == "job deadline passed (still retrying)"


def test_exactly_at_the_deadline_is_not_yet_past_it():
    out, final = derive(record(PULLING), now=DEADLINE, alive=True)
    assert (out["state"], final) == (PULLING, False)


@pytest.mark.parametrize("state", [PENDING, PULLING, RETRYING])
def test_alive_worker_within_deadline_is_shown_as_recorded(state):
    rec = record(state, updated_at=NOW - 10 * STALE)  # silent, but its agent heartbeats
    out, final = derive(rec, alive=True)
    assert out == rec
    assert final is False


@pytest.mark.parametrize("state", [PULLING, RETRYING])
def test_offline_mid_pull_past_stale_timeout_is_failed(state):
    rec = record(state, updated_at=NOW - STALE - 1)
    out, final = derive(rec, alive=False)
    assert final is True
    assert out["state"] == FAILED
    assert "went offline mid-pull" in out["error"]
    assert f"{int(STALE + 1)} s" in out["error"]


@pytest.mark.parametrize("state", [PULLING, RETRYING])
def test_offline_mid_pull_within_stale_timeout_is_offline_not_failed(state):
    out, final = derive(record(state, updated_at=NOW - STALE + 1), alive=False)
    assert (out["state"], final) == (OFFLINE, False)


def test_pending_offline_worker_waits_however_long_it_is_silent():
    # It gets its task from its queue when it returns, until the deadline.
    out, final = derive(record(PENDING, updated_at=NOW - 100 * STALE), alive=False)
    assert out["state"] == OFFLINE
    assert "offline" in out["status"]
    assert final is False


def test_derive_does_not_mutate_its_input():
    rec = record(PULLING, updated_at=NOW - STALE - 1)
    snapshot = dict(rec)
    derive(rec, alive=False)
    derive(rec, alive=False, now=DEADLINE + 1)
    assert rec == snapshot


def test_missing_state_counts_as_pending():
    out, final = derive({"updated_at": NOW}, alive=False)
    assert (out["state"], final) == (OFFLINE, False)


def r(*states: str) -> list[dict]:
    return [{"state": s} for s in states]


@pytest.mark.parametrize(
    "records, expected",
    [
        ([], JOB_PENDING),
        (r(PENDING), JOB_PENDING),
        (r(PENDING, OFFLINE), JOB_PENDING),
        (r(OFFLINE, OFFLINE), JOB_PENDING),
        ([{}], JOB_PENDING),
        (r(PULLING), JOB_RUNNING),
        (r(RETRYING, PENDING), JOB_RUNNING),
        (r(COMPLETED, PENDING), JOB_RUNNING),
        (r(COMPLETED, OFFLINE), JOB_RUNNING),
        (r(FAILED, PULLING), JOB_RUNNING),
        (r(COMPLETED), JOB_COMPLETED),
        (r(COMPLETED, COMPLETED, COMPLETED), JOB_COMPLETED),
        (r(FAILED), JOB_FAILED),
        (r(COMPLETED, FAILED), JOB_FAILED),
        (r(FAILED, FAILED), JOB_FAILED),
    ],
)
def test_job_state_from_worker_states(records, expected):
    assert job_state(records) == expected


def test_summarize_counts_states_and_adds_bytes():
    records = {
        "a": {"state": COMPLETED, "completed": 100, "total": 100, "upstream_bytes": 100},
        "b": {"state": PULLING, "completed": 70, "total": 100, "upstream_bytes": 10, "peer_bytes": 40,
              "resumed_bytes": 20},
        "c": {"state": PULLING, "completed": 0, "total": 100},
        "d": {"state": PENDING, "completed": None, "total": None},
        "e": {},
    }
    assert summarize(records) == {
        "counts": {COMPLETED: 1, PULLING: 2, PENDING: 2},
        "completed": 170,
        "total": 300,
        "percent": 56.7,
        "upstream_bytes": 110,
        "peer_bytes": 40,
        "resumed_bytes": 20,
    }


def test_summarize_of_no_workers():
    assert summarize({}) == {"counts": {}, "completed": 0, "total": 0, "percent": 0.0, "upstream_bytes": 0,
                             "peer_bytes": 0, "resumed_bytes": 0}


@pytest.mark.parametrize(
    "completed, total, expected",
    [
        (0, 0, 0.0),
        (5, 0, 0.0),
        (5, -1, 0.0),
        (0, 10, 0.0),
        (1, 3, 33.3),
        (2, 3, 66.7),
        (999, 1000, 99.9),
        (10, 10, 100.0),
        (20, 10, 100.0),
    ],
)
def test_percent_is_rounded_and_capped(completed, total, expected):
    assert percent(completed, total) == expected


def test_is_terminal():
    assert jobstate.is_terminal(COMPLETED) and jobstate.is_terminal(FAILED)
    assert not any(jobstate.is_terminal(s) for s in (PENDING, PULLING, RETRYING, OFFLINE, ""))


@pytest.mark.parametrize(("rec", "expected"), [
    ({"state": PULLING, "completed": 700, "reused": 100, "resumed_bytes": 400}, 200),  # found on disk: not moved
    ({"state": PULLING, "completed": 300, "resumed_bytes": 400}, 0),
    ({"state": COMPLETED, "completed": 1000, "resumed_bytes": 400, "transferred": 600}, 600),
    ({"state": FAILED, "completed": 500}, 0),
])
def test_network_bytes_leave_out_what_a_worker_found_on_its_disk(rec, expected):
    """Issue 22, finding 4: /metrics and the rates counted a resumed partial as bytes received."""
    assert jobstate.network_bytes(rec) == expected


def test_progress_counts_resumed_bytes_as_done_but_not_as_moved():
    client = fakeredis.FakeRedis(decode_responses=True)
    job_id = create_job(client, kind="pull", model="m", targets=["w"], source="ollama", deadline_seconds=60)
    clock = iter(float(t) for t in range(100, 200))
    progress = Progress(client, job_id, "w", min_interval=0, clock=lambda: next(clock))
    progress.start(total=1000)
    progress.add_resumed(600)
    progress.add_bytes(100)

    assert progress.moved() == 100
    assert progress.record["completed"] == 700 and progress.record["resumed_bytes"] == 600
    assert progress.record["percent"] == 70.0
    assert progress.record["rate"] <= 100  # per second: the 600 bytes on disk are no rate
    progress.start(total=1000)  # a retry counts its own resume again
    assert progress.record["resumed_bytes"] == 0

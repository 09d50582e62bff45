"""Issue 12, jobs always end: offline grace and `skipped`, catch-ups, cancel, removing a worker."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from controller import workers as cluster
from eldric.core.request_errors import ConflictError, NotFoundError
from eldric.cluster.jobs.reads import get_job
from eldric.cluster.jobs.store import cancel_job, create_job
from eldric.cluster import keys
from eldric.cluster.jobs import catchups as catchup
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.reaper import reap_stale_jobs
from eldric.cluster.jobs.store import JobEndedError, write_record
from eldric.cluster.queues import TASK_PULL, worker_queue
from eldric.cluster import maintenance

NOW = 1_700_000_000.0
STALE = 120.0
GRACE = 300.0


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def register(client, wid: str, *, last_seen: float, alive: bool) -> None:
    client.sadd(keys.WORKERS, wid)
    client.hset(keys.worker(wid), mapping={"id": wid, "type": "inference", "last_seen": last_seen})
    if alive:
        client.set(keys.worker_alive(wid), last_seen)


def new_job(client, targets=("gpu1", "gpu2"), *, now=NOW, kind="pull") -> str:
    return create_job(client, kind=kind, model="tiny:latest", targets=list(targets), source="ollama",
                      deadline_seconds=3600.0, now=now)


def stored(client, job_id: str, wid: str) -> dict:
    return json.loads(client.hget(keys.job_workers(job_id), wid))


def read(client, job_id: str, now: float) -> dict:
    return get_job(client, job_id, stale_after=STALE, offline_grace=GRACE, now=now)


# Derivation -------------------------------------------------------------------------------------

def test_a_worker_offline_longer_than_the_grace_when_the_job_starts_is_skipped_at_once(client):
    register(client, "gpu1", last_seen=NOW, alive=True)
    register(client, "gpu2", last_seen=NOW - 600, alive=False)
    job_id = new_job(client)
    Progress(client, job_id, "gpu1").finish(total=10)

    job = read(client, job_id, NOW + 5)

    assert {w["worker"]: w["state"] for w in job["workers"]} == {"gpu1": "completed", "gpu2": "skipped"}
    assert job["workers"][1]["status"] == "skipped (offline)"
    assert job["state"] == jobstate.JOB_COMPLETED_WITH_SKIPPED
    assert job["summary"]["counts"] == {"completed": 1, "skipped": 1}
    assert job["finished_at"] is not None


def test_a_worker_that_goes_offline_around_the_job_start_is_skipped_only_after_the_grace(client):
    register(client, "gpu1", last_seen=NOW + 10, alive=False)  # alive at the start, gone 10 s later
    job_id = new_job(client, ["gpu1"])

    assert read(client, job_id, NOW + 10 + GRACE - 1)["workers"][0]["state"] == jobstate.OFFLINE
    job = read(client, job_id, NOW + 10 + GRACE + 1)
    assert job["workers"][0]["state"] == jobstate.SKIPPED
    assert job["state"] == jobstate.JOB_COMPLETED_WITH_SKIPPED


def test_a_job_never_goes_back_to_pending_once_a_worker_started(client):
    register(client, "gpu1", last_seen=NOW + 20, alive=False)
    job_id = new_job(client, ["gpu1"])
    Progress(client, job_id, "gpu1", clock=lambda: NOW + 20).start(total=1000)

    job = read(client, job_id, NOW + 30)  # offline at 0 %, within the stale timeout

    assert job["workers"][0]["state"] == jobstate.OFFLINE
    assert job["state"] == jobstate.JOB_RUNNING


@pytest.mark.parametrize(("states", "expected"), [
    (["pending", "pending"], "pending"),
    (["pending", "skipped"], "pending"),
    (["pulling", "skipped"], "running"),
    (["completed", "skipped"], "completed_with_skipped"),
    (["completed", "failed", "skipped"], "failed"),
    (["completed", "cancelled"], "cancelled"),
    (["deleting"], "running"),
])
def test_job_state(states, expected):
    assert jobstate.job_state([{"state": s} for s in states]) == expected


# Reaper and catch-ups ---------------------------------------------------------------------------

def test_the_reaper_persists_skipped_and_records_a_catch_up(client):
    register(client, "gpu1", last_seen=NOW, alive=True)
    register(client, "gpu2", last_seen=NOW - 600, alive=False)
    job_id = new_job(client)

    reaped = reap_stale_jobs(client, stale_after=STALE, offline_grace=GRACE, now=NOW + 5)

    assert [(r.worker_id, r.state) for r in reaped] == [("gpu2", jobstate.SKIPPED)]
    assert stored(client, job_id, "gpu2")["state"] == jobstate.SKIPPED
    assert client.hget(keys.job_states(job_id), "skipped") == "1"
    assert job_id not in client.smembers(keys.worker_jobs("gpu2"))
    [entry] = catchup.pending_catchups(client, "gpu2")
    assert (entry["job_id"], entry["kind"], entry["model"]) == (job_id, "pull", "tiny:latest")
    # The record is final: a late agent write is refused (so the agent does not download for nothing).
    assert not write_record(client, job_id, "gpu2", {**stored(client, job_id, "gpu2"), "state": "pulling"}).accepted


def test_a_part_failed_while_its_worker_was_offline_gets_a_catch_up_and_one_failed_online_does_not(client):
    """Issue 22, finding 4: a worker killed mid-pull was failed ("went offline mid-pull") and never caught up."""
    register(client, "gpu1", last_seen=NOW, alive=True)
    register(client, "gpu2", last_seen=NOW - 200, alive=False)
    job_id = new_job(client)
    for wid in ("gpu1", "gpu2"):
        Progress(client, job_id, wid, clock=lambda: NOW - 200).start(total=1000)
    late = create_job(client, kind="pull", model="late:latest", targets=["gpu1"], source="ollama",
                      deadline_seconds=1.0, now=NOW - 200)
    Progress(client, late, "gpu1", clock=lambda: NOW - 200).start(total=1000)

    reaped = reap_stale_jobs(client, stale_after=STALE, offline_grace=GRACE, now=NOW)

    assert sorted((r.job_id == job_id, r.worker_id, r.state) for r in reaped) == [
        (False, "gpu1", jobstate.FAILED), (True, "gpu2", jobstate.FAILED)]
    assert "went offline mid-pull" in stored(client, job_id, "gpu2")["error"]
    assert [e["job_id"] for e in catchup.pending_catchups(client, "gpu2")] == [job_id]
    assert catchup.pending_catchups(client, "gpu1") == []  # online past its deadline: its own failure


def test_catch_ups_become_single_worker_jobs_once_the_worker_is_back(client):
    register(client, "gpu2", last_seen=NOW - 600, alive=False)
    job_id = new_job(client, ["gpu2"])
    reap_stale_jobs(client, stale_after=STALE, offline_grace=GRACE, now=NOW + 5)
    sent = []

    def send(task, args, worker_ids):
        sent.extend((task, args, worker_queue(w)) for w in worker_ids)
        return {}

    assert maintenance.reconcile_catchups(client, send, deadline_seconds=600) == []  # still offline
    client.set(keys.worker_alive("gpu2"), 1)
    [started] = maintenance.reconcile_catchups(client, send, deadline_seconds=600)

    assert started["catch_up_of"] == job_id and started["worker"] == "gpu2"
    assert sent == [(TASK_PULL, [started["job_id"], "tiny:latest"], worker_queue("gpu2"))]
    assert json.loads(client.hget(keys.job(started["job_id"]), "targets")) == ["gpu2"]
    assert catchup.pending_catchups(client, "gpu2") == []  # replayed once


# Cancel -----------------------------------------------------------------------------------------

def test_cancel_ends_unfinished_parts_and_a_running_download_stops(client):
    register(client, "gpu1", last_seen=NOW, alive=True)
    register(client, "gpu2", last_seen=NOW, alive=True)
    job_id = new_job(client)
    Progress(client, job_id, "gpu1").finish(total=10)
    running = Progress(client, job_id, "gpu2", min_interval=0, stop_when_ended=True)
    running.start(total=1000)

    assert cancel_job(client, job_id) == ["gpu2"]

    assert stored(client, job_id, "gpu1")["state"] == jobstate.COMPLETED
    assert stored(client, job_id, "gpu2")["state"] == jobstate.CANCELLED
    assert read(client, job_id, NOW + 1)["state"] == jobstate.JOB_CANCELLED
    with pytest.raises(JobEndedError):
        running.add_bytes(100)  # the refused write tells the agent; the download's callback raises
    assert catchup.pending_catchups(client, "gpu2") == []


@pytest.fixture
def http(client):
    from controller import create_app

    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})
    app.extensions["eldric.redis"] = client
    return app.test_client()


def test_cancel_api_answers_404_unknown_and_409_finished(client, http):
    now = time.time()
    register(client, "gpu1", last_seen=now, alive=True)
    job_id = new_job(client, ["gpu1"], now=now)

    assert http.post("/api/v1/models/pull-jobs/nope/cancel").status_code == 404
    resp = http.post(f"/api/v1/models/pull-jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.get_json()["state"] == "cancelled"
    assert resp.get_json()["workers"][0]["state"] == "cancelled"
    assert http.post(f"/api/v1/models/pull-jobs/{job_id}/cancel").status_code == 409


def test_remove_worker_api(client, http):
    register(client, "gpu1", last_seen=time.time(), alive=True)

    assert http.delete("/api/v1/workers/nope").status_code == 404
    assert http.delete("/api/v1/workers/gpu1").status_code == 409
    assert http.delete("/api/v1/workers/gpu1?force=true").status_code == 204
    assert http.get("/api/v1/workers/gpu1").status_code == 404


# Removing a worker ------------------------------------------------------------------------------

def test_remove_worker_refuses_online_unless_forced_and_forgets_everything(client):
    register(client, "gpu1", last_seen=NOW, alive=True)
    client.hset(keys.worker_models("gpu1"), "tiny:latest", "{}")
    job_id = new_job(client, ["gpu1"])
    client.hset(keys.worker_catchups("gpu1"), "x", json.dumps({"at": 0}))

    with pytest.raises(NotFoundError):
        cluster.remove_worker(client, "nope")
    with pytest.raises(ConflictError):
        cluster.remove_worker(client, "gpu1")
    cluster.remove_worker(client, "gpu1", force=True)

    assert not client.sismember(keys.WORKERS, "gpu1")
    for key in (keys.worker("gpu1"), keys.worker_alive("gpu1"), keys.worker_models("gpu1"),
                keys.worker_jobs("gpu1"), keys.worker_catchups("gpu1")):
        assert not client.exists(key), key
    assert stored(client, job_id, "gpu1")["status"] == "skipped (worker removed)"
    assert get_job(client, job_id, stale_after=STALE, offline_grace=GRACE)["state"] == "completed_with_skipped"


def test_a_catch_up_waits_while_another_job_of_the_model_runs_on_the_worker(client):
    register(client, "gpu2", last_seen=NOW - 600, alive=False)
    first = new_job(client, ["gpu2"])
    reap_stale_jobs(client, stale_after=STALE, offline_grace=GRACE, now=NOW + 5)
    client.set(keys.worker_alive("gpu2"), 1)
    new_job(client, ["gpu2"])  # e.g. a pin's pull, started first
    sent = []

    assert maintenance.reconcile_catchups(client, lambda *a: sent.append(a) or {}, deadline_seconds=600) == []
    assert sent == [] and catchup.pending_catchups(client, "gpu2")[0]["job_id"] == first

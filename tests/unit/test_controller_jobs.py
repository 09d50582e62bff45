"""controller.jobs: job records in Redis, derived worker state, reaping, listing and pruning."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from eldric.cluster.jobs.reads import DROPPED_RECORDS_SECONDS, get_job, list_jobs, prune_jobs
from eldric.cluster.jobs.store import create_job, fail_worker, published, write_record
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.reaper import reap_stale_jobs
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys

NOW = 1_700_000_000.0
STALE = 120.0


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def new_job(client, targets=("gpu1", "gpu2"), *, now=NOW, deadline=3600.0, model="tiny:latest", **kw) -> str:
    return create_job(client, kind=kw.pop("kind", "pull"), model=model, targets=list(targets), source="ollama",
                      deadline_seconds=deadline, now=now, **kw)


def set_record(client, job_id: str, worker_id: str, **fields) -> None:
    raw = client.hget(keys.job_workers(job_id), worker_id)
    record = json.loads(raw) if raw else jobstate.new_record(NOW)
    client.hset(keys.job_workers(job_id), worker_id, json.dumps({**record, **fields}))


def stored(client, job_id: str, worker_id: str) -> dict:
    return json.loads(client.hget(keys.job_workers(job_id), worker_id))


def online(client, *worker_ids: str) -> None:
    for wid in worker_ids:
        client.set(keys.worker_alive(wid), 1)


# create_job / get_job ----------------------------------------------------------------------------

def test_create_job_writes_meta_pending_records_assignments_and_index(client):
    job_id = new_job(client, options={"insecure": True})

    meta = client.hgetall(keys.job(job_id))
    assert meta["model"] == "tiny:latest"
    assert float(meta["deadline_at"]) == NOW + 3600
    assert json.loads(meta["targets"]) == ["gpu1", "gpu2"]
    assert set(client.hkeys(keys.job_workers(job_id))) == {"gpu1", "gpu2"}
    assert stored(client, job_id, "gpu1")["state"] == jobstate.PENDING
    assert client.smembers(keys.worker_jobs("gpu1")) == {job_id}
    assert client.zscore(keys.JOBS, job_id) == NOW


def test_job_ids_are_unique(client):
    assert new_job(client) != new_job(client)


def test_get_job_view(client):
    online(client, "gpu1", "gpu2")
    job_id = new_job(client, options={"k": "v"})
    job = get_job(client, job_id, stale_after=STALE, now=NOW + 1)
    assert job["id"] == job_id
    assert (job["kind"], job["model"], job["source"]) == ("pull", "tiny:latest", "ollama")
    assert job["state"] == jobstate.JOB_PENDING
    assert job["created_at"] == NOW
    assert job["deadline_at"] == NOW + 3600
    assert job["finished_at"] is None
    assert job["targets"] == ["gpu1", "gpu2"]
    assert job["options"] == {"k": "v"}
    assert [x["worker"] for x in job["workers"]] == ["gpu1", "gpu2"]
    assert job["summary"]["counts"] == {jobstate.PENDING: 2}


def test_get_unknown_job_is_none(client):
    assert get_job(client, "nope", stale_after=STALE) is None


def test_job_without_targets_is_pending_and_empty(client):
    job_id = new_job(client, targets=())
    job = get_job(client, job_id, stale_after=STALE, now=NOW)
    assert job["workers"] == [] and job["state"] == jobstate.JOB_PENDING


def test_offline_worker_is_shown_offline_but_not_persisted(client):
    online(client, "gpu1")
    job_id = new_job(client)
    job = get_job(client, job_id, stale_after=STALE, now=NOW + 10)
    states = {x["worker"]: x["state"] for x in job["workers"]}
    assert states == {"gpu1": jobstate.PENDING, "gpu2": jobstate.OFFLINE}
    assert stored(client, job_id, "gpu2")["state"] == jobstate.PENDING
    assert client.smembers(keys.worker_jobs("gpu2")) == {job_id}


def test_passed_deadline_is_shown_by_readers_and_persisted_by_the_reaper(client):
    online(client, "gpu1")
    job_id = new_job(client, deadline=60)
    set_record(client, job_id, "gpu1", state=jobstate.COMPLETED, finished_at=NOW + 30)

    job = get_job(client, job_id, stale_after=STALE, now=NOW + 61)

    assert job["state"] == jobstate.JOB_FAILED
    assert job["finished_at"] == NOW + 61
    assert stored(client, job_id, "gpu2")["state"] == jobstate.PENDING  # reads never write
    reaped = reap_stale_jobs(client, stale_after=STALE, now=NOW + 61)
    assert [(r.job_id, r.worker_id) for r in reaped] == [(job_id, "gpu2")]
    gpu2 = stored(client, job_id, "gpu2")
    assert gpu2["state"] == jobstate.FAILED
    assert "deadline" in gpu2["error"]
    assert client.smembers(keys.worker_jobs("gpu2")) == set()
    assert stored(client, job_id, "gpu1")["state"] == jobstate.COMPLETED  # finished work untouched


def test_offline_mid_pull_worker_is_reaped_after_stale_timeout(client):
    job_id = new_job(client, targets=["gpu1"])
    set_record(client, job_id, "gpu1", state=jobstate.PULLING, updated_at=NOW)

    assert get_job(client, job_id, stale_after=STALE, now=NOW + STALE - 1)["workers"][0]["state"] == jobstate.OFFLINE
    job = get_job(client, job_id, stale_after=STALE, now=NOW + STALE + 1)

    assert job["state"] == jobstate.JOB_FAILED
    assert stored(client, job_id, "gpu1")["state"] == jobstate.PULLING  # reads never write
    reap_stale_jobs(client, stale_after=STALE, now=NOW + STALE + 1)
    assert stored(client, job_id, "gpu1")["state"] == jobstate.FAILED
    assert "offline mid-pull" in stored(client, job_id, "gpu1")["error"]


def test_completed_job_reports_latest_finish(client):
    job_id = new_job(client)
    set_record(client, job_id, "gpu1", state=jobstate.COMPLETED, finished_at=NOW + 5, completed=10, total=10)
    set_record(client, job_id, "gpu2", state=jobstate.COMPLETED, finished_at=NOW + 9, completed=10, total=10)
    job = get_job(client, job_id, stale_after=STALE, now=NOW + 10)
    assert job["state"] == jobstate.JOB_COMPLETED
    assert job["finished_at"] == NOW + 9
    assert job["summary"]["percent"] == 100.0


def test_running_job_has_no_finish_time(client):
    online(client, "gpu2")
    job_id = new_job(client)
    set_record(client, job_id, "gpu1", state=jobstate.COMPLETED, finished_at=NOW + 5)
    set_record(client, job_id, "gpu2", state=jobstate.PULLING)
    job = get_job(client, job_id, stale_after=STALE, now=NOW + 6)
    assert (job["state"], job["finished_at"]) == (jobstate.JOB_RUNNING, None)


def test_fail_worker_persists_failure_and_unassigns(client):
    job_id = new_job(client)
    fail_worker(client, job_id, "gpu1", "could not enqueue")
    assert stored(client, job_id, "gpu1")["state"] == jobstate.FAILED
    assert stored(client, job_id, "gpu1")["error"] == "could not enqueue"
    assert client.smembers(keys.worker_jobs("gpu1")) == set()
    assert client.smembers(keys.worker_jobs("gpu2")) == {job_id}


def test_a_final_failure_is_never_flipped_back_to_completed_by_a_late_agent(client):
    """The flip of issue 10: the reaper fails a worker at the deadline, then the agent reports `completed`."""
    events = client.pubsub(ignore_subscribe_messages=True)
    job_id = new_job(client, targets=["gpu1"], deadline=60)
    events.subscribe(keys.job_events(job_id))
    events.get_message(timeout=0.05)  # the subscription's confirmation
    agent = Progress(client, job_id, "gpu1", clock=lambda: NOW + 10)
    agent.start(total=100)
    assert reap_stale_jobs(client, stale_after=STALE, now=NOW + 61)  # online or not, past the deadline

    agent.clock = lambda: NOW + 62
    agent.finish()

    assert stored(client, job_id, "gpu1")["state"] == jobstate.FAILED
    assert "deadline" in stored(client, job_id, "gpu1")["error"]
    assert agent.ended_elsewhere == jobstate.FAILED
    seen = []
    while (message := events.get_message(timeout=0.05)) is not None:
        seen.append(published(json.loads(message["data"])))
    assert [(e["state"], e["job_state"]) for e in seen] == [(jobstate.PULLING, jobstate.JOB_RUNNING),
                                                           (jobstate.FAILED, jobstate.JOB_FAILED)]
    assert get_job(client, job_id, stale_after=STALE, now=NOW + 63)["state"] == jobstate.JOB_FAILED


def test_fail_worker_publishes_and_keeps_a_finished_part(client):
    events = client.pubsub(ignore_subscribe_messages=True)
    job_id = new_job(client)
    events.subscribe(keys.job_events(job_id))
    events.get_message(timeout=0.05)  # the subscription's confirmation
    Progress(client, job_id, "gpu1").finish(total=10)
    assert not fail_worker(client, job_id, "gpu1", "too late").accepted
    assert fail_worker(client, job_id, "gpu2", "could not enqueue").accepted
    seen = []
    while (message := events.get_message(timeout=0.05)) is not None:
        seen.append(published(json.loads(message["data"])))
    assert [(e["worker"], e["state"], e["job_state"]) for e in seen] == [
        ("gpu1", jobstate.COMPLETED, jobstate.JOB_RUNNING), ("gpu2", jobstate.FAILED, jobstate.JOB_FAILED)]
    assert stored(client, job_id, "gpu1")["state"] == jobstate.COMPLETED


# list_jobs ---------------------------------------------------------------------------------------

def make_jobs(client, n: int, *, completed: set[int] = frozenset()) -> list[str]:
    """n jobs created one second apart ending now; returns ids oldest first."""
    start = time.time() - n
    out = []
    for i in range(n):
        job_id = new_job(client, targets=["gpu1"], now=start + i, model=f"m{i}:latest")
        if i in completed:
            set_record(client, job_id, "gpu1", state=jobstate.COMPLETED, finished_at=start + i)
        out.append(job_id)
    return out


def test_list_jobs_newest_first_with_total(client):
    made = make_jobs(client, 5)
    found, total = list_jobs(client, stale_after=STALE)
    assert [j["id"] for j in found] == made[::-1]
    assert total == 5


def test_list_jobs_limit_and_offset(client):
    made = make_jobs(client, 5)
    found, total = list_jobs(client, stale_after=STALE, limit=2, offset=1)
    assert [j["id"] for j in found] == [made[3], made[2]]
    assert total == 5
    assert list_jobs(client, stale_after=STALE, offset=5) == ([], 5)


def test_list_jobs_filters_by_state_and_offsets_within_the_filter(client):
    made = make_jobs(client, 6, completed={0, 2, 4})
    found, _ = list_jobs(client, stale_after=STALE, state=jobstate.JOB_COMPLETED)
    assert [j["id"] for j in found] == [made[4], made[2], made[0]]
    found, _ = list_jobs(client, stale_after=STALE, state=jobstate.JOB_COMPLETED, limit=1, offset=1)
    assert [j["id"] for j in found] == [made[2]]
    found, _ = list_jobs(client, stale_after=STALE, state=jobstate.JOB_PENDING)
    assert [j["id"] for j in found] == [made[5], made[3], made[1]]


def test_list_jobs_filter_reads_past_the_first_batch(client):
    made = make_jobs(client, 60, completed={0})
    found, _ = list_jobs(client, stale_after=STALE, limit=1, state=jobstate.JOB_COMPLETED)
    assert [j["id"] for j in found] == [made[0]]


def test_list_jobs_filters_by_kind(client):
    start = time.time()
    pull = new_job(client, now=start - 2)
    dist = new_job(client, now=start - 1, kind="distribute")
    assert [j["id"] for j in list_jobs(client, stale_after=STALE, kind="distribute")[0]] == [dist]
    assert [j["id"] for j in list_jobs(client, stale_after=STALE, kind="pull")[0]] == [pull]


def test_list_jobs_skips_index_entries_whose_job_is_gone(client):
    made = make_jobs(client, 2)
    client.delete(keys.job(made[0]))
    assert [j["id"] for j in list_jobs(client, stale_after=STALE)[0]] == [made[1]]


# prune_jobs --------------------------------------------------------------------------------------

def job_exists(client, job_id: str) -> bool:
    return bool(client.exists(keys.job(job_id)) or client.exists(keys.job_workers(job_id))
                or client.zscore(keys.JOBS, job_id) is not None)


def finished_job(client, *, now: float) -> str:
    job_id = new_job(client, targets=["gpu1"], now=now, deadline=60)
    write_record(client, job_id, "gpu1", {**stored(client, job_id, "gpu1"), "state": jobstate.COMPLETED})
    return job_id


def test_prune_forgets_finished_jobs_older_than_retention(client):
    old = finished_job(client, now=NOW - 1000)
    recent = finished_job(client, now=NOW - 10)
    assert prune_jobs(client, retention_seconds=100, keep_max=100, now=NOW) == 1
    assert not job_exists(client, old)
    assert job_exists(client, recent)


def test_prune_keeps_old_jobs_still_running_within_their_deadline(client):
    running = new_job(client, targets=["gpu1", "gpu2"], now=NOW - 1000, deadline=5000)
    set_record(client, running, "gpu1", state=jobstate.COMPLETED)
    set_record(client, running, "gpu2", state=jobstate.PULLING)
    assert prune_jobs(client, retention_seconds=100, keep_max=100, now=NOW) == 0
    assert job_exists(client, running)


def test_prune_forgets_unfinished_jobs_past_their_deadline(client):
    expired = new_job(client, targets=["gpu1"], now=NOW - 1000, deadline=500)
    assert prune_jobs(client, retention_seconds=100, keep_max=100, now=NOW) == 1
    assert not job_exists(client, expired)


def test_prune_keeps_at_most_keep_max_dropping_the_oldest(client):
    made = [finished_job(client, now=NOW - 50 + i) for i in range(5)]
    assert prune_jobs(client, retention_seconds=10**6, keep_max=3, now=NOW) == 2
    assert [job_exists(client, j) for j in made] == [False, False, True, True, True]
    assert client.zcard(keys.JOBS) == 3


def test_keep_max_drops_finished_jobs_before_unfinished_ones(client):
    running = new_job(client, targets=["gpu1"], now=NOW - 50, deadline=3600)
    done = finished_job(client, now=NOW - 40)
    newest = finished_job(client, now=NOW - 30)
    assert prune_jobs(client, retention_seconds=10**6, keep_max=1, now=NOW) == 2
    assert (job_exists(client, running), job_exists(client, done), job_exists(client, newest)) == (True, False, False)


def test_keep_max_counts_unfinished_jobs_cancelling_the_oldest_before_forgetting_them(client, caplog):
    waiting = [new_job(client, targets=["gpu1", "gpu2"], now=NOW - 50 + i, deadline=3600) for i in range(4)]
    write_record(client, waiting[0], "gpu2", {**stored(client, waiting[0], "gpu2"), "state": jobstate.COMPLETED})
    assert prune_jobs(client, retention_seconds=10**6, keep_max=2, now=NOW) == 2
    assert client.zrange(keys.JOBS, 0, -1) == waiting[2:]
    for dropped in waiting[:2]:
        assert not client.exists(keys.job(dropped), keys.job_states(dropped))
        assert 0 < client.ttl(keys.job_workers(dropped)) <= DROPPED_RECORDS_SECONDS  # for its agents, then gone
    assert client.smembers(keys.worker_jobs("gpu1")) == set(waiting[2:])
    assert stored(client, waiting[0], "gpu1")["state"] == jobstate.CANCELLED
    assert stored(client, waiting[0], "gpu2")["state"] == jobstate.COMPLETED  # a final part stays as it was
    # An agent still at work is refused over its cancelled record (and stops), writing no record nobody owns.
    assert not write_record(client, waiting[1], "gpu1", {**stored(client, waiting[1], "gpu1"), "state": "pulling"}).accepted
    assert f"job {waiting[0]} cancelled and dropped from the job history" in caplog.text


def test_prune_with_nothing_to_do(client):
    job_id = finished_job(client, now=NOW)
    assert prune_jobs(client, retention_seconds=100, keep_max=10, now=NOW) == 0
    assert job_exists(client, job_id)


def test_the_reaper_waits_one_stale_period_after_redis_itself_was_away(client, monkeypatch):
    """Redis restarted (with its data) 10 s ago: the agents' silence was Redis's, not theirs."""
    job_id = new_job(client, targets=["gpu1"], deadline=3600)
    set_record(client, job_id, "gpu1", state=jobstate.PULLING, updated_at=NOW)
    monkeypatch.setattr(client, "info", lambda section=None: {"uptime_in_seconds": 10})
    assert reap_stale_jobs(client, stale_after=STALE, now=NOW + STALE + 60) == []
    assert stored(client, job_id, "gpu1")["state"] == jobstate.PULLING
    monkeypatch.setattr(client, "info", lambda section=None: {"uptime_in_seconds": STALE + 1})
    assert [r.worker_id for r in reap_stale_jobs(client, stale_after=STALE, now=NOW + STALE + 60)] == ["gpu1"]


def test_deadlines_apply_even_right_after_a_redis_restart(client, monkeypatch):
    job_id = new_job(client, targets=["gpu1"], deadline=60)
    set_record(client, job_id, "gpu1", state=jobstate.PULLING, updated_at=NOW)
    monkeypatch.setattr(client, "info", lambda section=None: {"uptime_in_seconds": 1})
    [reaped] = reap_stale_jobs(client, stale_after=STALE, now=NOW + 61)
    assert "deadline" in reaped.reason

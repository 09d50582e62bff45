"""Scheduled work as plain functions over fakeredis: inventory fan-out, reaper, pin reconciliation, updates."""

from __future__ import annotations

import hashlib
import json
import time

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.cluster import pins
from eldric.cluster.jobs.store import create_job
from eldric.core.names import ModelName
from eldric.cluster import maintenance
from eldric.cluster.jobs.start import BROKER_UNAVAILABLE
from eldric.cluster.queues import worker_queue
from worker_agent.pulling import upstream_digest
from eldric.transfer.errors import SourceUnavailableError


class Recorder:
    """Stands in for the Celery sender (eldric/cluster/dispatch.job_sender): records (task, args, queue)
    per worker; some queues can be down."""

    def __init__(self, down: set[str] = frozenset()) -> None:
        self.sent: list[tuple[str, list, str]] = []
        self.down = down

    def __call__(self, name: str, args: list, worker_ids: list[str]) -> dict[str, str]:
        failed = {}
        for wid in worker_ids:
            if worker_queue(wid) in self.down:
                failed[wid] = BROKER_UNAVAILABLE
            else:
                self.sent.append((name, args, worker_queue(wid)))
        return failed


class FakeSource:
    """A registry whose tag points at `manifest`; `fail` makes it unreachable."""

    def __init__(self, manifest: bytes = b'{"v": 1}', fail: bool = False) -> None:
        self.manifest, self.fail, self.asked = manifest, fail, []

    def fetch_manifest(self, name: ModelName):
        self.asked.append(name.short)
        if self.fail:
            raise SourceUnavailableError("registry http://up unreachable: connection refused")
        return self.manifest, None

    def describe(self) -> str:
        return "http://up"


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def add_worker(r, wid: str, wtype: str = "inference", online: bool = True, models: dict | None = None) -> None:
    cluster_workers.register(r, {"id": wid, "type": wtype, "address": f"http://{wid}", "backends": ["ollama"]}, ttl=15)
    if not online:
        cluster_workers.go_offline(r, wid)
    cluster_workers.publish_inventory(r, wid, [{"name": n, "digest": d} for n, d in (models or {}).items()])


def job_record(r, job_id: str, wid: str) -> dict:
    return json.loads(r.hget(keys.job_workers(job_id), wid))


# --- inventory sync ---------------------------------------------------------------------------

def test_inventory_sync_is_sent_to_each_online_workers_own_queue(r):
    add_worker(r, "a")
    add_worker(r, "d", "data")
    add_worker(r, "off", online=False)
    send = Recorder()
    assert maintenance.request_inventory_sync(r, send) == ["a", "d"]
    assert send.sent == [("inventory.sync", [], "worker.a"), ("inventory.sync", [], "worker.d")]


# --- reaper -----------------------------------------------------------------------------------

def _pulling(r, job_id: str, wid: str, updated_at: float) -> None:
    record = dict(jobstate.new_record(updated_at), state=jobstate.PULLING, completed=10, total=100)
    r.hset(keys.job_workers(job_id), wid, json.dumps(record))


def test_reaper_fails_a_silent_offline_worker_mid_pull_and_persists_it(r):
    add_worker(r, "gone", online=False)
    add_worker(r, "busy")
    now = time.time()
    job = create_job(r, kind="pull", model="tiny:latest", targets=["gone", "busy"], source="ollama",
                     deadline_seconds=3600, now=now - 100)
    _pulling(r, job, "gone", now - 60)
    _pulling(r, job, "busy", now - 60)  # online: silence alone is not a reason
    reaped = maintenance.reap_stale_jobs(r, stale_after=30)
    assert [(x.job_id, x.worker_id) for x in reaped] == [(job, "gone")]
    gone = job_record(r, job, "gone")
    assert gone["state"] == "failed" and "offline mid-pull" in gone["error"] and gone["finished_at"]
    assert job_record(r, job, "busy")["state"] == "pulling"
    assert job not in r.smembers(keys.worker_jobs("gone")) and job in r.smembers(keys.worker_jobs("busy"))
    assert maintenance.reap_stale_jobs(r, stale_after=30) == []  # idempotent


@pytest.mark.parametrize("silent_for, stale_after, online, state, reaped", [
    (10, 30, False, jobstate.PULLING, False),   # not silent long enough
    (60, 30, False, jobstate.PENDING, False),   # never started: it gets the task when it returns
    (60, 30, False, jobstate.RETRYING, True),
    (60, 30, True, jobstate.PULLING, False),
])
def test_reaper_only_fails_what_jobstate_calls_over(r, silent_for, stale_after, online, state, reaped):
    add_worker(r, "w", online=online)
    now = time.time()
    job = create_job(r, kind="pull", model="m:1", targets=["w"], source="ollama", deadline_seconds=3600,
                     now=now - 100)
    r.hset(keys.job_workers(job), "w", json.dumps(dict(jobstate.new_record(now - silent_for), state=state)))
    assert bool(maintenance.reap_stale_jobs(r, stale_after=stale_after)) is reaped


def test_reaper_fails_unfinished_workers_past_the_deadline_even_when_online(r):
    add_worker(r, "w")
    job = create_job(r, kind="pull", model="m:1", targets=["w"], source="ollama", deadline_seconds=10,
                     now=time.time() - 20)
    maintenance.reap_stale_jobs(r, stale_after=30)
    assert "deadline" in job_record(r, job, "w")["error"]


# --- pins: reconcile --------------------------------------------------------------------------

def reconcile(r, send, **kw):
    return maintenance.reconcile_pins(r, send, deadline_seconds=600, retry_after=60, **kw)


def test_reconcile_pulls_a_pinned_model_to_eligible_online_workers_lacking_it(r):
    add_worker(r, "has", models={"tiny:latest": "sha256:a"})
    add_worker(r, "lacks")
    add_worker(r, "cloud", "cloud")
    add_worker(r, "data", "data")
    add_worker(r, "asleep", online=False)
    pins.save_pin(r, pins.Pin(model="tiny:latest"))
    send = Recorder()
    [job] = reconcile(r, send)
    assert job["workers"] == ["cloud", "lacks"] and job["reason"] == "pinned"
    assert sorted(send.sent) == [("models.pull", [job["job_id"], "tiny:latest"], "worker.cloud"),
                                 ("models.pull", [job["job_id"], "tiny:latest"], "worker.lacks")]
    meta = r.hgetall(keys.job(job["job_id"]))
    assert meta["kind"] == "pull" and meta["model"] == "tiny:latest"
    assert json.loads(meta["options"])["pin"] == "tiny:latest"
    assert job["job_id"] in r.smembers(keys.worker_jobs("lacks"))
    assert reconcile(r, send) == []  # the job is on it: no second pull
    assert len(send.sent) == 2


def test_reconcile_respects_the_pins_worker_list(r):
    add_worker(r, "a")
    add_worker(r, "b")
    pins.save_pin(r, pins.Pin(model="tiny:latest", workers=("b", "not-yet-registered")))
    [job] = reconcile(r, Recorder())
    assert job["workers"] == ["b"]


def test_reconcile_waits_before_retrying_a_failed_pin_pull(r):
    add_worker(r, "w")
    pins.save_pin(r, pins.Pin(model="tiny:latest"))
    now = time.time()
    [job] = reconcile(r, Recorder(), now=now)
    r.hset(keys.job_workers(job["job_id"]), "w", json.dumps(dict(jobstate.new_record(now), state="failed",
                                                                  finished_at=now)))
    r.srem(keys.worker_jobs("w"), job["job_id"])
    assert reconcile(r, Recorder(), now=now + 30) == []
    assert reconcile(r, Recorder(), now=now + 61)[0]["workers"] == ["w"]


def test_reconcile_runs_once_at_a_time(r):
    add_worker(r, "w")
    pins.save_pin(r, pins.Pin(model="tiny:latest"))
    with maintenance.exclusive(r, "pins") as mine:
        assert mine
        assert reconcile(r, Recorder()) == []
    assert len(reconcile(r, Recorder())) == 1
    assert not r.exists(keys.maintenance_lock("pins"))


def test_reconcile_marks_workers_it_could_not_enqueue_for_as_failed(r):
    add_worker(r, "up")
    add_worker(r, "down")
    pins.save_pin(r, pins.Pin(model="tiny:latest"))
    [job] = reconcile(r, Recorder(down={"worker.down"}))
    assert job_record(r, job["job_id"], "down")["state"] == "failed"
    assert "broker" in job_record(r, job["job_id"], "down")["error"]
    assert job_record(r, job["job_id"], "up")["state"] == "pending"


# --- pins: upstream updates -------------------------------------------------------------------

def check(r, send, source):
    return maintenance.check_pin_updates(r, send, lambda name: upstream_digest(source, name), deadline_seconds=600, retry_after=60)


def test_update_check_repulls_where_the_tag_moved_and_leaves_current_workers_alone(r):
    new = b'{"v": 2}'
    add_worker(r, "old", models={"tiny:latest": digest_of(b'{"v": 1}')})
    add_worker(r, "current", models={"tiny:latest": digest_of(new)})
    pins.save_pin(r, pins.Pin(model="tiny:latest", auto_update=True))
    pins.save_pin(r, pins.Pin(model="fixed:latest"))  # no auto-update: never asked about
    send, source = Recorder(), FakeSource(new)
    result = check(r, send, source)
    assert source.asked == ["tiny:latest"]
    assert result["checked"] == {"tiny:latest": digest_of(new)}
    [job] = result["jobs"]
    assert job["workers"] == ["old"] and job["reason"] == "update"
    pin = pins.get_pin(r, "tiny:latest")
    assert pin.upstream_digest == digest_of(new) and pin.checked_at and pin.check_error is None


def test_update_check_failure_is_recorded_and_pulls_nothing(r):
    add_worker(r, "w", models={"tiny:latest": "sha256:old"})
    pins.save_pin(r, pins.Pin(model="tiny:latest", auto_update=True, upstream_digest="sha256:old"))
    result = check(r, Recorder(), FakeSource(fail=True))
    assert result["jobs"] == []
    pin = pins.get_pin(r, "tiny:latest")
    assert "unreachable" in pin.check_error and pin.upstream_digest == "sha256:old"


def test_upstream_digest_is_the_sha256_of_the_manifest_bytes_as_the_inventory_records_it():
    raw = b'{"schemaVersion": 2}'
    assert upstream_digest(FakeSource(raw), ModelName.parse("tiny")) == digest_of(raw)

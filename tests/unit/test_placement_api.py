"""POST /api/v1/models/pull and /distribute with replicas, selector and spread, through Flask's test client over
fakeredis and a recording producer: the chosen workers get the task with their placement_reason, the refused ones
are skipped parts when fewer than asked for fit, none fitting is a 409 naming each reason, bad values 422."""

from __future__ import annotations

import json

import fakeredis
import pytest

from controller import create_app, distribute, pull_jobs
from controller.config import from_env
from eldric.cluster import workers as cluster_workers
from eldric.cluster.capacity import Gpu, record_fields
from eldric.cluster.queues import TASK_DISTRIBUTE, TASK_PULL
from eldric.transfer.registry_upstream import manifest_size
from tests.support.fake_celery import FakeCelery

GIB = 1 << 30
AUTH = {"Authorization": "Bearer tok"}
MODEL = "tiny:latest"


@pytest.fixture(scope="module")
def app():
    return create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "tok", "CHECK_UPSTREAM": False,
                       "PLACEMENT_RESERVE_BYTES": GIB})


@pytest.fixture
def store(app):
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.celery"] = FakeCelery()
    return app.extensions["eldric.redis"]


@pytest.fixture
def client(app, store):
    return app.test_client()


def worker(store, wid: str, *, free: int, zone: str | None = None, holds: bool = False, online: bool = True,
           wtype: str = "inference") -> None:
    cluster_workers.register(store, {"id": wid, "type": wtype, "address": f"http://{wid}:1"}, ttl=30)
    store.hset(f"eldric:worker:{wid}", mapping=record_fields({"zone": zone} if zone else {}, free, 100 * GIB, []))
    inventory = [{"name": MODEL, "digest": "sha256:" + "b" * 64, "size": 10, "backends": ["ollama"]}] if holds else []
    cluster_workers.publish_inventory(store, wid, inventory)
    if not online:
        cluster_workers.go_offline(store, wid)


def parts(job: dict) -> dict[str, dict]:
    return {w["worker"]: w for w in job["workers"]}


def pull(client, **body):
    return client.post("/api/v1/models/pull", json={"model": "tiny", **body}, headers=AUTH)


@pytest.fixture
def sized(monkeypatch):
    """The manifest's size, as check_upstream returns it from its one GET."""
    def set_size(size):
        monkeypatch.setattr(pull_jobs, "check_upstream", lambda name, registry: size)
    return set_size


def test_replicas_pick_the_holder_then_the_most_room(client, store, sized):
    sized(2 * GIB)
    for wid, free in (("w1", 50), ("w2", 80), ("w3", 20), ("w4", 60)):
        worker(store, wid, free=free * GIB, holds=wid == "w3")
    resp = pull(client, replicas=2)
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert sorted(job["targets"]) == ["w2", "w3"]
    got = parts(job)
    assert got["w3"]["placement_reason"] == "holds it"
    assert got["w2"]["placement_reason"].startswith("room: 79.0 GiB free")
    assert job["options"]["placement"]["replicas"] == 2 and job["options"]["placement"]["size"] == 2 * GIB
    assert len(store.hgetall(f"eldric:job:{job['id']}:workers")) == 2  # w1 and w4: not needed, not in the job
    assert len([m for m in client.application.extensions["eldric.celery"].sent if m["name"] == TASK_PULL]) == 2


def test_fewer_fit_than_asked_skipped_parts_say_why(client, store, sized):
    sized(30 * GIB)
    worker(store, "big", free=80 * GIB)
    worker(store, "small", free=int(4.1 * GIB))
    worker(store, "away", free=80 * GIB, online=False)
    job = pull(client, replicas=3).get_json()
    got = parts(job)
    assert got["big"]["state"] == "pending"
    assert got["small"]["state"] == "skipped"
    assert got["small"]["placement_reason"] == "no room: needs 30.0 GiB, has 3.1 GiB"
    assert "no room" in got["small"]["status"]
    assert got["away"]["state"] == "skipped" and got["away"]["placement_reason"] == "offline"
    sent = [m for m in client.application.extensions["eldric.celery"].sent if m["name"] == TASK_PULL]
    assert len(sent) == 1  # only the placed worker gets the task


def test_a_placed_job_ends_completed_with_skipped(client, store, sized):
    from eldric.cluster.jobs import state as jobstate
    from eldric.cluster.jobs.store import write_record
    sized(30 * GIB)
    worker(store, "big", free=80 * GIB)
    worker(store, "small", free=GIB)
    job = pull(client, replicas=2).get_json()
    write_record(store, job["id"], "big", dict(jobstate.new_record(1.0), state=jobstate.COMPLETED, started_at=1.0,
                                               finished_at=2.0))
    view = client.get(f"/api/v1/models/pull-jobs/{job['id']}", headers=AUTH).get_json()
    assert view["state"] == "completed_with_skipped"


def test_nothing_fits_is_409_naming_each_worker(client, store, sized):
    sized(30 * GIB)
    worker(store, "w1", free=2 * GIB, zone="a")
    worker(store, "w2", free=90 * GIB, zone="b")
    worker(store, "w3", free=90 * GIB, zone="a", online=False)
    resp = pull(client, replicas=1, selector={"zone": "a"})
    assert resp.status_code == 409
    text = json.dumps(resp.get_json())
    assert "w1: no room: needs 30.0 GiB, has 1.0 GiB" in text and "w2: label zone=b" in text and "w3: offline" in text
    assert store.zcard("eldric:jobs") == 0 and client.application.extensions["eldric.celery"].sent == []


def test_selector_type_and_labels(client, store, sized):
    sized(GIB)
    worker(store, "a1", free=10 * GIB, zone="a")
    worker(store, "a2", free=20 * GIB, zone="a", wtype="cloud")
    worker(store, "b1", free=30 * GIB, zone="b")
    job = pull(client, replicas=5, selector={"zone": "a", "type": "inference"}).get_json()
    assert job["targets"] == ["a1"]  # short, but the others were not asked for: no skipped parts for them
    assert job["options"]["placement"]["not_selected"] == 2


def test_spread_over_zones(client, store, sized):
    sized(GIB)
    for wid, free, zone in (("a1", 90, "a"), ("a2", 80, "a"), ("b1", 10, "b"), ("b2", 5, "b")):
        worker(store, wid, free=free * GIB, zone=zone)
    job = pull(client, replicas=2, spread="zone").get_json()
    assert sorted(job["targets"]) == ["a1", "b1"]
    job = pull(client, replicas=2, spread="rack").get_json()  # nobody has it: fine, and said
    assert sorted(job["targets"]) == ["a1", "a2"] and "rack" in job["options"]["placement"]["notes"][0]


def test_selector_alone_keeps_offline_matching_workers_pending(client, store, sized):
    sized(GIB)
    worker(store, "a1", free=10 * GIB, zone="a")
    worker(store, "a2", free=10 * GIB, zone="a", online=False)
    worker(store, "a3", free=0, zone="a")
    worker(store, "b1", free=10 * GIB, zone="b")
    got = parts(pull(client, selector={"zone": "a"}).get_json())
    assert sorted(got) == ["a1", "a2", "a3"]
    assert got["a2"]["state"] == "offline"  # not skipped: it gets the task when it returns, as in every "all" pull
    assert got["a3"]["state"] == "skipped" and got["a3"]["placement_reason"].startswith("no room")


def test_without_placement_keys_every_worker_as_before(client, store, sized):
    sized(900 * GIB)  # no room anywhere: not checked without replicas/selector/spread
    worker(store, "w1", free=GIB)
    worker(store, "w2", free=GIB, online=False)
    job = pull(client).get_json()
    assert sorted(job["targets"]) == ["w1", "w2"] and "placement" not in job["options"]
    assert all("placement_reason" not in w or w["placement_reason"] is None for w in job["workers"])


def test_ollama_pull_keeps_every_worker(client, store, sized):
    sized(900 * GIB)
    worker(store, "w1", free=GIB)
    worker(store, "w2", free=GIB)
    resp = client.post("/api/pull", json={"model": "tiny", "stream": True, "replicas": 1}, headers=AUTH)
    assert resp.status_code == 200
    pulls = [m for m in client.application.extensions["eldric.celery"].sent if m["name"] == TASK_PULL]
    assert len(pulls) == 2


@pytest.mark.parametrize("body, field", [({"replicas": 0}, "replicas"), ({"replicas": "2"}, "replicas"),
                                         ({"replicas": 1.5}, "replicas"), ({"selector": ["zone"]}, "selector"),
                                         ({"selector": {"zone": 1}}, "selector"), ({"selector": "zone=a"}, "selector"),
                                         ({"spread": ""}, "spread"), ({"spread": 3}, "spread")])
def test_bad_values_name_the_field(client, store, body, field):
    worker(store, "w1", free=2 * GIB, zone="a")
    good = {"replicas": 1, "selector": {"zone": "a"}, "spread": "zone"}
    assert pull(client, **{**good, field: good[field]}).status_code == 202  # the field is known; its value is checked
    resp = pull(client, **body)
    assert resp.status_code == 422, resp.get_json()
    errors = json.dumps(resp.get_json()["errors"])
    assert field in errors and "Unknown field" not in errors
    resp = client.post("/api/v1/models/distribute", json={"model": "m:v1", "source": {"type": "registry"}, **body},
                       headers=AUTH)
    assert resp.status_code == 422 and field in json.dumps(resp.get_json()["errors"])


def test_distribute_a_registry_model_sized_by_its_catalog(client, store, monkeypatch):
    monkeypatch.setattr(distribute, "find_registry_model", lambda registry, model: {
        "id": "0" * 32, "name": "team/m", "version": "v1", "format": "gguf", "size": 20 * GIB})
    worker(store, "w1", free=40 * GIB)
    worker(store, "w2", free=10 * GIB)
    worker(store, "w3", free=30 * GIB)
    resp = client.post("/api/v1/models/distribute", json={"model": "team/m:v1", "source": {"type": "registry"},
                                                         "replicas": 3}, headers=AUTH)
    assert resp.status_code == 202, resp.get_json()
    got = parts(resp.get_json())
    assert got["w2"]["state"] == "skipped" and got["w2"]["placement_reason"] == "no room: needs 20.0 GiB, has 9.0 GiB"
    assert {w for w, p in got.items() if p["state"] == "pending"} == {"w1", "w3"}
    assert len([m for m in client.application.extensions["eldric.celery"].sent if m["name"] == TASK_DISTRIBUTE]) == 2


def test_distribute_from_a_worker_never_places_on_the_source(client, store):
    worker(store, "src", free=90 * GIB, holds=True)
    worker(store, "w1", free=10 * GIB)
    worker(store, "w2", free=20 * GIB)
    resp = client.post("/api/v1/models/distribute", json={"model": MODEL, "source": {"type": "worker", "worker": "src"},
                                                         "replicas": 1}, headers=AUTH)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["targets"] == ["w2"]


def test_manifest_size_sums_config_and_layers():
    body = json.dumps({"schemaVersion": 2, "config": {"size": 10}, "layers": [{"size": 100}, {"size": 1000}]})
    assert manifest_size(body.encode()) == 1110
    assert manifest_size(b'{"manifests": []}') is None and manifest_size(b"not json") is None


@pytest.mark.parametrize("raw, want", [("512M", 512 << 20), ("2G", 2 << 30), ("1048576", 1 << 20)])
def test_reserve_setting(raw, want):
    assert from_env({"ELDRIC_PLACEMENT_RESERVE_BYTES": raw})["PLACEMENT_RESERVE_BYTES"] == want
    assert from_env({})["PLACEMENT_RESERVE_BYTES"] == 1 << 30


def test_copies_on_their_way_count_against_room_and_model_count(client, store, sized):
    """Pulls sent before any byte lands do not all pick the same roomiest worker."""
    sized(10 * GIB)
    worker(store, "w1", free=50 * GIB)
    worker(store, "w2", free=45 * GIB)
    first = pull(client, replicas=1).get_json()
    second = client.post("/api/v1/models/pull", json={"model": "other", "replicas": 1}, headers=AUTH).get_json()
    assert first["targets"] == ["w1"]
    assert second["targets"] == ["w2"]  # w1 has 40 GiB left once the first copy lands
    assert "44.0 GiB free" in parts(second)["w2"]["placement_reason"]
    worker(store, "w3", free=40 * GIB)
    sized(None)  # size unknown: w1 and w3 then have equal room, but w1 has a copy coming (one model more)
    third = client.post("/api/v1/models/pull", json={"model": "third", "replicas": 1}, headers=AUTH).get_json()
    assert third["targets"] == ["w3"]


def test_gpu_places_only_where_one_gpu_holds_the_model(client, store, sized):
    sized(10 * GIB)
    for wid, free_vram in (("h100", 70 * GIB), ("t4", 8 * GIB), ("cpu", None)):
        worker(store, wid, free=80 * GIB)
        gpus = [Gpu(0, wid, 80 * GIB, free_vram)] if free_vram is not None else []
        store.hset(f"eldric:worker:{wid}", mapping=record_fields({}, 80 * GIB, 100 * GIB, gpus))
    job = pull(client, replicas=2, gpu=True).get_json()
    got = parts(job)
    assert got["h100"]["state"] == "pending" and job["options"]["placement"]["gpu"] is True
    assert got["t4"]["state"] == "skipped" and "GPU" in got["t4"]["placement_reason"]
    assert got["cpu"]["state"] == "skipped"
    assert pull(client, gpu="yes").status_code == 422

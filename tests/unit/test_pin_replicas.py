"""Pins with replicas (issue 25): N serving copies kept by reconciliation, placed by eldric.cluster.placement,
and `needed_replicas` for eviction. Redis is fakeredis; jobs are started through a recording sender."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from eldric.cluster import capacity, keys, maintenance, pins
from eldric.cluster import workers as cluster_workers
from eldric.cluster.pins import Pin
from eldric.cluster.queues import worker_queue

GIB = 1 << 30
MODEL = "tiny:latest"
SERVED = {"digest": "sha256:a", "backends": ["ollama"], "size": GIB}


class Recorder:
    """Stands in for the Celery sender: records (task, args, queue)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list, str]] = []

    def __call__(self, name: str, args: list, worker_ids: list[str]) -> dict[str, str]:
        self.sent.extend((name, args, worker_queue(wid)) for wid in worker_ids)
        return {}

    def queues(self) -> list[str]:
        return sorted(q.removeprefix("worker.") for _, _, q in self.sent)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def add_worker(r, wid: str, *, free_gib: float = 50, labels: dict | None = None, models: dict | None = None,
               online: bool = True, wtype: str = "inference") -> None:
    cluster_workers.register(r, {"id": wid, "type": wtype, "address": f"http://{wid}", "backends": ["ollama"],
                                 **capacity.record_fields(labels or {}, int(free_gib * GIB), 100 * GIB, [])}, ttl=15)
    cluster_workers.publish_inventory(r, wid, [{"name": n, **rec} for n, rec in (models or {}).items()])
    if not online:
        cluster_workers.go_offline(r, wid)


def reconcile(r, send, **kw) -> list[dict]:
    return maintenance.reconcile_pins(r, send, deadline_seconds=600, retry_after=60, offline_grace=300, **kw)


def parts(r, job_id: str) -> dict[str, dict]:
    return {wid: json.loads(raw) for wid, raw in r.hgetall(keys.job_workers(job_id)).items()}


def test_fewer_than_n_pulls_to_the_holder_first_then_the_most_free_disk(r):
    add_worker(r, "a", free_gib=5, models={MODEL: SERVED})  # serving: counts as one
    add_worker(r, "b", free_gib=10)
    add_worker(r, "c", free_gib=60)
    add_worker(r, "d", free_gib=40)
    add_worker(r, "e", free_gib=1, models={MODEL: {**SERVED, "backends": []}})  # stored, not served: a holder
    add_worker(r, "data", wtype="data", free_gib=900)
    pins.save_pin(r, Pin(MODEL, replicas=3))
    send = Recorder()
    [job] = reconcile(r, send)
    assert job["workers"] == ["e", "c"] and send.queues() == ["c", "e"]
    placed = parts(r, job["job_id"])
    assert placed["e"]["placement_reason"] == "holds it"
    assert placed["c"]["placement_reason"].startswith("room: 60.0 GiB free after the reserve")
    assert r.hget(keys.job(job["job_id"]), "kind") == "pull"
    # the pulls in flight count: the next reconcile places nothing more
    assert reconcile(r, send) == [] and len(send.sent) == 2


def test_n_serving_copies_start_nothing_and_an_extra_copy_is_left_alone(r):
    for wid in "abc":
        add_worker(r, wid, models={MODEL: SERVED})
    add_worker(r, "d")
    pins.save_pin(r, Pin(MODEL, replicas=2))
    send = Recorder()
    assert reconcile(r, send) == [] and send.sent == []
    assert sorted(cluster_workers.holders(r, MODEL)) == ["a", "b", "c"]  # nothing deleted


@pytest.mark.parametrize("gone", ["removed", "offline past the grace"])
def test_a_lost_copy_is_replaced_on_another_worker(r, gone):
    add_worker(r, "a", models={MODEL: SERVED})
    add_worker(r, "b", models={MODEL: SERVED})
    add_worker(r, "c", free_gib=20)
    add_worker(r, "d", free_gib=30)
    pins.save_pin(r, Pin(MODEL, replicas=2))
    send = Recorder()
    assert reconcile(r, send) == []
    if gone == "removed":
        cluster_workers.forget(r, "b")
    else:
        cluster_workers.go_offline(r, "b")
        r.hset(keys.worker("b"), "last_seen", time.time() - 301)
    [job] = reconcile(r, send)
    assert job["workers"] == ["d"]


def test_a_copy_offline_within_the_grace_still_counts(r):
    add_worker(r, "a", models={MODEL: SERVED})
    add_worker(r, "b", models={MODEL: SERVED}, online=False)  # last_seen: just now
    add_worker(r, "c")
    pins.save_pin(r, Pin(MODEL, replicas=2))
    assert reconcile(r, Recorder()) == []


def test_selector_and_spread_choose_where_copies_go(r):
    add_worker(r, "a1", free_gib=90, labels={"zone": "a", "gpu": "h100"})
    add_worker(r, "a2", free_gib=80, labels={"zone": "a", "gpu": "h100"})
    add_worker(r, "b1", free_gib=10, labels={"zone": "b", "gpu": "h100"})
    add_worker(r, "b2", free_gib=70, labels={"zone": "b"})
    pins.save_pin(r, Pin(MODEL, replicas=2, selector={"gpu": "h100"}, spread="zone"))
    [job] = reconcile(r, Recorder())
    assert job["workers"] == ["a1", "b1"]  # not a2 (zone a has its 1), not b2 (no gpu label)


def test_fewer_fit_than_wanted_places_what_fits_and_skips_the_rest_with_the_reason(r):
    add_worker(r, "big", free_gib=50)
    add_worker(r, "small", free_gib=1.5)
    add_worker(r, "holder", models={MODEL: {**SERVED, "size": 2 * GIB}}, free_gib=0.1)
    pins.save_pin(r, Pin(MODEL, replicas=3))
    [job] = maintenance.reconcile_pins(r, Recorder(), deadline_seconds=600, retry_after=60, reserve=GIB)
    assert job["workers"] == ["big"]
    small = parts(r, job["job_id"])["small"]
    assert small["state"] == "skipped" and "no room: needs 2.0 GiB, has 512.0 MiB" in small["status"]


def test_a_failed_pull_is_placed_elsewhere_until_the_retry_wait_is_over(r):
    add_worker(r, "a", free_gib=90)
    add_worker(r, "b", free_gib=10)
    pins.save_pin(r, Pin(MODEL, replicas=1))
    send = Recorder()
    [job] = reconcile(r, send)
    assert job["workers"] == ["a"]
    r.hset(keys.job_workers(job["job_id"]), "a", json.dumps({"state": "failed", "finished_at": time.time()}))
    r.srem(keys.worker_jobs("a"), job["job_id"])
    [again] = reconcile(r, send)
    assert again["workers"] == ["b"]


def test_the_pins_of_one_reconcile_share_the_room(r):
    sized = {"digest": "sha256:a", "backends": ["ollama"], "size": 4 * GIB}
    add_worker(r, "data", wtype="data", models={"m1:latest": sized, "m2:latest": sized})  # only tells the size
    add_worker(r, "a", free_gib=10)
    add_worker(r, "b", free_gib=9)
    pins.save_pin(r, Pin("m1:latest", replicas=1))
    pins.save_pin(r, Pin("m2:latest", replicas=1))
    jobs = reconcile(r, Recorder())
    assert {j["model"]: j["workers"] for j in jobs} == {"m1:latest": ["a"], "m2:latest": ["b"]}  # a has 6 GiB left


def test_a_pull_still_on_its_way_counts_as_a_model_of_its_worker(r):
    add_worker(r, "a")
    add_worker(r, "b")
    pins.save_pin(r, Pin("m1:latest", replicas=1))
    [first] = reconcile(r, Recorder())
    assert first["workers"] == ["a"]  # equal room, equal models: the id decides
    pins.save_pin(r, Pin("m2:latest", replicas=1))
    [second] = reconcile(r, Recorder())
    assert second["workers"] == ["b"]  # a has m1 on its way


def test_pins_without_replicas_still_pull_to_every_eligible_worker(r):
    for wid in "abc":
        add_worker(r, wid, labels={"zone": "a" if wid != "c" else "b"})
    pins.save_pin(r, Pin(MODEL, selector={"zone": "a"}))
    [job] = reconcile(r, Recorder())
    assert job["workers"] == ["a", "b"]


def test_needed_replicas_names_pinned_models_and_the_first_n_copies(r):
    add_worker(r, "roomy", free_gib=90, models={MODEL: SERVED, "all:1": SERVED, "mine:1": SERVED})
    add_worker(r, "mid", free_gib=50, models={MODEL: SERVED, "all:1": SERVED})
    add_worker(r, "full", free_gib=1, models={MODEL: SERVED, "all:1": SERVED, "mine:1": SERVED, "zoned:1": SERVED})
    pins.save_pin(r, Pin(MODEL, replicas=2))
    pins.save_pin(r, Pin("all:1"))
    pins.save_pin(r, Pin("mine:1", workers=("roomy",)))
    pins.save_pin(r, Pin("zoned:1", selector={"zone": "x"}))
    assert pins.needed_replicas(r, "roomy") == {MODEL, "all:1", "mine:1"}
    assert pins.needed_replicas(r, "mid") == {MODEL, "all:1"}
    # the copy beyond N is the one on the fullest disk: eviction may take it, and the other pins' it may not
    assert pins.needed_replicas(r, "full") == {"all:1"}
    assert pins.needed_replicas(r, "nobody") == set()
    cluster_workers.go_offline(r, "mid")  # an absent worker's copy is not leaned on
    assert MODEL in pins.needed_replicas(r, "full")


def test_a_gpu_pin_is_placed_only_where_one_gpu_holds_the_model(r):
    add_worker(r, "data", wtype="data", models={MODEL: {**SERVED, "size": 4 * GIB}})  # only tells the size
    for wid, free_vram in (("h100", 70 * GIB), ("t4", 2 * GIB), ("cpu", None)):
        add_worker(r, wid, free_gib=80)
        gpus = [capacity.Gpu(0, wid, 80 * GIB, free_vram)] if free_vram is not None else []
        r.hset(keys.worker(wid), mapping=capacity.record_fields({}, 80 * GIB, 100 * GIB, gpus))
    pins.save_pin(r, Pin(MODEL, replicas=2, gpu=True))
    [job] = reconcile(r, Recorder())
    placed = parts(r, job["job_id"])
    assert placed["h100"]["placement_reason"].startswith("room") and "GPU" in placed["t4"]["placement_reason"]
    assert placed["t4"]["state"] == placed["cpu"]["state"] == "skipped"


def test_a_replica_pin_round_trips_through_json():
    pin = Pin(MODEL, replicas=2, selector={"zone": "a", "type": "inference"}, spread="zone", gpu=True)
    assert Pin.from_json(pin.to_json()) == pin
    old = Pin.from_json(json.dumps({"model": MODEL}))  # a record written before issue 25
    assert (old.replicas, old.selector, old.spread) == (None, {}, None)


# --- the API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app():
    from controller import create_app
    return create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})


@pytest.fixture
def api(app, r):
    app.extensions["eldric.redis"] = r
    add_worker(r, "a", models={MODEL: SERVED}, labels={"zone": "a"})
    add_worker(r, "b", models={MODEL: SERVED}, labels={"zone": "b"}, online=False)
    add_worker(r, "c", labels={"zone": "b"})
    return app.test_client()


def test_a_replica_pin_is_stored_and_listed_with_wanted_and_serving(api, r):
    resp = api.post("/api/v1/pins", json={"model": "tiny", "replicas": 2, "selector": {"zone": "b"}, "spread": "zone"})
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert (body["replicas"], body["selector"], body["spread"]) == (2, {"zone": "b"}, "zone")
    assert (body["replicas_wanted"], body["replicas_serving"], body["serving"]) == (2, 0, [])  # b is offline
    stored = json.loads(r.hget(keys.PINS, MODEL))
    assert (stored["replicas"], stored["selector"], stored["spread"]) == (2, {"zone": "b"}, "zone")
    api.post("/api/v1/pins", json={"model": "tiny"})  # replaced: every eligible worker, as before
    [listed] = api.get("/api/v1/pins").json["pins"]
    assert (listed["replicas"], listed["selector"], listed["spread"]) == (None, {}, None)
    assert (listed["replicas_wanted"], listed["replicas_serving"], listed["serving"]) == (3, 1, ["a"])


@pytest.mark.parametrize("extra, status, field", [
    ({"replicas": 0}, 422, "replicas"),
    ({"replicas": "two"}, 422, "replicas"),
    ({"replicas": 1.5}, 422, "replicas"),
    ({"selector": "zone=a"}, 422, "selector"),
    ({"selector": {"zone": 5}}, 422, "selector"),
    ({"selector": {"bad key!": "a"}}, 400, "selector"),
    ({"selector": {"type": "data"}}, 400, "selector"),
    ({"spread": "zone"}, 400, "spread"),  # without replicas
    ({"replicas": 2, "spread": "no such=label"}, 400, "spread"),
])
def test_bad_placement_values_are_refused_naming_the_field(api, r, extra, status, field):
    resp = api.post("/api/v1/pins", json={"model": "tiny", **extra})
    assert resp.status_code == status, resp.json
    assert field in json.dumps(resp.json) and "Unknown field" not in json.dumps(resp.json)  # refused for its value
    assert r.hlen(keys.PINS) == 0

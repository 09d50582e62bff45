"""Pins: the pure selection rules, their Redis records, and /api/v1/pins through Flask's test client."""

from __future__ import annotations

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from controller import create_app
from eldric.cluster import pins
from eldric.cluster.pins import Pin, WorkerFacts

NOW = 1_000_000.0


def facts(wid: str, wtype: str = "inference", online: bool = True, **kw) -> WorkerFacts:
    return WorkerFacts(id=wid, type=wtype, online=online, **kw)


@pytest.mark.parametrize("pin, worker, status", [
    (Pin("m:1"), facts("w"), pins.MISSING),
    (Pin("m:1"), facts("w", models={"m:1": {"digest": "sha256:a"}}), pins.PRESENT),
    (Pin("m:1", upstream_digest="sha256:b"), facts("w", models={"m:1": {"digest": "sha256:a"}}), pins.PRESENT),
    (Pin("m:1", auto_update=True, upstream_digest="sha256:b"), facts("w", models={"m:1": {"digest": "sha256:a"}}),
     pins.OUTDATED),
    (Pin("m:1", auto_update=True), facts("w", models={"m:1": {"digest": "sha256:a"}}), pins.PRESENT),
    (Pin("m:1"), facts("w", busy_models=frozenset({"m:1"})), pins.PULLING),
    # present means served: stored with no backend serving it is missing (the pin's pull installs it)
    (Pin("m:1"), facts("w", models={"m:1": {"digest": "sha256:a", "backends": []}}), pins.MISSING),
    (Pin("m:1"), facts("w", models={"m:1": {"digest": "sha256:a", "backends": ["llamacpp"]}}), pins.PRESENT),
])
def test_model_status(pin, worker, status):
    assert pins.model_status(pin, worker) == status


def test_workers_to_pull_takes_only_online_eligible_workers_lacking_the_model():
    workers = [facts("inf"), facts("cloud", "cloud"), facts("data", "data"), facts("off", online=False),
               facts("has", models={"m:1": {"digest": "x"}}), facts("busy", busy_models=frozenset({"m:1"})),
               facts("failed-recently", failed_at={"m:1": NOW - 10}),
               facts("failed-long-ago", failed_at={"m:1": NOW - 999})]
    assert pins.workers_to_pull(Pin("m:1"), workers, now=NOW, retry_after=60) == ["inf", "cloud", "failed-long-ago"]
    assert pins.workers_to_pull(Pin("m:1", workers=("cloud", "data")), workers, now=NOW, retry_after=60) == ["cloud"]


def test_coverage_groups_eligible_workers_only():
    workers = [facts("a", models={"m:1": {}}), facts("b"), facts("d", "data")]
    assert pins.coverage(Pin("m:1"), workers) == {"present": ["a"], "missing": ["b"], "outdated": [], "pulling": []}


def test_pin_round_trips_through_json():
    pin = Pin("m:1", workers=("a", "b"), auto_update=True, created_at=5.0, upstream_digest="sha256:x",
              checked_at=6.0, check_error="nope")
    assert Pin.from_json(pin.to_json()) == pin
    assert Pin.from_json(Pin("m:1").to_json()).workers is None


def test_record_check_keeps_the_last_digest_on_failure_and_ignores_removed_pins():
    r = fakeredis.FakeRedis(decode_responses=True)
    pins.save_pin(r, Pin("m:1", auto_update=True))
    assert pins.record_check(r, "m:1", digest="sha256:a", error=None, now=1.0).upstream_digest == "sha256:a"
    failed = pins.record_check(r, "m:1", digest=None, error="down", now=2.0)
    assert (failed.upstream_digest, failed.check_error, failed.checked_at) == ("sha256:a", "down", 2.0)
    pins.delete_pin(r, "m:1")
    assert pins.record_check(r, "m:1", digest="sha256:b", error=None) is None
    assert pins.list_pins(r) == []


# --- the API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_app():
    return create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})


@pytest.fixture
def store(shared_app) -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    shared_app.extensions["eldric.redis"] = r
    for wid, wtype in (("inf-a", "inference"), ("inf-b", "inference"), ("data-a", "data")):
        cluster_workers.register(r, {"id": wid, "type": wtype, "address": "http://x", "backends": ["ollama"]}, ttl=15)
    cluster_workers.publish_inventory(r, "inf-a", [{"name": "tiny:latest", "digest": "sha256:a"}])
    return r


@pytest.fixture
def client(shared_app, store):
    return shared_app.test_client()


def test_pin_list_get_and_remove(client):
    resp = client.post("/api/v1/pins", json={"model": "tiny"})
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["model"] == "tiny:latest" and body["workers"] is None and body["auto_update"] is False
    assert body["coverage"] == {"present": ["inf-a"], "missing": ["inf-b"], "outdated": [], "pulling": []}
    again = client.post("/api/v1/pins", json={"model": "tiny:latest", "workers": ["inf-b"], "auto_update": True})
    assert again.status_code == 200 and again.json["workers"] == ["inf-b"] and again.json["auto_update"]
    assert again.json["created_at"] == body["created_at"]
    listing = client.get("/api/v1/pins").json
    assert listing["total"] == 1 and listing["pins"][0]["model"] == "tiny:latest"
    assert client.get("/api/v1/pins/tiny").json["coverage"]["missing"] == ["inf-b"]
    assert client.delete("/api/v1/pins/tiny:latest").status_code == 204
    assert client.get("/api/v1/pins/tiny").status_code == 404
    assert client.delete("/api/v1/pins/tiny").status_code == 404


def test_pins_of_names_with_a_host_and_namespace_are_addressable_by_path(client):
    client.application.config["ALLOWED_REGISTRIES"] = ("reg.local:5000",)
    assert client.post("/api/v1/pins", json={"model": "reg.local:5000/team/m:v1"}).status_code == 201
    assert client.get("/api/v1/pins/reg.local:5000/team/m:v1").json["model"] == "reg.local:5000/team/m:v1"
    assert client.delete("/api/v1/pins/reg.local:5000/team/m:v1").status_code == 204


@pytest.mark.parametrize("body, status, field", [
    ({}, 422, "model"),
    ({"model": 5}, 422, "model"),
    ({"model": "tiny", "auto_update": "sometimes"}, 422, "auto_update"),
    ({"model": "tiny", "color": "red"}, 422, "color"),
    ({"model": "../../etc/passwd"}, 400, "model"),
    ({"model": "169.254.169.254/library/x"}, 400, "model"),  # a registry outside the allow-list
    ({"model": "tiny", "workers": ["data-a"]}, 400, "workers"),
    ({"model": "tiny", "workers": []}, 422, "workers"),
])
def test_bad_pins_are_refused_naming_the_field(client, body, status, field):
    resp = client.post("/api/v1/pins", json=body)
    assert resp.status_code == status, resp.json
    assert field in str(resp.json["errors"])


def test_pinning_to_an_unknown_worker_is_404(client):
    resp = client.post("/api/v1/pins", json={"model": "tiny", "workers": ["nope"]})
    assert resp.status_code == 404 and "nope" in resp.json["message"]


def test_bad_name_in_the_path_is_400(client):
    assert client.get("/api/v1/pins/a\\b").status_code == 400

"""The controller's pull API through Flask's test client, over fakeredis and a recording producer."""

from __future__ import annotations


import fakeredis
import pytest
import redis

from eldric.cluster import workers as cluster_workers
from controller import create_app
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from tests.support.fake_celery import FakeCelery

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


def make_app(**config):
    """create_app as a deployment calls it, then fakeredis and a FakeCelery in place of the real handles."""
    app = create_app({"REDIS_URL": CLOSED_PORT_URL, "API_TOKEN": "", "CHECK_UPSTREAM": False, **config})
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.celery"] = FakeCelery()
    return app


@pytest.fixture(scope="module")
def shared_app():
    return create_app({"REDIS_URL": CLOSED_PORT_URL, "API_TOKEN": "", "CHECK_UPSTREAM": False})


@pytest.fixture
def app(shared_app):
    """One app per module (building it is the slow part); fresh Redis and producer per test."""
    shared_app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(),
                                                                decode_responses=True)
    shared_app.extensions["eldric.celery"] = FakeCelery()
    return shared_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app) -> fakeredis.FakeRedis:
    return app.extensions["eldric.redis"]


@pytest.fixture
def producer(app) -> FakeCelery:
    return app.extensions["eldric.celery"]


def register(store, worker_id: str, worker_type: str) -> None:
    cluster_workers.register(store, {"id": worker_id, "type": worker_type, "address": f"http://{worker_id}:1"}, ttl=30)


@pytest.fixture
def cluster(store):
    """Two model-serving workers (one offline) and a data worker."""
    register(store, "gpu1", "inference")
    register(store, "cloud1", "cloud")
    register(store, "dn1", "data")
    cluster_workers.go_offline(store, "cloud1")


def pull(client, body, **kw):
    return client.post("/api/v1/models/pull", json=body, **kw)


def assert_error(resp, status: int) -> dict:
    assert resp.status_code == status
    assert resp.is_json
    body = resp.get_json()
    assert body["code"] == status
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def nothing_happened(store, producer) -> bool:
    return producer.sent == [] and store.zcard(keys.JOBS) == 0


# POST /api/v1/models/pull: validation -------------------------------------------------------------

@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": 5}, "model"),
        ({"model": None}, "model"),
        ({"model": ["tiny"]}, "model"),
        ({}, "model"),
        ({"model": ""}, "model"),  # empty fails the schema, not the name check after it
        ({"workers": ["gpu1"]}, "model"),
        ({"model": "tiny", "surprise": 1}, "surprise"),
        ({"model": "tiny", "workers": "gpu1"}, "workers"),
        ({"model": "tiny", "workers": []}, "workers"),
        ({"model": "tiny", "workers": [""]}, "workers"),
        ({"model": "tiny", "workers": [7]}, "workers"),
        ({"model": "tiny", "deadline_seconds": "soon"}, "deadline_seconds"),
        ({"model": "tiny", "deadline_seconds": 1}, "deadline_seconds"),
        ({"model": "tiny", "max_upstream_rate": "fast"}, "max_upstream_rate"),
        ({"model": "tiny", "max_upstream_rate": 10}, "max_upstream_rate"),  # under 1K/s: surely a mistake
        ({"model": "tiny", "max_upstream_rate": True}, "max_upstream_rate"),
        ({"model": "tiny", "max_upstream_rate": 1.5}, "max_upstream_rate"),
        ({"model": "tiny", "max_upstream_workers": 0}, "max_upstream_workers"),
        ({"model": "tiny", "max_upstream_workers": "2"}, "max_upstream_workers"),
    ],
)
def test_malformed_request_is_422_naming_the_field(client, store, producer, cluster, body, field):
    err = assert_error(pull(client, body), 422)
    assert field in err["errors"]["json"]
    assert nothing_happened(store, producer)


def test_body_that_is_not_json_is_400(client, store, producer, cluster):
    resp = client.post("/api/v1/models/pull", data="{model", content_type="application/json")
    assert_error(resp, 400)
    assert nothing_happened(store, producer)


@pytest.mark.parametrize(
    "model",
    ["../x", "/etc/passwd", "a\\b", "tiny\x00", ".hidden", "ns/../../x", "a/b/c/d", "tiny@sha256:" + "a" * 64,
     "ns.with.dot/tiny", " ", "x" * 600],
)
def test_bad_model_name_is_400_naming_model(client, store, producer, cluster, model):
    err = assert_error(pull(client, {"model": model}), 400)
    assert list(err["errors"]["json"]) == ["model"]
    assert "invalid model name" in err["message"]
    assert nothing_happened(store, producer)


def test_model_name_with_a_newline_is_400(client, store, producer, cluster):
    assert_error(pull(client, {"model": "ns\n/tiny"}), 400)
    assert nothing_happened(store, producer)


@pytest.mark.parametrize("workers", [["dn1"], ["gpu1", "dn1"]])
def test_naming_a_non_serving_worker_is_400(client, store, producer, cluster, workers):
    err = assert_error(pull(client, {"model": "tiny", "workers": workers}), 400)
    assert list(err["errors"]["json"]) == ["workers"]
    assert "dn1" in err["message"]
    assert nothing_happened(store, producer)


@pytest.mark.parametrize("workers", [["ghost"], ["gpu1", "ghost"], ["gpu1", "dn1", "ghost"]])
def test_naming_an_unknown_worker_is_404(client, store, producer, cluster, workers):
    err = assert_error(pull(client, {"model": "tiny", "workers": workers}), 404)
    assert "ghost" in err["message"]
    assert nothing_happened(store, producer)


@pytest.mark.parametrize("types", [[], ["data"], ["data", "science", "media"]])
def test_no_model_serving_workers_is_409(client, store, producer, types):
    for i, worker_type in enumerate(types):
        register(store, f"node{i}", worker_type)
    err = assert_error(pull(client, {"model": "tiny"}), 409)
    assert "no inference or cloud workers" in err["message"]
    assert nothing_happened(store, producer)


# POST /api/v1/models/pull: success ---------------------------------------------------------------

def test_pull_fans_out_one_task_per_inference_and_cloud_worker(client, store, producer, cluster):
    resp = pull(client, {"model": "tiny"})

    assert resp.status_code == 202
    job = resp.get_json()
    assert job["model"] == "tiny:latest"
    assert job["state"] == jobstate.JOB_PENDING
    assert job["targets"] == ["cloud1", "gpu1"]
    assert {w["worker"]: w["state"] for w in job["workers"]} == {"cloud1": jobstate.OFFLINE,
                                                               "gpu1": jobstate.PENDING}
    sent = sorted(producer.sent, key=lambda s: s["queue"])
    assert [(s["name"], s["queue"], s["args"]) for s in sent] == [
        ("models.pull", "worker.cloud1", [job["id"], "tiny:latest"]),
        ("models.pull", "worker.gpu1", [job["id"], "tiny:latest"]),
    ]
    assert all("dn1" not in s["queue"] for s in producer.sent)
    assert len(producer.batches) == 1  # one pipeline for all of them
    assert store.smembers(keys.worker_jobs("gpu1")) == {job["id"]}
    assert store.smembers(keys.worker_jobs("dn1")) == set()


def test_pull_to_named_workers_only(client, store, producer, cluster):
    resp = pull(client, {"model": "qwen2.5:0.5b", "workers": ["gpu1", "gpu1"], "deadline_seconds": 60})
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["targets"] == ["gpu1"]
    assert job["deadline_at"] == pytest.approx(job["created_at"] + 60)
    assert [(s["queue"], s["args"]) for s in producer.sent] == [("worker.gpu1", [job["id"], "qwen2.5:0.5b"])]


def test_transfer_caps_are_kept_in_the_job_options(client, store, producer, cluster):
    resp = pull(client, {"model": "tiny", "workers": ["gpu1"], "max_upstream_rate": "20M", "max_upstream_workers": 2})
    assert resp.status_code == 202
    assert resp.get_json()["options"] == {"max_upstream_rate": 20 << 20, "max_upstream_workers": 2}
    resp = pull(client, {"model": "tiny", "workers": ["gpu1"], "max_upstream_rate": 5_000_000})
    assert resp.get_json()["options"] == {"max_upstream_rate": 5_000_000}


def test_full_name_is_sent_in_its_short_form(client, producer, cluster):
    pull(client, {"model": "registry.ollama.ai/library/tiny:latest", "workers": ["gpu1"]})
    assert [s["args"][1] for s in producer.sent] == ["tiny:latest"]


def test_worker_whose_queue_cannot_be_reached_is_failed_not_dropped(app, client, store, cluster):
    app.extensions["eldric.celery"] = producer = FakeCelery(unreachable={"worker.cloud1"})
    resp = pull(client, {"model": "tiny"})
    assert resp.status_code == 202
    job_id = resp.get_json()["id"]
    assert [s["queue"] for s in producer.sent] == ["worker.gpu1"]  # the failed batch is sent again one by one
    assert producer.sent[0]["retry"] is True
    states = {w["worker"]: w for w in client.get(f"/api/v1/models/pull-jobs/{job_id}").get_json()["workers"]}
    assert states["cloud1"]["state"] == jobstate.FAILED
    assert "could not enqueue" in states["cloud1"]["error"]
    assert states["gpu1"]["state"] == jobstate.PENDING


# GET /api/v1/models/pull-jobs ------------------------------------------------------------------

def test_jobs_are_listed_newest_first_and_readable_one_by_one(client, cluster):
    first = pull(client, {"model": "tiny"}).get_json()["id"]
    second = pull(client, {"model": "qwen2.5:0.5b"}).get_json()["id"]

    listing = client.get("/api/v1/models/pull-jobs")
    assert listing.status_code == 200
    body = listing.get_json()
    assert [j["id"] for j in body["jobs"]] == [second, first]
    assert (body["total"], body["limit"], body["offset"]) == (2, 50, 0)

    one = client.get(f"/api/v1/models/pull-jobs/{first}")
    assert one.status_code == 200
    assert one.get_json()["model"] == "tiny:latest"


def test_listing_pages_and_filters(client, cluster):
    ids = [pull(client, {"model": f"m{i}"}).get_json()["id"] for i in range(3)]
    body = client.get("/api/v1/models/pull-jobs?limit=1&offset=1").get_json()
    assert [j["id"] for j in body["jobs"]] == [ids[1]]
    assert client.get("/api/v1/models/pull-jobs?state=completed").get_json()["jobs"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1", "state=bogus"])
def test_bad_listing_query_is_422(client, query):
    assert_error(client.get(f"/api/v1/models/pull-jobs?{query}"), 422)


def test_unknown_job_is_404(client):
    err = assert_error(client.get("/api/v1/models/pull-jobs/does-not-exist"), 404)
    assert "does-not-exist" in err["message"]


# cross-cutting ------------------------------------------------------------------------------------

@pytest.fixture
def token_client():
    app = make_app(API_TOKEN="s3cret")
    register(app.extensions["eldric.redis"], "gpu1", "inference")
    return app.test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                                     {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer "}])
def test_api_token_is_required_when_set(token_client, headers):
    err = assert_error(token_client.get("/api/v1/models/pull-jobs", headers=headers), 401)
    assert "bearer token" in err["message"]
    assert_error(token_client.post("/api/v1/models/pull", json={"model": "tiny"}, headers=headers), 401)


def test_right_token_is_let_in(token_client):
    ok = {"Authorization": "Bearer s3cret"}
    assert token_client.get("/api/v1/models/pull-jobs", headers=ok).status_code == 200
    assert token_client.post("/api/v1/models/pull", json={"model": "tiny"}, headers=ok).status_code == 202


def test_health_and_api_description_need_no_token(token_client):
    assert token_client.get("/healthz").status_code == 200
    assert token_client.get("/api/v1/openapi.json").status_code == 200


def test_unknown_route_is_404_json(client):
    err = assert_error(client.get("/api/v1/nope"), 404)
    assert err["status"] == "Not Found"
    assert_error(client.get("/nope"), 404)


def test_wrong_method_is_405_json(client):
    assert_error(client.get("/api/v1/models/pull"), 405)


@pytest.fixture
def down_client():
    """The client create_app builds itself for a Redis URL on a closed port (refused at once).

    A bare redis.Redis(port=1) would retry with backoff for seconds; the app's own client,
    configured as in production, is the one worth testing.
    """
    app = create_app({"REDIS_URL": CLOSED_PORT_URL, "API_TOKEN": "", "CHECK_UPSTREAM": False})
    app.extensions["eldric.celery"] = FakeCelery()
    assert isinstance(app.extensions["eldric.redis"], redis.Redis)
    return app.test_client()


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", "/api/v1/models/pull", {"model": "tiny"}),
        ("get", "/api/v1/models/pull-jobs", None),
        ("get", "/api/v1/models/pull-jobs/abc", None),
        ("get", "/api/v1/workers", None),
        ("get", "/readyz", None),
    ],
)
def test_redis_down_is_503_json(down_client, method, path, body):
    resp = getattr(down_client, method)(path, json=body)
    err = assert_error(resp, 503)
    assert "edis" in err["message"]


def test_validation_comes_before_redis(down_client):
    assert_error(pull(down_client, {"model": 5}), 422)


def test_a_json_body_over_one_mib_is_413_before_it_is_read(client):
    resp = client.post("/api/v1/models/pull", data=b'{"model": "' + b"x" * (2 << 20) + b'"}',
                       content_type="application/json")
    assert resp.status_code == 413 and resp.get_json()["code"] == 413


# Issue 11 (hardening) -----------------------------------------------------------------------------

def test_lower_case_bearer_scheme_is_let_in(token_client):
    for scheme in ("bearer", "BEARER"):
        ok = {"Authorization": f"{scheme} s3cret"}
        assert token_client.get("/api/v1/models/pull-jobs", headers=ok).status_code == 200
        assert token_client.post("/api/v1/models/pull", json={"model": "tiny"}, headers=ok).status_code == 202


@pytest.mark.parametrize("query", ["offset=100000000000000000000", "offset=2147483648", "offset=-1",
                                   "limit=100000000000000000000"])
def test_job_listing_bounds_are_422(client, query):
    err = assert_error(client.get(f"/api/v1/models/pull-jobs?{query}"), 422)
    assert query.split("=")[0] in err["errors"]["query"]


@pytest.mark.parametrize("path, body, field", [
    ("/api/v1/models/show", {"model": ""}, "model"),
    ("/api/v1/models/delete", {"model": ""}, "model"),
    ("/api/v1/models/distribute", {"model": "", "source": {"type": "ollama"}}, "model"),
    ("/api/v1/models/distribute", {"model": "m", "source": {"type": "worker", "worker": ""}}, "source"),
    ("/api/v1/models/distribute", {"model": "m", "source": {"type": "url", "url": ""}}, "source"),
    ("/api/v1/pins", {"model": ""}, "model"),
    ("/api/v1/models/pull", {"model": "tiny", "deadline_seconds": 60.5}, "deadline_seconds"),
])
def test_empty_or_malformed_fields_fail_the_schema_naming_them(client, store, producer, cluster, path, body, field):
    err = assert_error(client.post(path, json=body), 422)
    assert field in err["errors"]["json"]
    assert nothing_happened(store, producer)


def test_show_has_a_documented_200_schema(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    ok = doc["paths"]["/api/v1/models/show"]["post"]["responses"]["200"]
    ref = ok["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert {"modelfile", "template", "details", "model_info", "worker"} <= set(doc["components"]["schemas"][ref]["properties"])


def test_show_answer_keeps_what_ollama_adds():
    from controller.api.models import ShowSchema
    answer = {"modelfile": "# m", "template": "{{ .Prompt }}", "details": {"family": "llama"}, "worker": "gpu1",
              "capabilities": ["completion"], "tensors": [{"name": "w"}]}
    assert ShowSchema().dump(answer) == answer


def test_openapi_patterns_describe_ollama_names(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    pull = doc["components"]["schemas"]["PullRequest"]["properties"]["model"]
    assert pull["minLength"] == 1 and pull["maxLength"] == 512 and pull["pattern"].startswith("^")
    (param,) = doc["paths"]["/api/v1/pins/{model}"]["parameters"]
    assert param["schema"]["pattern"] == pull["pattern"]


@pytest.mark.parametrize("model", ["169.254.169.254/library/x", "evil.example.com/library/x:latest",
                                   "127.0.0.1:6379/library/x"])
def test_a_model_naming_a_registry_outside_the_allow_list_is_400_before_anything_is_queued(
        client, store, producer, cluster, model):
    for call in (lambda: pull(client, {"model": model}),
                 lambda: client.post("/api/v1/models/distribute", json={"model": model, "source": {"type": "ollama"}}),
                 lambda: client.post("/api/v1/pins", json={"model": model})):
        body = assert_error(call(), 400)
        assert "model" in body["errors"]["json"] and "is not allowed" in body["message"], body
    assert producer.sent == [] and store.zcard(keys.JOBS) == 0


def test_the_mirror_and_the_allowed_registries_pass(cluster, store):
    app = make_app(OLLAMA_REGISTRY="http://mirror.lan:5000", ALLOWED_REGISTRIES=("hub.lan",))
    register(app.extensions["eldric.redis"], "gpu1", "inference")
    c = app.test_client()
    for model in ("tiny", "hf.co/org/repo:Q4_K_M", "mirror.lan:5000/library/tiny", "hub.lan:8443/team/m"):
        assert pull(c, {"model": model}).status_code == 202, model


def test_a_url_source_naming_a_literal_internal_address_is_400(client, cluster):
    resp = client.post("/api/v1/models/distribute", json={
        "model": "acme/x:v1", "source": {"type": "url", "url": "http://169.254.169.254/latest/meta-data/x.gguf"}})
    body = assert_error(resp, 400)
    assert "169.254.169.254" in body["message"] and "ELDRIC_URL_ALLOWLIST" in body["message"]

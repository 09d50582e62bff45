"""The worker choice for routed inference and the controller's routing views (controller/routing.py,
controller/ollama_route.py), over fakeredis, with a hand-written stand-in for the HTTP session to the agents."""

from __future__ import annotations

import json
import random
import time

import fakeredis
import pytest
import requests

from controller import create_app, routing
from controller.ollama_route import running_models
from eldric.cluster import inference_load, keys
from eldric.core.unload import is_unload
from eldric.cluster import workers as cluster_workers
from tests.support.fake_celery import FakeCelery

AUTH = {"Authorization": "Bearer tok"}
TINY = {"name": "tiny:latest", "digest": "sha256:" + "b" * 64, "size": 10, "modified_at": 1.0, "format": "gguf",
        "backends": ["llamacpp"], "details": {"family": "llama"}}


def worker(store, wid: str, models: list[dict], wtype: str = "inference", loaded: list[dict] | None = None) -> None:
    cluster_workers.register(store, {"id": wid, "type": wtype, "address": f"http://{wid}:1"}, ttl=30)
    cluster_workers.publish_inventory(store, wid, models)
    if loaded is not None:
        cluster_workers.publish_loaded(store, wid, loaded, ttl=30)


def loaded_entry(name="tiny:latest", backend="llamacpp", expires="2318-01-01T00:00:00Z"):
    return {"name": name, "model": name, "size": 10, "digest": "b" * 64, "details": {"format": "gguf"},
            "expires_at": expires, "size_vram": 0, "context_length": 128, "backend": backend}


@pytest.fixture
def store():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


# --- the worker choice -------------------------------------------------------------------------

def test_only_online_workers_whose_backend_serves_it_are_candidates(store):
    worker(store, "a", [TINY])
    worker(store, "stored", [{**TINY, "backends": []}])  # in the store, no backend serves it
    worker(store, "other", [{**TINY, "name": "other:latest"}])
    worker(store, "data", [TINY], wtype="data")
    worker(store, "gone", [TINY])
    cluster_workers.go_offline(store, "gone")
    name, found = routing.candidates(store, "tiny")  # Ollama's short form finds tiny:latest
    assert name == "tiny:latest" and [c.worker for c in found] == ["a"]
    assert found[0].address == "http://a:1" and found[0].backend == "llamacpp" and not found[0].loaded


def test_the_backend_that_has_it_loaded_is_chosen_and_a_file_model_by_its_exact_name(store):
    worker(store, "a", [{**TINY, "backends": ["ollama", "llamacpp"]}], loaded=[loaded_entry(backend="llamacpp")])
    worker(store, "f", [{**TINY, "name": "team/m:v1"}])
    [cand] = routing.candidates(store, "tiny:latest")[1]
    assert cand.loaded and cand.backend == "llamacpp"
    assert routing.candidates(store, "team/m:v1")[0] == "team/m:v1"
    assert routing.candidates(store, "nope") == ("nope:latest", [])


def test_the_id_an_openai_server_lists_it_under_comes_with_the_candidate(store):
    worker(store, "a", [TINY], loaded=[{**loaded_entry(), "backend_model": "/n/a/llamacpp/tiny.gguf"}])
    worker(store, "b", [TINY])
    by = {c.worker: c for c in routing.candidates(store, "tiny")[1]}
    assert by["a"].backend_model == "/n/a/llamacpp/tiny.gguf" and by["b"].backend_model == ""


def test_serving_workers_are_reused_a_moment_but_in_flight_is_read_every_time(store):
    worker(store, "a", [TINY])
    cache = routing.HolderCache(seconds=60)
    assert [c.in_flight for c in routing.candidates(store, "tiny", cache)[1]] == [0]
    worker(store, "b", [TINY])  # joins: seen when the cache entry is older than `seconds`
    rid = inference_load.begin(store, "a")
    [a] = routing.candidates(store, "tiny", cache)[1]
    assert a.worker == "a" and a.in_flight == 1
    inference_load.end(store, "a", rid)
    cache.seconds = 0
    assert sorted(c.worker for c in routing.candidates(store, "tiny", cache)[1]) == ["a", "b"]


def test_rank_loaded_first_then_least_busy_ties_shared():
    c = routing.Candidate
    found = [c("cold", "u", "b", False, 0), c("busy", "u", "b", True, 3), c("idle", "u", "b", True, 1)]
    assert [x.worker for x in routing.rank(found, random.Random(1))] == ["idle", "busy", "cold"]
    ties = [c("x", "u", "b", True, 0), c("y", "u", "b", True, 0)]
    firsts = {routing.rank(ties, random.Random(seed))[0].worker for seed in range(20)}
    assert firsts == {"x", "y"}  # equal workers share the load


def test_in_flight_is_counted_in_redis_and_stale_entries_stop_counting(store):
    rid = inference_load.begin(store, "a")
    inference_load.begin(store, "a", now=time.time() - inference_load.MAX_REQUEST_SECONDS - 1)  # a dead controller's
    assert inference_load.in_flight(store, ["a", "b"]) == {"a": 1, "b": 0}
    inference_load.end(store, "a", rid, failed=True)
    assert inference_load.in_flight(store, ["a"]) == {"a": 0}
    assert inference_load.totals(store) == ({"a": 2}, {"a": 1})


def test_ps_merges_reports_latest_expiry_and_skips_offline_workers(store):
    worker(store, "a", [TINY], loaded=[loaded_entry(expires="2026-12-08T01:00:00.123456789+01:00")])
    worker(store, "b", [TINY], loaded=[loaded_entry(expires="2026-12-08T00:30:00Z"), loaded_entry("x:latest")])
    worker(store, "c", [TINY], loaded=[loaded_entry(expires="2030-01-01T00:00:00Z")])
    cluster_workers.go_offline(store, "c")
    tiny, x = running_models(store)
    assert tiny["name"] == "tiny:latest" and tiny["workers"] == ["a", "b"]
    assert tiny["expires_at"] == "2026-12-08T00:30:00Z"  # 00:30 UTC is after 01:00+01:00 (00:00 UTC)
    assert tiny["backends"] == {"a": ["llamacpp"], "b": ["llamacpp"]} and "backend" not in tiny
    assert x["workers"] == ["b"]


# --- the views, with a stand-in for the agents -------------------------------------------------

class FakeAnswer:
    def __init__(self, status: int, chunks: list[bytes], content_type: str = "application/x-ndjson",
                 broken: bool = False) -> None:
        self.status_code, self.chunks, self.broken = status, chunks, broken
        self.headers = {"Content-Type": content_type}
        self.closed = False

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)

    def iter_content(self, chunk_size=None):
        yield from self.chunks
        if self.broken:
            raise requests.ConnectionError("reset")

    def close(self) -> None:
        self.closed = True


class FakeAgents:
    """worker id -> what its agent does: an answer, or an exception raised before any byte."""

    def __init__(self, behaviour: dict) -> None:
        self.behaviour, self.calls = behaviour, []

    def post(self, url: str, **kw):
        wid = url.split("//", 1)[1].split(":", 1)[0]
        self.calls.append((wid, url.split(":1", 1)[1], kw.get("params"), kw.get("data")))
        found = self.behaviour[wid]
        if isinstance(found, Exception):
            raise found
        return found


@pytest.fixture
def app(store):
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "tok", "CHECK_UPSTREAM": False})
    app.extensions["eldric.redis"] = store
    app.extensions["eldric.celery"] = FakeCelery()
    return app


def agents(app, **behaviour) -> FakeAgents:
    fake = app.extensions["eldric.route_session"] = FakeAgents(behaviour)
    return fake


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def test_a_worker_that_fails_before_the_first_byte_is_retried_on_another(app, store):
    worker(store, "a", [TINY], loaded=[loaded_entry()])
    worker(store, "b", [TINY])  # not loaded: tried second
    fake = agents(app, a=requests.ConnectionError("refused"), b=FakeAnswer(200, [b'{"done":false}\n', b'{"done":true}\n']))
    resp = app.test_client().post("/api/chat", json=CHAT, headers=AUTH)
    assert resp.status_code == 200 and resp.headers["X-Eldric-Worker"] == "b"
    assert resp.data == b'{"done":false}\n{"done":true}\n'
    assert [c[0] for c in fake.calls] == ["a", "b"]
    assert fake.calls[1][1] == "/inference/llamacpp/api/chat" and fake.calls[1][2] == {"model": "tiny:latest"}
    assert json.loads(fake.calls[1][3]) == CHAT  # the body as the client sent it
    assert inference_load.totals(store) == ({"a": 1, "b": 1}, {"a": 1})
    assert inference_load.in_flight(store, ["a", "b"]) == {"a": 0, "b": 0}


def test_the_agent_is_told_the_backends_id_so_it_need_not_ask_the_server(app, store):
    worker(store, "a", [TINY], loaded=[{**loaded_entry(), "backend_model": "/n/a/llamacpp/tiny.gguf"}])
    fake = agents(app, a=FakeAnswer(200, [b"{}"], "application/json"))
    assert app.test_client().post("/v1/completions", json={"model": "tiny", "prompt": "x"}, headers=AUTH).status_code == 200
    assert fake.calls[0][2] == {"model": "tiny:latest", "backend_model": "/n/a/llamacpp/tiny.gguf"}


def test_a_5xx_is_retried_a_refusal_of_the_request_is_passed_through(app, store):
    worker(store, "a", [TINY], loaded=[loaded_entry()])
    worker(store, "b", [TINY])
    agents(app, a=FakeAnswer(502, [b'{"error": "llamacpp unreachable"}'], "application/json"),
           b=FakeAnswer(400, [b'{"error": "messages: field required"}'], "application/json"))
    resp = app.test_client().post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 400 and resp.headers["X-Eldric-Worker"] == "b"
    assert resp.json["error"]["message"] == "messages: field required"  # OpenAI's error shape on /v1
    assert inference_load.totals(store)[1] == {"a": 1}


def test_every_worker_failing_is_a_502_naming_them_and_stale_inventories_a_404(app, store):
    worker(store, "a", [TINY])
    worker(store, "b", [TINY])
    agents(app, a=requests.ConnectTimeout("slow"), b=FakeAnswer(503, [b'{"error": "busy"}'], "application/json"))
    resp = app.test_client().post("/api/generate", json={"model": "tiny", "prompt": "x"}, headers=AUTH)
    assert resp.status_code == 502 and "a: ConnectTimeout" in resp.json["error"] and "b: busy" in resp.json["error"]
    agents(app, a=FakeAnswer(404, [b'{"error": "model not found"}'], "application/json"),
           b=FakeAnswer(404, [b'{"error": "model not found"}'], "application/json"))
    resp = app.test_client().post("/api/generate", json={"model": "tiny", "prompt": "x"}, headers=AUTH)
    assert resp.status_code == 404 and resp.json == {"error": "model 'tiny' not found"}


def test_a_stream_broken_after_the_first_byte_ends_with_an_error_line_and_counts_an_error(app, store):
    worker(store, "a", [TINY])
    agents(app, a=FakeAnswer(200, [b'{"done":false}\n'], broken=True))
    resp = app.test_client().post("/api/chat", json=CHAT, headers=AUTH)
    lines = resp.data.decode().splitlines()
    assert json.loads(lines[0]) == {"done": False} and "broke off" in json.loads(lines[-1])["error"]
    assert inference_load.totals(store) == ({"a": 1}, {"a": 1})


def test_an_unknown_model_is_ollamas_404_and_openais(app, store):
    worker(store, "a", [TINY])
    agents(app)
    client = app.test_client()
    assert client.post("/api/chat", json={**CHAT, "model": "nope"}, headers=AUTH).json == {"error": "model 'nope' not found"}
    resp = client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=AUTH)
    assert resp.status_code == 404 and resp.json["error"]["code"] == "model_not_found"
    assert client.post("/api/embed", json={"input": "x"}, headers=AUTH).json == {"error": "model is required"}


def test_an_unload_goes_to_every_worker_where_it_is_loaded(app, store):
    worker(store, "a", [TINY], loaded=[loaded_entry()])
    worker(store, "b", [TINY], loaded=[loaded_entry()])
    worker(store, "c", [TINY])  # serves it, has nothing loaded
    fake = agents(app, a=FakeAnswer(200, [b'{"done": true, "done_reason": "unload"}\n']),
                  b=FakeAnswer(200, [b'{"done": true, "unloaded": false, "reason": "keeps it"}']))
    resp = app.test_client().post("/api/generate", json={"model": "tiny", "keep_alive": 0, "prompt": ""}, headers=AUTH)
    assert resp.status_code == 200 and resp.headers["X-Eldric-Worker"] == "a,b"
    assert sorted(c[0] for c in fake.calls) == ["a", "b"]
    assert resp.json["done_reason"] == "unload" and resp.json["workers"]["a"]["unloaded"] is True
    assert resp.json["workers"]["b"] == {"status": 200, "backend": "llamacpp", "unloaded": False, "reason": "keeps it"}


def test_openai_paths_need_the_token_and_answer_in_openais_shape(app, store):
    resp = app.test_client().get("/v1/models")
    assert resp.status_code == 401 and resp.json["error"]["code"] == "invalid_api_key"
    worker(store, "a", [TINY])
    worker(store, "s", [{**TINY, "name": "stored:latest", "backends": []}])
    listed = app.test_client().get("/v1/models", headers=AUTH).json
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["tiny:latest"]


def test_metrics_show_each_workers_routed_requests_errors_and_in_flight(app, store):
    worker(store, "a", [TINY])
    inference_load.end(store, "a", inference_load.begin(store, "a"), failed=True)
    inference_load.begin(store, "a")
    text = app.test_client().get("/metrics").data.decode()
    assert 'eldric_route_requests_total{worker="a"} 2.0' in text
    assert 'eldric_route_errors_total{worker="a"} 1.0' in text
    assert 'eldric_route_in_flight{worker="a"} 1.0' in text
    assert store.zcard(keys.ROUTE_IN_FLIGHT) == 1


@pytest.mark.parametrize(("endpoint", "body", "expected"), [
    ("api/generate", {"keep_alive": 0, "prompt": ""}, True),
    ("api/generate", {"keep_alive": "0s"}, True),
    ("api/generate", {"keep_alive": "0m", "prompt": None}, True),
    ("api/chat", {"keep_alive": 0, "messages": []}, True),
    ("api/generate", {"keep_alive": 0, "prompt": "hi"}, False),  # generate, then unload: one worker
    ("api/generate", {"keep_alive": "5m", "prompt": ""}, False),  # a load
    ("api/generate", {"keep_alive": False, "prompt": ""}, False),
    ("api/embed", {"keep_alive": 0}, False),
])
def test_what_counts_as_an_unload(endpoint, body, expected):
    assert is_unload(endpoint, body) is expected


def test_the_apps_own_token_check_covers_every_v1_path_in_openais_shape(app):
    """Not only the routes ollama_route registers: an unknown /v1 path is refused before routing (401, not 404)."""
    resp = app.test_client().post("/v1/not-a-route", json={})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "invalid_api_key"


def test_a_worker_that_failed_before_the_first_byte_is_tried_last_for_a_while(app, store, monkeypatch):
    """Its loaded report lags a heartbeat behind a dead backend: the next requests go elsewhere first."""
    worker(store, "a", [TINY], loaded=[loaded_entry()])  # loaded: first, until it fails
    worker(store, "b", [TINY])
    fake = agents(app, a=requests.ConnectionError("refused"), b=FakeAnswer(200, [b'{"done":true}\n']))

    def answered_by() -> str:
        resp = app.test_client().post("/api/chat", json=CHAT, headers=AUTH)
        resp.get_data()  # read to the end: the relay's ending (in flight -1) runs now, not in a finalizer
        resp.close()
        return resp.headers["X-Eldric-Worker"]

    assert [answered_by(), answered_by()] == ["b", "b"]
    assert [c[0] for c in fake.calls] == ["a", "b", "b"]
    fake.behaviour["b"] = requests.ConnectionError("refused too")  # alone, a is still tried
    fake.behaviour["a"] = FakeAnswer(200, [b'{"done":true}\n'])
    assert answered_by() == "a"
    monkeypatch.setattr(inference_load, "COOL_DOWN_SECONDS", 0.0)  # the while is over: loaded first again
    fake.calls.clear()
    answered_by()
    assert fake.calls[0][0] == "a"

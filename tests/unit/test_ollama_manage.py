"""Ollama's model-management calls the front-ends make, through Flask's test client over fakeredis and a
recording producer: HEAD, `name` for `model`, copy's refusals and job, shared pulls, CORS."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from controller import config as controller_config
from controller import agents, create_app, ollama_api, shared_pulls
from controller.copy_jobs import start_copy
from controller.pull_jobs import JobLimits
from controller.shared_pulls import start_or_attach
from eldric.cluster import keys
from eldric.cluster import workers as cluster_workers
from eldric.cluster.jobs import catchups
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.reaper import reap_stale_jobs
from eldric.cluster.jobs.store import fail_worker
from eldric.cluster.queues import TASK_COPY, TASK_PULL
from eldric.core.request_errors import ConflictError, NotFoundError, UnavailableError
from eldric.core.settings import SettingsError
from tests.support.fake_celery import FakeCelery

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"
PAGE = "https://chat.example.org"
LIMITS = JobLimits(deadline_seconds=600, retention_seconds=3600, keep_max=100)


def make_app(**config):
    app = create_app({"REDIS_URL": CLOSED_PORT_URL, "API_TOKEN": "tok", "CHECK_UPSTREAM": False, **config})
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.celery"] = FakeCelery()
    return app


@pytest.fixture(scope="module")
def app():
    return make_app(CORS_ORIGINS=(PAGE,))


@pytest.fixture
def store(app):
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.celery"] = FakeCelery()
    return app.extensions["eldric.redis"]


@pytest.fixture
def producer(app, store):
    return app.extensions["eldric.celery"]


@pytest.fixture
def client(app, store):
    return app.test_client()


AUTH = {"Authorization": "Bearer tok"}


def worker(store, wid: str, models: list[dict], wtype: str = "inference") -> None:
    cluster_workers.register(store, {"id": wid, "type": wtype, "address": f"http://{wid}:1"}, ttl=30)
    cluster_workers.publish_inventory(store, wid, models)


STORE_MODEL = {"name": "tiny:latest", "full_name": "registry.ollama.ai/library/tiny:latest", "digest": "sha256:" + "b" * 64,
               "size": 10, "modified_at": 1.0, "format": "gguf", "backends": ["ollama"], "details": {"family": "llama"}}
FILE_MODEL = {"name": "team/m:v1", "full_name": "team/m:v1", "digest": "sha256:" + "c" * 64, "size": 5, "modified_at": 1.0,
              "format": "gguf", "backends": ["llamacpp"], "source": "registry", "details": {"architecture": "llama"}}


# HEAD and `name` --------------------------------------------------------------------------------------

def test_head_root_and_tags_answer_200_without_a_body(client, store):
    worker(store, "w1", [STORE_MODEL])
    assert client.head("/").status_code == 200  # Enchanted's reachability check (the root is open)
    resp = client.head("/api/tags", headers=AUTH)
    assert resp.status_code == 200 and resp.data == b""
    assert client.head("/api/tags").status_code == 401  # the token still applies


def test_tags_entries_decode_as_enchanted_needs_them(client, store):
    worker(store, "w1", [STORE_MODEL, FILE_MODEL])
    models = client.get("/api/tags", headers=AUTH).get_json()["models"]
    assert {m["name"] for m in models} == {"tiny:latest", "team/m:v1"}
    for m in models:
        assert m["modified_at"].endswith("Z") and isinstance(m["size"], int) and len(m["digest"]) == 64
        assert all(isinstance(m["details"][k], str) for k in ("format", "family", "parameter_size", "quantization_level",
                                                                "parent_model"))
        assert isinstance(m["details"]["families"], list)


@pytest.mark.parametrize("path, method", [("/api/show", "post"), ("/api/delete", "delete")])
def test_name_is_taken_where_model_is(client, store, path, method):
    worker(store, "w1", [STORE_MODEL])
    resp = getattr(client, method)(path, json={"name": "nosuch"}, headers=AUTH)
    assert resp.status_code == 404 and "nosuch" in resp.get_json()["error"]  # not 400 "model is required"


OLD_AGENT_SHOW = {"modelfile": "# Modelfile\nFROM tiny", "parameters": None, "template": "{{ .Prompt }}", "system": None,
                  "details": {"format": "gguf", "family": "llama", "families": None, "parameter_size": None,
                              "quantization_level": None}, "modified_at": 1765152000.5}  # no model_info, capabilities


def test_our_show_answers_the_same_filled_shape_as_ollamas(client, store, monkeypatch):
    """/api/v1/models/show (the CLI's, the dashboard's) is /api/show's answer plus the worker that gave it: an
    older agent's nulls and missing keys are completed by the one shaping (controller/ollama_shapes.py)."""
    monkeypatch.setattr(agents, "show_model", lambda *_a, **_kw: {**json.loads(json.dumps(OLD_AGENT_SHOW)), "worker": "w1"})
    ollama = client.post("/api/show", json={"model": "tiny"}, headers=AUTH).get_json()
    ours = client.post("/api/v1/models/show", json={"model": "tiny"}, headers=AUTH)
    assert ours.status_code == 200, ours.get_json()
    ours = ours.get_json()
    assert ours.pop("worker") == "w1"
    assert ours == ollama
    assert all(isinstance(ours["details"][k], str) for k in ("format", "family", "parameter_size", "quantization_level",
                                                               "parent_model"))
    assert ours["details"]["families"] == ["llama"] and ours["model_info"] == {"general.architecture": "llama"}
    assert ours["capabilities"] == ["completion"] and ours["parameters"] == "" and ours["system"] == ""
    assert ours["modified_at"] == "2025-12-08T00:00:00.500000Z"


def test_pull_with_name_starts_the_job(client, store, producer):
    worker(store, "w1", [])
    fail_after_start = client.post("/api/pull", json={"name": "tiny", "stream": True}, headers=AUTH)
    assert fail_after_start.status_code == 200
    assert [m["name"] for m in producer.sent] == [TASK_PULL]
    job_id = producer.sent[0]["args"][0]
    assert store.hget(keys.job(job_id), "model") == "tiny:latest"


# copy -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, words", [
    ({"destination": "b"}, 400, "source is required"),
    ({"source": "tiny"}, 400, "destination is required"),
    ({"source": "tiny", "destination": "Bad Name!"}, 400, "destination"),
    ({"source": "nosuch", "destination": "b"}, 404, "nosuch"),
    ({"source": "team/m:v1", "destination": "b"}, 409, "file model"),
])
def test_copy_refusals_are_ollama_errors_and_queue_nothing(client, store, producer, body, status, words):
    worker(store, "w1", [STORE_MODEL, FILE_MODEL])
    resp = client.post("/api/copy", json=body, headers=AUTH)
    assert resp.status_code == status, resp.get_json()
    assert words in resp.get_json()["error"] and set(resp.get_json()) == {"error"}
    assert producer.sent == [] and store.zcard(keys.JOBS) == 0


def test_copy_is_a_job_on_every_holder_offline_ones_too(store):
    producer = FakeCelery()
    worker(store, "w1", [STORE_MODEL])
    worker(store, "w2", [STORE_MODEL])
    worker(store, "w3", [])  # does not have it: no part
    worker(store, "w4", [STORE_MODEL])
    cluster_workers.go_offline(store, "w4")  # gets it when it returns, as a delete would reach it
    job_id = start_copy(store, producer, source="tiny", destination="tiny-copy", limits=LIMITS)
    assert sorted(m["queue"] for m in producer.sent) == ["worker.w1", "worker.w2", "worker.w4"]
    assert {m["name"] for m in producer.sent} == {TASK_COPY}
    meta = store.hgetall(keys.job(job_id))
    assert meta["kind"] == "copy" and meta["model"] == "tiny-copy:latest"
    assert json.loads(meta["options"]) == {"source": "tiny:latest"}
    assert json.loads(meta["targets"]) == ["w1", "w2", "w4"]
    cluster_workers.go_offline(store, "w1")
    cluster_workers.go_offline(store, "w2")
    with pytest.raises(UnavailableError, match="offline"):  # no holder can make it now: nothing would list it
        start_copy(store, producer, source="tiny", destination="x", limits=LIMITS)


def test_a_copy_skipped_offline_is_caught_up_when_the_holder_returns(store):
    """The holder away past the grace ends `skipped`; beat's reaper remembers the copy, its reconcile replays it
    (same source, same destination) once the worker heartbeats again."""
    worker(store, "w1", [STORE_MODEL])
    worker(store, "w2", [STORE_MODEL])
    cluster_workers.go_offline(store, "w2")
    job_id = start_copy(store, FakeCelery(), source="tiny", destination="tiny-copy", limits=LIMITS)
    Progress(store, job_id, "w1").finish(total=10)
    later = time.time() + 60

    reaped = reap_stale_jobs(store, stale_after=30, offline_grace=5, now=later)

    assert [(r.worker_id, r.state) for r in reaped] == [("w2", jobstate.SKIPPED)]
    [entry] = catchups.pending_catchups(store, "w2")
    assert (entry["job_id"], entry["kind"], entry["model"], entry["options"]) == (
        job_id, "copy", "tiny-copy:latest", {"source": "tiny:latest"})
    sent = []

    def send(task, args, worker_ids):
        sent.extend((task, args, w) for w in worker_ids)
        return {}
    assert catchups.reconcile_catchups(store, send, deadline_seconds=600, busy={}, now=later) == []  # still away
    store.set(keys.worker_alive("w2"), later)
    [started] = catchups.reconcile_catchups(store, send, deadline_seconds=600, busy={}, now=later)
    assert started["catch_up_of"] == job_id and started["worker"] == "w2"
    assert sent == [(TASK_COPY, [started["job_id"], "tiny-copy:latest"], "w2")]
    meta = store.hgetall(keys.job(started["job_id"]))
    assert meta["kind"] == "copy" and json.loads(meta["targets"]) == ["w2"]
    assert json.loads(meta["options"]) == {"source": "tiny:latest", "catch_up_of": job_id}  # what the agent reads
    assert catchups.pending_catchups(store, "w2") == []


class AgentsDoTheirPart(FakeCelery):
    """Each online target's agent does its part at once: final record, then its inventory (as job_runner does)."""

    def __init__(self, store) -> None:
        super().__init__()
        self.store = store

    def send_task(self, name, args=None, queue=None, producer=None, **kw):
        super().send_task(name, args=args, queue=queue, producer=producer, **kw)
        job_id, model = args
        wid = queue.removeprefix("worker.")
        if not cluster_workers.is_online(self.store, wid):
            return
        Progress(self.store, job_id, wid).finish(total=10)
        held = [json.loads(raw) for raw in self.store.hvals(keys.worker_models(wid))]
        held = [m for m in held if m["name"] != model]
        if name == TASK_COPY:
            held.append({**STORE_MODEL, "name": model})
        cluster_workers.publish_inventory(self.store, wid, held)


@pytest.mark.parametrize("path, method, body, listed", [
    ("/api/copy", "post", {"source": "tiny", "destination": "tiny-copy"}, True),
    ("/api/delete", "delete", {"model": "tiny"}, False),
])
def test_copy_and_delete_answer_once_the_online_holders_have_it(app, client, store, monkeypatch, path, method, body,
                                                                 listed):
    """A holder offline (within the grace) is a target whose queued task runs when it returns: it does not
    hold the client's answer (before: the answer waited for it to the timeout)."""
    monkeypatch.setattr(ollama_api, "WAIT_SECONDS", 3.0)
    monkeypatch.setattr(ollama_api, "POLL_SECONDS", 0.01)
    app.extensions["eldric.celery"] = producer = AgentsDoTheirPart(store)
    worker(store, "w1", [STORE_MODEL])
    worker(store, "w2", [STORE_MODEL])
    cluster_workers.go_offline(store, "w2")
    resp = getattr(client, method)(path, json=body, headers=AUTH)
    assert resp.status_code == 200 and resp.data == b"", resp.get_json()
    assert sorted(m["queue"] for m in producer.sent) == ["worker.w1", "worker.w2"]
    name = "tiny-copy:latest" if method == "post" else "tiny:latest"
    assert (name in cluster_workers.inventory_names(store, "w1")) is listed
    assert cluster_workers.inventory_names(store, "w2") == {"tiny:latest"}  # its part waits for it


def test_copy_that_failed_on_an_online_holder_is_502_naming_it(app, client, store, monkeypatch):
    """At once: the offline holder's part, still waiting, does not hold the failure's answer."""
    monkeypatch.setattr(ollama_api, "WAIT_SECONDS", 3.0)
    monkeypatch.setattr(ollama_api, "POLL_SECONDS", 0.01)
    worker(store, "w1", [STORE_MODEL])
    worker(store, "w2", [STORE_MODEL])
    cluster_workers.go_offline(store, "w2")

    class FailsOnW1(FakeCelery):
        def send_task(self, name, args=None, queue=None, producer=None, **kw):
            super().send_task(name, args=args, queue=queue, producer=producer, **kw)
            if queue == "worker.w1":
                fail_worker(store, args[0], "w1", "no space left on device")
    app.extensions["eldric.celery"] = FailsOnW1()
    resp = client.post("/api/copy", json={"source": "tiny", "destination": "tiny-copy"}, headers=AUTH)
    assert resp.status_code == 502 and "w1: no space left on device" in resp.get_json()["error"]


def test_copy_of_a_file_model_says_why_not(store):
    worker(store, "w1", [FILE_MODEL])
    with pytest.raises(ConflictError, match="distribute it again"):
        start_copy(store, FakeCelery(), source="team/m:v1", destination="alias", limits=LIMITS)
    with pytest.raises(NotFoundError):
        start_copy(store, FakeCelery(), source="gone", destination="alias", limits=LIMITS)


# shared pulls ---------------------------------------------------------------------------------------

def test_a_second_pull_of_a_running_one_attaches_to_it(store):
    producer = FakeCelery()
    worker(store, "w1", [])
    worker(store, "c1", [], wtype="cloud")
    first = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    second = start_or_attach(store, producer, model="tiny:latest", limits=LIMITS, stale_after=60, offline_grace=300)
    assert not first.attached and second.attached and second.job_id == first.job_id
    assert len(producer.sent) == 2  # one task per worker, once
    other = start_or_attach(store, producer, model="other", limits=LIMITS, stale_after=60, offline_grace=300)
    assert other.job_id != first.job_id and not other.attached


def test_a_finished_pull_or_new_targets_start_a_new_job(store):
    producer = FakeCelery()
    worker(store, "w1", [])
    first = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    fail_worker(store, first.job_id, "w1", "broken")
    after_failure = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    assert after_failure.job_id != first.job_id and not after_failure.attached
    worker(store, "w2", [])  # registered since: the running job does not cover it
    widened = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    assert widened.job_id != after_failure.job_id
    assert sorted(store.hget(keys.job(widened.job_id), "targets").strip("[]").replace('"', "").split(", ")) == ["w1", "w2"]


def test_a_start_lock_held_by_another_controller_is_503_saying_so(client, store, producer, monkeypatch):
    """Another controller holds the start lock of this model's pull for the whole wait (it is asking upstream):
    the pull is refused 503 naming that start, nothing is queued; once the lock is free the pull starts."""
    monkeypatch.setattr(shared_pulls, "LOCK_SECONDS", 0.2)
    worker(store, "w1", [])
    elsewhere = store.lock(f"{keys.shared_pull('tiny:latest')}:lock", timeout=30)
    assert elsewhere.acquire(blocking=False)
    with pytest.raises(UnavailableError, match="another pull of 'tiny:latest' is being started"):
        start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    resp = client.post("/api/pull", json={"model": "tiny"}, headers=AUTH)
    assert resp.status_code == 503, resp.data
    assert resp.get_json() == {"error": "another pull of 'tiny:latest' is being started; try again"}
    assert producer.sent == [] and store.zcard(keys.JOBS) == 0
    elsewhere.release()
    assert client.post("/api/pull", json={"model": "tiny"}, headers=AUTH).status_code == 200
    assert [m["queue"] for m in producer.sent] == ["worker.w1"]


def test_delete_of_a_model_being_pulled_cancels_the_pull(client, store, producer):
    worker(store, "w1", [])
    first = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    resp = client.delete("/api/delete", json={"model": "tiny"}, headers=AUTH)
    assert resp.status_code == 200 and resp.data == b""  # Open WebUI's cancel: abort the stream, then delete
    assert json.loads(store.hget(keys.job_workers(first.job_id), "w1"))["state"] == "cancelled"
    again = start_or_attach(store, producer, model="tiny", limits=LIMITS, stale_after=60, offline_grace=300)
    assert again.job_id != first.job_id
    assert client.delete("/api/delete", json={"model": "other"}, headers=AUTH).status_code == 404


# CORS -----------------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": PAGE, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.mark.parametrize("path", ["/", "/api/tags", "/api/pull", "/api/show", "/api/chat", "/v1/chat/completions"])
def test_preflight_needs_no_token_and_allows_the_page(client, path):
    resp = client.options(path, headers=PREFLIGHT)
    assert resp.status_code in (200, 404), resp.status_code  # 404: another part's endpoint not built yet
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]


def test_calls_from_the_page_carry_cors_and_still_need_the_token(client, store):
    worker(store, "w1", [STORE_MODEL])
    ok = client.get("/api/tags", headers={"Origin": PAGE, **AUTH})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == PAGE
    refused = client.get("/api/tags", headers={"Origin": PAGE})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == PAGE  # readable by the page
    other = client.get("/api/tags", headers={"Origin": "https://evil.example", **AUTH})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in client.get("/api/tags", headers=AUTH).headers  # not from a page


def test_our_own_api_gets_no_cors(client):
    resp = client.options("/api/v1/models", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert client.get("/api/v1/models", headers={"Origin": PAGE}).status_code == 401


def test_no_setting_no_cors_headers():
    app = make_app()
    resp = app.test_client().options("/api/tags", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_star_is_allowed_explicitly():
    resp = make_app(CORS_ORIGINS=("*",)).test_client().get("/", headers={"Origin": "https://anywhere.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("value", ["https://chat.example.org/", "chat.example.org", "https://a.example/path",
                                   "*,https://a.example"])
def test_a_bad_origin_setting_fails_at_start_naming_it(value):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        controller_config.from_env({"ELDRIC_CORS_ORIGINS": value})


def test_origins_setting_is_a_comma_list():
    cfg = controller_config.from_env({"ELDRIC_CORS_ORIGINS": "https://a.example, http://127.0.0.1:3210"})
    assert cfg["CORS_ORIGINS"] == ("https://a.example", "http://127.0.0.1:3210")


def test_a_model_upstream_lacks_but_the_cluster_registry_holds_is_pulled_from_there(store, monkeypatch):
    """`ollama pull mine` of a created model: upstream first (404 there), then the data node's /v2/."""
    from controller import pull_jobs

    def upstream_lacks(name, _registry):
        raise NotFoundError(f"model '{name.short}' not found upstream", field="model")

    monkeypatch.setattr(pull_jobs, "check_upstream", upstream_lacks)
    producer = FakeCelery()
    worker(store, "w1", [])
    asked = []
    held = start_or_attach(store, producer, model="mine", limits=LIMITS, stale_after=60, offline_grace=300,
                           in_cluster_registry=lambda name: asked.append(name.short) or True)
    assert asked == ["mine:latest"] and store.hget(keys.job(held.job_id), "source") == "cluster"
    assert len(producer.sent) == 1
    with pytest.raises(NotFoundError, match="not found upstream"):
        start_or_attach(store, producer, model="nosuch", limits=LIMITS, stale_after=60, offline_grace=300,
                        in_cluster_registry=lambda name: False)
    assert len(producer.sent) == 1  # nothing queued for a model neither has

"""A created model's pull job (source `cluster`): every try of it fetches from the data node's /v2/.

The controller starts it without asking ELDRIC_OLLAMA_REGISTRY; the job's source survives the reaper's
skip, the catch-up and a pin; the agent turns that source into the data node at its ELDRIC_REGISTRY_URL
with the cluster secret, and an agent without that setting fails its part saying so (no retry, no crash).
fakeredis for Redis, FakeCelery for the broker, a recording session for the registry: no sockets.
"""

from __future__ import annotations

import io
import json
import time

import fakeredis
import pytest
import requests
import urllib3

from controller import create_app, pull_jobs
from controller.pull_jobs import JobLimits
from eldric.cluster import keys, maintenance, pins
from eldric.cluster.jobs import catchups
from eldric.cluster.jobs.reaper import reap_stale_jobs
from eldric.cluster.jobs.start import CLUSTER_REGISTRY
from eldric.cluster.queues import TASK_PULL, worker_queue
from eldric.core.names import ModelName
from eldric.transfer.errors import ModelNotFoundError, SourceError
from eldric.transfer.registry_upstream import RegistryUpstream
from tests.support.fake_celery import FakeCelery
from worker_agent import job_runner
from worker_agent.catalog import Catalog
from worker_agent.distributing import RETRIED_ERRORS
from worker_agent.ollama_store import OllamaStore
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings
from worker_agent.sources import RegistrySource
from worker_agent.tasks import describe_failure

DATA = "http://data-1:8892"
SECRET = "s3cret"
NOWHERE = "http://127.0.0.1:1"  # ELDRIC_OLLAMA_REGISTRY: asking it would fail


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def register(client, wid: str, *, online: bool) -> None:
    now = time.time()
    client.sadd(keys.WORKERS, wid)
    client.hset(keys.worker(wid), mapping={"id": wid, "type": "inference", "last_seen": now if online else now - 600})
    if online:
        client.set(keys.worker_alive(wid), now)


def settings(**env: str) -> AgentSettings:
    return AgentSettings.from_env({"ELDRIC_OLLAMA_REGISTRY": NOWHERE, "ELDRIC_CLUSTER_SECRET": SECRET, **env},
                                  worker_id="gpu2", worker_type="inference")


class RecordingSession(requests.Session):
    """Answers every GET 404 (the registry's MANIFEST_UNKNOWN) and records where it went and with which headers."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict]] = []

    def get(self, url, headers=None, **_kw):
        self.calls.append((url, dict(headers or {})))
        resp = requests.Response()
        resp.status_code, resp.reason = 404, "Not Found"
        resp.raw = urllib3.HTTPResponse(body=io.BytesIO(b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'),
                                        preload_content=False, status=404)
        return resp


def fetched_from(s: AgentSettings, job_id: str, client) -> tuple[str, dict]:
    """Where the agent asks for the job's manifest, as its pull task would (the job's own record decides)."""
    meta = client.hgetall(keys.job(job_id))
    session = RecordingSession()
    source = RegistrySource.for_job(ModelName.parse(meta["model"]), s, meta.get("source"), session=session)
    with pytest.raises(ModelNotFoundError):
        source.fetch_manifest(ModelName.parse(meta["model"]))
    [call] = session.calls
    return call


def test_a_created_models_job_and_its_catch_up_fetch_from_the_data_node(client):
    register(client, "gpu1", online=True)
    register(client, "gpu2", online=False)
    producer = FakeCelery()
    limits = JobLimits(deadline_seconds=3600, retention_seconds=3600, keep_max=100,
                       registry=RegistryUpstream(NOWHERE))  # asked, it would refuse the connection: 502

    job_id = pull_jobs.start_cluster_pull(client, producer, model="mine", limits=limits)

    assert client.hget(keys.job(job_id), "source") == CLUSTER_REGISTRY
    assert sorted(m["queue"] for m in producer.sent) == [worker_queue("gpu1"), worker_queue("gpu2")]
    reap_stale_jobs(client, stale_after=120, offline_grace=300, now=time.time() + 5)  # gpu2 offline: skipped
    [entry] = catchups.pending_catchups(client, "gpu2")
    assert (entry["job_id"], entry["source"]) == (job_id, CLUSTER_REGISTRY)

    client.set(keys.worker_alive("gpu2"), time.time())
    sent = []
    [started] = maintenance.reconcile_catchups(client, lambda task, args, ids: sent.append((task, args, ids)) or {},
                                               deadline_seconds=600)
    assert sent == [(TASK_PULL, [started["job_id"], "mine:latest"], ["gpu2"])]
    assert client.hget(keys.job(started["job_id"]), "source") == CLUSTER_REGISTRY
    url, headers = fetched_from(settings(ELDRIC_REGISTRY_URL=DATA), started["job_id"], client)
    assert url == f"{DATA}/v2/library/mine/manifests/latest" and headers["Authorization"] == f"Bearer {SECRET}"
    # An ordinary pull's job still goes to ELDRIC_OLLAMA_REGISTRY.
    ordinary = RegistrySource.for_job(ModelName.parse("mine"), settings(ELDRIC_REGISTRY_URL=DATA), "ollama")
    assert ordinary.base_url == NOWHERE


def test_a_pin_of_a_cluster_model_pulls_it_from_the_data_node(client):
    register(client, "gpu1", online=True)
    pins.save_pin(client, pins.Pin(model="mine:latest", source=CLUSTER_REGISTRY))
    sent = []

    [job] = pins.reconcile_pins(client, lambda task, args, ids: sent.append((task, ids)) or {},
                                deadline_seconds=600, retry_after=600)

    assert sent == [(TASK_PULL, ["gpu1"])]
    assert client.hget(keys.job(job["job_id"]), "source") == CLUSTER_REGISTRY
    assert fetched_from(settings(ELDRIC_REGISTRY_URL=DATA), job["job_id"], client)[0].startswith(f"{DATA}/v2/")


def test_an_agent_without_eldric_registry_url_fails_its_part_naming_the_setting(client, tmp_path):
    register(client, "gpu2", online=True)
    job_id = pull_jobs.start_cluster_pull(client, FakeCelery(), model="mine",
                                          limits=JobLimits(deadline_seconds=3600, retention_seconds=3600, keep_max=9))
    s = AgentSettings.from_env({"ELDRIC_CLUSTER_SECRET": SECRET}, worker_id="gpu2", worker_type="inference",
                               data_dir=tmp_path)
    store = OllamaStore(tmp_path / "models")
    agent = Agent(settings=s, redis=client, store=store, catalog=Catalog(tmp_path / "catalog"))

    with pytest.raises(SourceError) as info:
        job_runner.run_pull_job(agent, job_id, "mine:latest")
    assert not isinstance(info.value, RETRIED_ERRORS)  # a setting, not an outage: no retries
    job_runner.report_failure(agent, job_id, describe_failure(info.value))  # what the task's on_failure does

    record = json.loads(client.hget(keys.job_workers(job_id), "gpu2"))
    assert record["state"] == "failed" and "no ELDRIC_REGISTRY_URL" in record["error"], record
    assert not list((tmp_path / "models").rglob("manifests/*"))  # nothing installed


def test_the_controller_without_a_cluster_registry_refuses_create_with_409_naming_the_setting():
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "CHECK_UPSTREAM": False, "REGISTRY_URL": ""})
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    http = app.test_client()

    resp = http.post("/api/create", json={"model": "mine", "from": "tiny", "system": "x"})

    assert resp.status_code == 409 and "set ELDRIC_REGISTRY_URL" in resp.get_json()["error"], resp.get_json()
    assert http.head("/api/blobs/sha256:" + "0" * 64).status_code == 409


def test_the_pins_api_takes_source_cluster_without_auto_update():
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "CHECK_UPSTREAM": False})
    app.extensions["eldric.redis"] = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    http = app.test_client()

    resp = http.post("/api/v1/pins", json={"model": "mine", "source": "cluster"})
    assert resp.status_code == 201 and resp.get_json()["source"] == "cluster", resp.get_json()
    assert pins.get_pin(app.extensions["eldric.redis"], "mine:latest").source == CLUSTER_REGISTRY
    resp = http.post("/api/v1/pins", json={"model": "mine", "source": "cluster", "auto_update": True})
    assert resp.status_code == 400 and "auto_update" in resp.get_data(as_text=True)

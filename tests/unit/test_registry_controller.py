"""The controller's /api/v1/model-registry: proxying, DELETE refused during distribution, import jobs.

No sockets: fakeredis, and a requests transport that hands each call to the
registry's Flask app in-process.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote, urlsplit

import fakeredis
import pytest
import urllib3
from requests.adapters import HTTPAdapter

from controller import create_app
from eldric.cluster.jobs import store as jobs
from controller.api.model_registry import active_distributions, start_import
from eldric.core.request_errors import BadRequestError
from controller.registry_client import RegistryClient
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.transfer.http import http_session
from registry.server import RegistrySettings, create_registry_app
from testbed.gguf_models import write_llama_gguf

API = "/api/v1/model-registry"


class InProcess(HTTPAdapter):
    """A requests transport that answers from a Flask app's test client (no sockets)."""

    def __init__(self, app) -> None:
        super().__init__()
        self.client = app.test_client()
        self.calls: list[tuple[str, str]] = []

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        body = request.body
        if hasattr(body, "read"):
            body = b"".join(iter(lambda: body.read(1 << 16), b""))
        elif body is not None and not isinstance(body, (bytes, str)):
            body = b"".join(body)
        self.calls.append((request.method, parts.path))
        answer = self.client.open(parts.path, method=request.method, query_string=parts.query,
                                  headers=dict(request.headers), data=body)
        raw = urllib3.HTTPResponse(body=io.BytesIO(answer.data), headers=dict(answer.headers),
                                   status=answer.status_code, preload_content=False)
        return self.build_response(request, raw)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf").read_bytes()


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def transport(tmp_path: Path, redis_client) -> InProcess:
    registry = create_registry_app(tmp_path / "store", RegistrySettings(min_free_bytes=0), background=False)
    registry.extensions["eldric.importer"].redis = redis_client  # import threads are not started
    return InProcess(registry)


@pytest.fixture
def controller(redis_client, transport: InProcess):
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False, "REGISTRY_URL": "http://registry"})
    app.extensions["eldric.redis"] = redis_client
    session = http_session()
    session.mount("http://", transport)
    app.extensions["eldric.registry_client"] = RegistryClient("http://registry", session=session)
    return app.test_client()


def distribute_job(client, model_id: str) -> str:
    return jobs.create_job(client, kind="distribute", model="tiny:v1", targets=["inf-a"], source="registry",
                           deadline_seconds=3600, options={"registry_model_id": model_id})


def finish(client, job_id: str, worker: str = "inf-a") -> None:
    client.hset(keys.job_workers(job_id), worker, json.dumps(dict(jobstate.new_record(0), state="completed")))


def test_active_distributions_match_model_and_state(redis_client) -> None:
    busy, other, done = distribute_job(redis_client, "m1"), distribute_job(redis_client, "m2"), \
        distribute_job(redis_client, "m1")
    finish(redis_client, done)
    jobs.create_job(redis_client, kind="pull", model="m1", targets=["inf-a"], source="ollama", deadline_seconds=60)
    assert active_distributions(redis_client, "m1", stale_after=120, scan=100) == [busy]
    assert active_distributions(redis_client, "m2", stale_after=120, scan=100) == [other]


def test_list_upload_download_through_the_controller(controller, gguf_bytes: bytes) -> None:
    resp = controller.post(f"{API}/upload?name=tiny&filename=tiny.gguf", data=gguf_bytes,
                           content_type="application/octet-stream")
    assert resp.status_code == 201, resp.json
    model = resp.json
    assert resp.headers["Location"] == f"{API}/{model['id']}"
    assert controller.get(API).json["total"] == 1
    ranged = controller.get(f"{API}/{model['id']}/files/tiny.gguf", headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.data == b"GGUF" and ranged.headers["Content-Range"].startswith("bytes 0-3/")
    bad = controller.get(f"{API}/{model['id']}/files/tiny.gguf", headers={"Range": "bytes=99999999-"})
    assert bad.status_code == 416 and bad.json["code"] == 416


def test_delete_refused_while_distributing(controller, redis_client, gguf_bytes: bytes) -> None:
    model = controller.post(f"{API}/upload?name=tiny&filename=tiny.gguf", data=gguf_bytes).json
    job_id = distribute_job(redis_client, model["id"])
    resp = controller.delete(f"{API}/{model['id']}")
    assert resp.status_code == 409 and job_id in resp.json["message"]
    assert controller.get(f"{API}/{model['id']}").status_code == 200
    finish(redis_client, job_id)
    assert controller.delete(f"{API}/{model['id']}").status_code == 204
    assert controller.get(f"{API}/{model['id']}").status_code == 404


def test_validation_happens_before_proxying(controller, transport: InProcess) -> None:
    assert controller.get(f"{API}?limit=0").status_code == 422
    assert controller.post(API, json={"version": "1"}).status_code == 422
    assert transport.calls == []


def test_import_becomes_a_job_for_the_registry(controller, redis_client, transport: InProcess) -> None:
    url = "https://bucket.s3.amazonaws.com/m.gguf?X-Amz-Signature=s3cret"
    resp = controller.post(f"{API}/imports", json={"name": "imp", "url": url, "token": "hf_tok"})
    assert resp.status_code == 202, resp.json
    job = resp.json
    assert job["kind"] == "import" and job["targets"] == ["registry"] and job["source"] == "s3"
    assert job["state"] == "pending" and job["options"]["files"] == [
        {"url": "https://bucket.s3.amazonaws.com/m.gguf", "path": "m.gguf"}]
    assert controller.get(f"{API}/imports/{job['id']}").json["status"] == "queued"
    assert resp.headers["Location"] == f"/api/v1/models/pull-jobs/{job['id']}"
    text = json.dumps(job)
    assert "s3cret" not in text and "hf_tok" not in text
    assert ("POST", f"{API}/imports") in transport.calls
    listed = controller.get("/api/v1/models/pull-jobs?kind=import").json
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


def test_import_refused_by_the_registry_fails_the_job(controller, redis_client, gguf_bytes: bytes) -> None:
    controller.post(f"{API}/upload?name=imp&filename=m.gguf&version=v1", data=gguf_bytes)
    resp = controller.post(f"{API}/imports", json={"name": "imp", "version": "v1", "url": "http://x/m.gguf"})
    job = resp.json
    assert job["state"] == "failed" and "already exists" in job["workers"][0]["error"]


@pytest.mark.parametrize("body", [
    {"name": "x", "url": "ftp://host/m.gguf"},
    {"name": "x", "url": "http://host/m.gguf", "path": "../m.gguf"},
    {"name": "../x", "url": "http://host/m.gguf"},
    {"name": "x"},
])
def test_bad_import_requests_create_no_job(redis_client, body: dict) -> None:
    with pytest.raises(BadRequestError):
        start_import(redis_client, RegistryClient("http://unused"), body, body, deadline_seconds=60)
    assert redis_client.zcard(keys.JOBS) == 0


# Issue 11 (hardening) -----------------------------------------------------------------------------

def test_huge_offsets_are_422_at_the_controller_not_a_500_from_the_registry(controller, transport: InProcess) -> None:
    for query in ("offset=100000000000000000000", "offset=2147483648", "limit=100000000000000000000"):
        resp = controller.get(f"{API}?{query}")
        assert resp.status_code == 422 and resp.json["code"] == 422, (query, resp.json)
    assert controller.get("/api/v1/models/pull-jobs?offset=100000000000000000000").status_code == 422
    assert transport.calls == []


@pytest.mark.parametrize("path, allowed", [
    ("/storage", {"GET", "HEAD", "OPTIONS"}),
    ("/training", {"POST", "OPTIONS"}),
    ("/upload", {"POST", "OPTIONS"}),
    ("/" + "0" * 32 + "/commit", {"POST", "OPTIONS"}),
])
def test_proxy_routes_allow_only_their_own_methods(controller, path: str, allowed: set[str]) -> None:
    resp = controller.options(f"{API}{path}")
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed


def test_file_names_with_url_characters_reach_the_registry_as_names(controller, transport: InProcess) -> None:
    draft = controller.post(API, json={"name": "odd", "format": "other"}).json
    for name in ("50%.bin", "a#b.bin", "what?.bin"):
        resp = controller.put(f"{API}/{draft['id']}/files/{quote(name)}", data=b"x")
        assert resp.status_code == 201 and resp.json["path"] == name, resp.json
    model = controller.post(f"{API}/{draft['id']}/commit").json
    assert sorted(f["path"] for f in model["files"]) == ["50%.bin", "a#b.bin", "what?.bin"]
    assert controller.get(f"{API}/{model['id']}/files/{quote('a#b.bin')}").data == b"x"


@pytest.mark.parametrize("name", ["storage", "upload", "training", "imports"])
def test_a_registry_pin_of_a_route_name_is_404_not_500(controller, name: str) -> None:
    resp = controller.post("/api/v1/pins", json={"model": name, "source": "registry"})
    assert resp.status_code == 404 and f"no model '{name}' in the registry" in resp.json["message"], resp.json


def test_a_registry_pin_resolves_names_and_ids(controller, gguf_bytes: bytes) -> None:
    model = controller.post(f"{API}/upload?name=storage&filename=s.gguf", data=gguf_bytes).json
    for ref in ("storage", "storage:v1", model["id"]):
        resp = controller.post("/api/v1/pins", json={"model": ref, "source": "registry"})
        assert resp.status_code in (200, 201) and resp.json["registry_model_id"] == model["id"], resp.json

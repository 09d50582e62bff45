"""Refuse early (issue 22, finding 5): the controller asks upstream for the manifest once before fanning out.

A typo (`tiny:latestt`, `Tiny:Latest`) is one 404 naming the model and the tags the repository has,
with a hint that names are lowercase, on POST /api/v1/models/pull and on Ollama's /api/pull (through the
official `ollama` client); no job is created. An upstream the controller cannot reach is one 502 naming
ELDRIC_OLLAMA_REGISTRY, credentials masked. Real processes: redis-server, docker-registry as the Ollama
registry, the controller, one agent.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import ollama
import pytest

from eldric.transfer.registry_upstream import HINT_SECONDS, LOOKUP_TIMEOUT
from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import free_port
from tests.support.scripted_server import ScriptedServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(cluster, tiny_model, workdir):
    push_ollama_model(cluster.oci.url, "library/tiny", "v2", gguf_path=write_llama_gguf(workdir / "v2.gguf", name="v2"))
    cluster.start_controller()
    cluster.start_worker("early-w", "inference")
    return cluster


def _job_count(live) -> int:
    return live.api("GET", "/api/v1/models/pull-jobs").json()["total"]


def test_an_unknown_tag_is_one_404_listing_the_tags_and_queues_nothing(live):
    before = _job_count(live)
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny:latestt"})
    assert resp.status_code == 404, resp.text
    body = resp.json()
    assert body["code"] == 404
    assert body["message"] == f"model 'tiny:latestt' not found at {live.oci.url}: its tags there are latest, v2"
    assert _job_count(live) == before


def test_capitals_get_the_lowercase_hint(live):
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "Tiny:Latest"})
    assert resp.status_code == 404, resp.text
    assert resp.json()["message"] == (f"model 'Tiny:Latest' not found at {live.oci.url}: model names are lowercase; "
                                      "did you mean 'tiny:latest'?")
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "Tiny:nosuch"})
    assert resp.status_code == 404
    assert resp.json()["message"] == (f"model 'Tiny:nosuch' not found at {live.oci.url}: model names are lowercase; "
                                      "the tags of tiny there are latest, v2")


def test_an_unknown_model_says_the_registry_has_no_such_model(live):
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "qwen9:0.5b"})
    assert resp.status_code == 404, resp.text
    assert resp.json()["message"] == f"model 'qwen9:0.5b' not found at {live.oci.url}: it has no model qwen9"


def test_the_ollama_client_sees_ollamas_not_found(live):
    client = ollama.Client(host=live.controller_url, trust_env=False)
    before = _job_count(live)
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as err:
            result = client.pull("tiny:latestt", stream=stream)
            if stream:
                list(result)
        assert err.value.status_code == 404
        assert err.value.error == ("pull model manifest: file does not exist: model 'tiny:latestt' not found at "
                                   f"{live.oci.url}: its tags there are latest, v2")
        # On the wire: Ollama's error shape (one JSON object, `error` only), before any NDJSON line.
        raw = live.api("POST", "/api/pull", json={"model": "tiny:latestt", "stream": stream})
        assert raw.status_code == 404 and raw.headers["Content-Type"] == "application/json"
        assert raw.json() == {"error": err.value.error}
    assert _job_count(live) == before


def test_a_distribution_from_ollama_is_checked_too(live):
    resp = live.api("POST", "/api/v1/models/distribute", json={"model": "tiny:v3", "source": {"type": "ollama"}})
    assert resp.status_code == 404, resp.text
    assert "its tags there are latest, v2" in resp.json()["message"]


def test_an_unreachable_upstream_is_one_502_naming_the_setting(live):
    port = free_port()  # nothing listens there
    live.start_controller(ELDRIC_OLLAMA_REGISTRY=f"http://eldric:s3cret@127.0.0.1:{port}")
    before = _job_count(live)
    started = time.monotonic()
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny"})
    took = time.monotonic() - started
    assert resp.status_code == 502, resp.text
    message = resp.json()["message"]
    assert message == (f"cannot ask http://***@127.0.0.1:{port} (ELDRIC_OLLAMA_REGISTRY) for 'tiny:latest': "
                       f"cannot reach 127.0.0.1:{port}: connection refused; nothing was queued")
    assert took < 5
    resp = live.api("POST", "/api/pull", json={"model": "tiny"})
    assert resp.status_code == 502 and resp.json() == {"error": message}
    assert "s3cret" not in resp.text
    assert _job_count(live) == before
    # A pin is desired state: kept while upstream is down, its pulls start at a later reconciliation (not here).
    resp = live.api("POST", "/api/v1/pins", json={"model": "tiny:v2"})
    assert resp.status_code == 201, resp.text
    assert live.api("DELETE", "/api/v1/pins/tiny:v2").status_code == 204


@pytest.fixture(scope="module")
def hanging():
    """An upstream that accepts and never answers `hang`'s manifest, and answers `slowtags` 404 at once but
    never lists its tags: the check must answer within its timeouts, not hold the request for minutes."""
    release = threading.Event()

    def answer(h: BaseHTTPRequestHandler, path: str) -> None:
        if path.startswith("/v2/library/slowtags/manifests/"):
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
            h.send_response(404)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        release.wait(120)  # the manifest of hang, every tag list

    server = ScriptedServer("127.0.0.1", answer)
    yield server
    release.set()
    server.close()


def test_a_hanging_upstream_answers_within_the_checks_timeouts(live, hanging):
    live.start_controller(ELDRIC_OLLAMA_REGISTRY=hanging.url)
    before = _job_count(live)
    started = time.monotonic()
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "slowtags:v1"})
    took = time.monotonic() - started
    assert resp.status_code == 404, resp.text  # the tags never came: the 404 without its hint, in time
    assert resp.json()["message"] == f"model 'slowtags:v1' not found at {hanging.url}"
    assert took < HINT_SECONDS + 2, took
    started = time.monotonic()
    resp = live.api("POST", "/api/pull", json={"model": "hang", "stream": False})
    took = time.monotonic() - started
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"].startswith(f"cannot ask {hanging.url} (ELDRIC_OLLAMA_REGISTRY) for 'hang:latest': ")
    assert "timed out" in resp.json()["error"] and resp.json()["error"].endswith("; nothing was queued")
    assert LOOKUP_TIMEOUT - 1 < took < LOOKUP_TIMEOUT + 3, took
    assert _job_count(live) == before


def test_with_check_upstream_false_the_pull_is_queued_unchecked(live):
    """ELDRIC_CHECK_UPSTREAM=false: a controller without a route to the agents' registry still queues pulls;
    the agent (which reaches its registry) does the work."""
    port = free_port()  # the controller's upstream setting points nowhere, and it is not asked
    live.start_controller(ELDRIC_OLLAMA_REGISTRY=f"http://127.0.0.1:{port}", ELDRIC_CHECK_UPSTREAM="false")
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny:v2", "workers": ["early-w"]})
    assert resp.status_code == 202, resp.text
    assert live.wait_job(resp.json()["id"])["state"] == "completed"
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny:latestt", "workers": ["early-w"]})
    assert resp.status_code == 202, resp.text  # unchecked: the typo fails on the worker instead
    job = live.wait_job(resp.json()["id"])
    assert job["state"] == "failed" and "not found" in job["workers"][0]["error"], job

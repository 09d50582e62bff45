"""A malicious upstream against real agents (issue 11, findings 1 and 5).

`HostileRegistry` is the agents' Ollama mirror and a URL source at once. It answers with what an
attacker would send: a 404 whose JSON error is 200 MB (generated as it is sent), a 64 MiB
manifest, redirects to an internal service (on 127.0.0.2) and to the cloud metadata address, a
redirect loop whose every hop carries 64 MiB, a 1 MiB header line, a token realm on the metadata
address. Each test asserts what an operator sees (the job's error), what reached the internal
service (nothing), and what the attack cost the agent (bytes read, memory).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from celery import Celery

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.jobs.store import create_job
from eldric.cluster.queues import TASK_PULL, worker_queue
from eldric.transfer.errors import HostNotAllowedError
from eldric.transfer.http import upstream_session
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy
from eldric.transfer.urlfetch import FetchOptions
from registry.imports import Importer
from registry.service import RegistryService
from testbed.processes import wait_until
from tests.support.scripted_server import ScriptedServer

pytestmark = pytest.mark.integration

MB = 1 << 20
SECRET = "INTERNAL-SECRET db password hunter2"
ERROR_BODY = 200 * MB
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


class InternalService(ScriptedServer):
    """What must stay out of reach: records every request, answers with a secret in its error."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        super().__init__("127.0.0.2", self.answer)

    def answer(self, h: BaseHTTPRequestHandler, path: str) -> None:
        self.hits.append(path)
        body = json.dumps({"errors": [{"code": "DENIED", "message": SECRET}]}).encode()
        h.send_response(404)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


class HostileRegistry(ScriptedServer):
    """The mirror from hell: routes by model name (`/v2/library/<model>/…`) or file name (`/files/<name>`)."""

    def __init__(self, internal: InternalService) -> None:
        self.internal = internal
        self.sent: dict[str, int] = defaultdict(int)  # bytes of body written per route before the client left
        self.hits: dict[str, int] = defaultdict(int)
        super().__init__("127.0.0.1", self.answer)

    def answer(self, h: BaseHTTPRequestHandler, path: str) -> None:
        route = path.split("/")[3] if path.startswith("/v2/") else path.rsplit("/", 1)[-1]
        self.hits[route] += 1
        if route == "huge-error":
            h.send_response(404)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            self._stream(h, route, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"', ERROR_BODY, b'"}]}')
        elif route == "big-manifest":
            h.send_response(200)
            h.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
            h.end_headers()
            self._stream(h, route, b'{"schemaVersion": 2, "pad": "', 64 * MB, b'"}')
        elif route in ("to-internal", "to-internal.gguf"):
            self._redirect(h, f"{self.internal.url}/v2/library/x/manifests/latest")
        elif route in ("to-metadata", "to-metadata.gguf"):
            self._redirect(h, METADATA)
        elif route == "loop":
            self._redirect(h, path, body=64 * MB)
        elif route == "huge-header":
            h.send_response(200)
            h.send_header("X-Padding", "a" * MB)
            h.end_headers()
        elif route == "realm-metadata":
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Bearer realm="http://169.254.169.254/token",service="x",scope="y"')
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_error(404)

    def _redirect(self, h: BaseHTTPRequestHandler, location: str, body: int = 0) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", str(body))
        h.end_headers()
        self._stream(h, "loop", b"", body)

    def _stream(self, h: BaseHTTPRequestHandler, route: str, head: bytes, size: int, tail: bytes = b"") -> None:
        """`head`, `size` filler bytes, `tail`: generated 1 MiB at a time, never held whole."""
        h.wfile.write(head)
        block = b"A" * MB
        for offset in range(0, size, MB):
            piece = block[: min(MB, size - offset)]
            h.wfile.write(piece)
            self.sent[route] += len(piece)
        h.wfile.write(tail)


@pytest.fixture(scope="module")
def internal():
    server = InternalService()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hostile(internal):
    server = HostileRegistry(internal)
    yield server
    server.close()


@pytest.fixture(scope="module")
def live(cluster, hostile):
    cluster.start_controller()
    # No allow-list: the mirror itself is trusted (it is configured), nothing else internal is.
    cluster.start_worker("prey", "inference", ELDRIC_OLLAMA_REGISTRY=hostile.url, ELDRIC_URL_ALLOWLIST="")
    cluster.start_worker("listed", "inference", ELDRIC_OLLAMA_REGISTRY=hostile.url, ELDRIC_URL_ALLOWLIST="127.0.0.1")
    return cluster


def run(live, body: dict, path: str = "/api/v1/models/pull", timeout: float = 60.0) -> tuple[dict, float, set]:
    """Start a job, follow it to the end: (the one worker's record, seconds it took, states seen).

    A pull is queued straight to the agent, as in the test of a metadata-address name below: the controller
    asks its own upstream (the docker-registry, which has none of these names) before queuing and would
    refuse them with 404, and the agent must bound what a hostile upstream sends whatever reaches it."""
    started = time.monotonic()
    if path == "/api/v1/models/pull":
        return follow(live, enqueue_pull(live, body["model"], *body["workers"]), started, timeout)
    resp = live.api("POST", path, json=body)
    assert resp.status_code == 202, resp.text
    return follow(live, resp.json()["id"], started, timeout)


def enqueue_pull(live, model: str, worker: str) -> str:
    """A pull job of `model` for `worker`, recorded and sent to its queue as the controller would, unchecked."""
    job_id = create_job(live.redis, kind="pull", model=model, targets=[worker], source="ollama", deadline_seconds=120)
    producer = Celery("hostile-test", set_as_current=False)
    producer.conf.update(celery_config(live.redis_server.url))
    producer.send_task(TASK_PULL, args=[job_id, model], queue=worker_queue(worker))
    return job_id


def follow(live, job_id: str, started: float, timeout: float = 60.0) -> tuple[dict, float, set]:
    seen: set[str] = set()

    def finished():
        job = live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()
        seen.update(w["state"] for w in job["workers"])
        return job if job["state"] in ("completed", "failed") else None
    job = wait_until(finished, timeout=timeout, interval=0.1, message=f"job {job_id}\n{live.logs()}")
    (worker,) = job["workers"]
    return worker, time.monotonic() - started, seen


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_a_200_mb_error_body_becomes_a_short_error_and_the_agent_carries_on(live, hostile):
    worker, _took, _seen = run(live, {"model": "huge-error", "workers": ["prey"]})
    assert worker["state"] == "failed"
    error = worker["error"]
    assert error.startswith("model 'huge-error:latest' not found at http://127.0.0.1:") and error.endswith("… [cut]")
    assert len(error) < 600, len(error)
    # The agent stopped reading early: what the server got out is socket buffers, not 200 MB.
    assert hostile.sent["huge-error"] < 32 * MB, hostile.sent["huge-error"]
    assert peak_rss_mb(live.workers["prey"].proc.pid) < 400
    # It still takes jobs.
    again, took, _ = run(live, {"model": "to-metadata", "workers": ["prey"]})
    assert again["state"] == "failed" and took < 10


def test_the_job_record_holds_a_few_kib_at_most(live, hostile):
    job_id = enqueue_pull(live, "huge-error", "prey")
    follow(live, job_id, time.monotonic())
    stored = live.redis.hget(f"eldric:job:{job_id}:workers", "prey")
    assert len(stored) < 4096, len(stored)


def test_a_manifest_over_4_mib_is_refused_after_reading_4_mib(live, hostile):
    worker, _took, seen = run(live, {"model": "big-manifest", "workers": ["prey"]})
    assert worker["state"] == "failed" and "retrying" not in seen
    assert worker["error"] == "the manifest of big-manifest:latest is larger than 4096 KiB"
    assert hostile.sent["big-manifest"] < 20 * MB, hostile.sent["big-manifest"]


def test_a_redirect_to_an_internal_address_is_refused_without_contacting_it(live, hostile, internal):
    worker, _took, seen = run(live, {"model": "to-internal", "workers": ["prey"]})
    assert worker["state"] == "failed" and "retrying" not in seen
    assert "refused to connect to 127.0.0.2: a loopback address" in worker["error"], worker["error"]
    assert SECRET not in json.dumps(worker) and "hunter2" not in json.dumps(worker)
    assert internal.hits == []


def test_a_redirect_to_the_metadata_address_is_refused_at_once(live):
    worker, took, seen = run(live, {"model": "to-metadata", "workers": ["prey"]})
    assert worker["state"] == "failed" and "retrying" not in seen
    assert "refused to connect to 169.254.169.254: a link-local address" in worker["error"]
    assert took < 10  # no connect timeout waited out, no retries


def test_a_token_realm_on_the_metadata_address_is_refused(live):
    worker, took, _seen = run(live, {"model": "realm-metadata", "workers": ["prey"]})
    assert worker["state"] == "failed"
    assert "refused to connect to 169.254.169.254" in worker["error"] and took < 10


def test_a_redirect_loop_ends_after_ten_hops_without_reading_their_bodies(live, hostile):
    before_hits, before_sent = hostile.hits["loop"], hostile.sent["loop"]
    worker, _took, seen = run(live, {"model": "loop", "workers": ["prey"]})
    assert worker["state"] == "failed" and "retrying" not in seen
    assert worker["error"].endswith("Exceeded 10 redirects."), worker["error"]
    assert hostile.hits["loop"] - before_hits == 11
    # Each hop announced 64 MiB; the agent read none of it (at most what socket buffers took).
    assert hostile.sent["loop"] - before_sent < 11 * 16 * MB


def test_a_header_line_of_1_mib_is_refused_with_a_short_error(live):
    worker, _took, _seen = run(live, {"model": "huge-header", "workers": ["prey"]})
    assert worker["state"] == "failed" and len(worker["error"]) < 600, worker["error"]


def test_a_model_name_naming_the_metadata_address_is_refused_by_the_agent_without_connecting(live, hostile):
    """The controller should refuse such a name with 400 first; the agent refuses it again whatever reaches it."""
    started = time.monotonic()
    worker, took, seen = follow(live, enqueue_pull(live, "169.254.169.254/library/x:latest", "prey"), started)
    assert worker["state"] == "failed" and "retrying" not in seen
    assert worker["error"] == (f"registry 169.254.169.254 is not allowed: model names may name "
                               f"{hostile.url.removeprefix('http://')}, hf.co, "
                               "registry.ollama.ai (ELDRIC_ALLOWED_REGISTRIES adds hosts)")
    assert took < 10


def test_the_url_source_refuses_loopback_unless_the_allow_list_names_it(live, hostile):
    url = f"{hostile.url}/files/to-internal.gguf"
    worker, _took, _seen = run(live, {"model": "web", "workers": ["prey"], "source": {"type": "url", "url": url}},
                               path="/api/v1/models/distribute")
    assert worker["state"] == "failed"
    assert "refused to connect to 127.0.0.1: a loopback address; ELDRIC_URL_ALLOWLIST may allow it" in worker["error"]


def test_the_url_source_checks_every_redirect_hop(live, hostile, internal):
    for name, refused in (("to-internal.gguf", "127.0.0.2: a loopback address"),
                          ("to-metadata.gguf", "169.254.169.254: a link-local address")):
        body = {"model": "web", "workers": ["listed"], "source": {"type": "url", "url": f"{hostile.url}/files/{name}"}}
        worker, took, _seen = run(live, body, path="/api/v1/models/distribute")
        assert worker["state"] == "failed" and f"refused to connect to {refused}" in worker["error"], worker
        assert took < 10
    assert internal.hits == []


def test_a_name_resolving_to_loopback_is_refused_after_dns(hostile):
    port = hostile.url.rsplit(":", 1)[1]
    with pytest.raises(HostNotAllowedError, match=r"refused to connect to localhost \((127\.0\.0\.1|::1)\)"):
        upstream_session(PUBLIC_ONLY).get(f"http://localhost:{port}/files/x", stream=True, timeout=5)


def test_url_imports_of_the_registry_follow_the_same_policy(tmp_path, hostile, internal):
    def run_import(policy: AddressPolicy | None, url: str) -> dict:
        options = FetchOptions() if policy is None else FetchOptions(url_policy=policy)
        importer = Importer(RegistryService(tmp_path / f"reg-{time.monotonic_ns()}", min_free_bytes=0), workers=1,
                            fetch_options=options).start()
        job = importer.submit({"name": "web", "url": url})
        return wait_until(lambda: (s := importer.status(job["id"]))["state"] in ("completed", "failed") and s,
                          timeout=30, message="the import")

    default = run_import(None, f"{hostile.url}/files/to-internal.gguf")
    assert default["state"] == "failed" and "refused to connect to 127.0.0.1: a loopback address" in default["error"]
    listed = run_import(AddressPolicy.parse(["127.0.0.1"]), f"{hostile.url}/files/to-internal.gguf")
    assert listed["state"] == "failed" and "refused to connect to 127.0.0.2" in listed["error"]
    started = time.monotonic()
    metadata = run_import(None, "http://169.254.169.254/latest/x.gguf")
    assert metadata["state"] == "failed" and "169.254.169.254: a link-local address" in metadata["error"]
    assert time.monotonic() - started < 10
    assert internal.hits == [] and SECRET not in json.dumps([default, listed, metadata])

"""No secret in any failure's text (issue 21, finding 1).

A real cluster (redis-server, the data node's registry, a controller, two agents) is set up as the
README says: the agents reach the data node as `ELDRIC_OLLAMA_REGISTRY=http://eldric:<secret>@…`, the
same secret is `ELDRIC_CLUSTER_SECRET` everywhere, and a URL source carries a signed query string.
Then every failure path we know is driven: a missing model (refused by the controller, which asks
upstream first, and failed by an agent it is sent to unchecked; REST pull, Ollama `/api/pull` streamed
and not), https against a plain-http registry, an upstream redirect to the metadata address, a token
realm carrying a signature, a URL distribution that is refused and one whose host is down, and the
data node itself unreachable. The sweep reads everything a user or operator can see afterwards:
every API answer, every Redis key (except the one place the URL is kept on purpose,
`eldric:job:<id>:secrets`), `/metrics`, and every service's log. Neither secret may appear anywhere.
"""

from __future__ import annotations

import json
import secrets
from http.server import BaseHTTPRequestHandler

import pytest
from celery import Celery

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.jobs.store import create_job
from eldric.cluster.queues import TASK_PULL, worker_queue
from testbed.processes import REPO_ROOT, Service, eldric, free_port, session, wait_until
from tests.support.scripted_server import ScriptedServer

pytestmark = pytest.mark.integration

SECRET = "plantedsecret" + secrets.token_hex(6)  # the cluster secret, also the mirror URL's password
SIGNATURE = "plantedsig" + secrets.token_hex(6)  # a signed URL's query string, a token realm's too
METADATA = "http://169.254.169.254/latest/meta-data/"


def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    h.send_response(status)
    for key, value in {"Content-Length": str(len(body)), **headers}.items():
        h.send_header(key, value)
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


# A manifest whose one layer upstream does not have: the controller's check finds the model, the agents then fail.
_LAYER = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "ab" * 32, "size": 4}
PRESENT = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                      "config": {**_LAYER, "mediaType": "application/vnd.docker.container.image.v1+json"},
                      "layers": [_LAYER]}).encode()


def _stand_in_upstream(h: BaseHTTPRequestHandler, path: str) -> None:
    """The data node's upstream: 404 for every model, except `present` (a manifest without its blobs), a
    redirect to the metadata address and a token realm whose URL carries a signature."""
    if path.startswith("/v2/library/present/manifests/"):
        _answer(h, 200, PRESENT, **{"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    elif "/library/redirect/" in path:
        _answer(h, 302, b"", Location=f"{METADATA}?X-Amz-Signature={SIGNATURE}")
    elif "/library/badrealm/" in path:
        _answer(h, 401, b"", **{"WWW-Authenticate": f'Bearer realm="ftp://tokens.example/token?sig={SIGNATURE}",'
                                                    'service="x",scope="y"'})
    elif path == "/v2/":
        _answer(h, 200, b"{}")
    else:
        _answer(h, 404, json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode())


class Seen:
    """Everything the test was answered, to sweep at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text


@pytest.fixture(scope="module")
def upstream():
    server = ScriptedServer("127.0.0.1", _stand_in_upstream, methods=("GET", "HEAD"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(cluster, upstream):
    """The data node (with the secret, mirroring the stand-in), a controller and two agents: `plain`
    reaches it as the README says, `tls` has an https:// mirror URL, with the secret, of a plain-http registry."""
    port = free_port()
    with_credentials = upstream.url.replace("://", f"://mirror:{SECRET}@")  # an upstream behind Basic auth
    env = cluster.env(ELDRIC_MIRROR_UPSTREAM=with_credentials, ELDRIC_CLUSTER_SECRET=SECRET)
    node = Service("data-node", eldric("registry", "--port", str(port), "--storage", str(cluster.root / "data"),
                                       "--min-free", "0"), cluster.root, env=env, cwd=REPO_ROOT).start()
    cluster.services.append(node)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=30,
               message=f"data node\n{node.log_tail()}")
    common = {"ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_REGISTRY_URL": url}
    cluster.start_controller(ELDRIC_OLLAMA_REGISTRY=f"http://eldric:{SECRET}@127.0.0.1:{port}", **common)
    cluster.start_worker("plain", ELDRIC_OLLAMA_REGISTRY=f"http://eldric:{SECRET}@127.0.0.1:{port}", **common)
    plain_http = cluster.oci.url.partition("://")[2]  # docker-registry: answers a TLS hello at once
    cluster.start_worker("tls", ELDRIC_OLLAMA_REGISTRY=f"https://eldric:{SECRET}@{plain_http}", **common)
    return {"url": url, "node": node}


def _pull(cluster, seen: Seen, model: str, worker: str) -> dict:
    resp = cluster.api("POST", "/api/v1/models/pull", json={"model": model, "workers": [worker]})
    seen.add(f"POST pull {model}", resp.text)
    assert resp.status_code == 202, resp.text
    return _job(cluster, seen, resp.json()["id"], f"job {model} on {worker}")


def _job(cluster, seen: Seen, job_id: str, what: str) -> dict:
    job = cluster.wait_job(job_id)
    seen.add(what, json.dumps(job))
    return job


def _refused(cluster, seen: Seen, model: str, status: int) -> str:
    """A pull the controller refuses before queuing (it asks upstream first, issue 22): the answer's message."""
    resp = cluster.api("POST", "/api/v1/models/pull", json={"model": model, "workers": ["plain"]})
    seen.add(f"POST pull {model}", resp.text)
    assert resp.status_code == status, resp.text
    return resp.json()["message"]


def _enqueue_pull(cluster, model: str, worker: str) -> str:
    """A pull sent straight to an agent's queue, as the controller would send it, without the controller's check."""
    job_id = create_job(cluster.redis, kind="pull", model=model, targets=[worker], source="ollama", deadline_seconds=120)
    producer = Celery("sweep-test", set_as_current=False)
    producer.conf.update(celery_config(cluster.redis_server.url))
    producer.send_task(TASK_PULL, args=[job_id, model], queue=worker_queue(worker))
    return job_id


def _distribute(cluster, seen: Seen, url: str) -> dict:
    resp = cluster.api("POST", "/api/v1/models/distribute", json={
        "model": "web", "workers": ["plain"], "source": {"type": "url", "url": url, "token": SIGNATURE}})
    seen.add(f"POST distribute {url}", resp.text)
    assert resp.status_code == 202, resp.text
    job = cluster.wait_job(resp.json()["id"])
    seen.add(f"distribute job from {url}", json.dumps(job))
    return job


def _redis_texts(cluster) -> list[tuple[str, str]]:
    """Every key's value (the job's secrets key excepted: that is where the URL is kept on purpose)."""
    r, found = cluster.redis, []
    for key in r.scan_iter("*", count=1000):
        if key.startswith("eldric:job:") and key.endswith(":secrets"):
            continue
        read = {"string": r.get, "hash": r.hgetall, "set": r.smembers, "stream": r.xrange,
                "zset": lambda k: r.zrange(k, 0, -1, withscores=True), "list": lambda k: r.lrange(k, 0, -1)}
        value = read.get(r.type(key), lambda k: "")(key)
        found.append((f"redis {key}", f"{key} {value!r}"))
    return found


def test_no_failure_path_shows_the_secret(cluster, site, upstream) -> None:
    seen, http, problems = Seen(), cluster.http, []
    auth = {"Authorization": f"Bearer {SECRET}"}

    assert "not found at http://***@127.0.0.1:" in _refused(cluster, seen, "nosuch", 404)
    missing = _pull(cluster, seen, "present", "plain")  # the manifest is there, its blobs are not
    assert missing["state"] == "failed"
    assert "not found" in missing["workers"][0]["error"], missing
    tls = _pull(cluster, seen, "present", "tls")
    assert tls["state"] == "failed" and "speaks plain http, not https" in tls["workers"][0]["error"], tls
    assert "set ELDRIC_OLLAMA_REGISTRY to http://" in tls["workers"][0]["error"]
    agent_missing = _job(cluster, seen, _enqueue_pull(cluster, "nosuch", "plain"), "job nosuch, unchecked")
    assert "not found at http://***@" in agent_missing["workers"][0]["error"], agent_missing

    resp = cluster.api("POST", "/api/pull", json={"model": "nosuch2", "stream": False})
    seen.add("ollama pull, not streamed", resp.text)
    assert resp.status_code == 404 and "not found" in resp.json()["error"], resp.text
    resp = cluster.api("POST", "/api/pull", json={"model": "present", "stream": False})
    seen.add("ollama pull of a model its workers fail, not streamed", resp.text)
    assert resp.status_code == 502 and "not found" in resp.json()["error"], resp.text
    resp = cluster.api("POST", "/api/pull", json={"model": "present", "stream": True})
    seen.add("ollama pull, streamed", resp.text)
    assert '"error"' in resp.text, resp.text

    # The data node's pull-through: a redirect to the metadata address and a token realm with a signature.
    for repo in ("redirect", "badrealm"):
        answer = http.get(f"{site['url']}/v2/library/{repo}/manifests/latest", headers=auth, timeout=30)
        seen.add(f"data node /v2/ {repo}", answer.text)
        if answer.status_code != 502 or answer.json()["errors"][0]["code"] != "UPSTREAM_UNAVAILABLE":
            problems.append(f"/v2/library/{repo}: {answer.status_code} {answer.text}")  # 502 UPSTREAM_UNAVAILABLE
        assert "UPSTREAM_UNAVAILABLE" in _refused(cluster, seen, repo, 502)  # the controller asks the data node first
        job = _job(cluster, seen, _enqueue_pull(cluster, repo, "plain"), f"job {repo}, unchecked")
        assert job["state"] == "failed", job

    refused = _distribute(cluster, seen, f"{site['url']}/files/web.gguf?X-Amz-Signature={SIGNATURE}")
    assert refused["state"] == "failed", refused
    down = _distribute(cluster, seen, f"http://127.0.0.1:{free_port()}/web.gguf?X-Amz-Signature={SIGNATURE}")
    assert down["state"] == "failed" and "cannot reach" in down["workers"][0]["error"], down

    mirror = http.get(f"{site['url']}/api/v1/model-registry/mirror", headers=auth, timeout=30)
    seen.add("the mirror's listing", mirror.text)
    if mirror.json()["upstream"] != upstream.url.replace("://", "://***@"):
        problems.append(f"the mirror's upstream is shown as {mirror.json()['upstream']}")

    site["node"].stop()  # the data node unreachable: the controller says so; an agent retries, then fails
    assert "cannot reach 127.0.0.1:" in _refused(cluster, seen, "nosuch4", 502)
    gone = _job(cluster, seen, _enqueue_pull(cluster, "nosuch4", "plain"), "job nosuch4, unchecked")
    assert gone["state"] == "failed" and "cannot reach" in gone["workers"][0]["error"], gone

    for path in ("/api/v1/models/pull-jobs?limit=100", "/api/v1/workers", "/api/v1/workers/plain",
                 "/api/v1/workers/tls", "/api/v1/models", "/metrics"):
        seen.add(f"GET {path}", cluster.api("GET", path).text)
    shown = cluster.api("GET", "/api/v1/workers/plain").json()["upstream_registry"]
    if shown != f"http://***@{site['url'][7:]}":
        problems.append(f"the worker's upstream registry is shown as {shown}")
    first = missing["id"]
    events = http.get(f"{cluster.controller_url}/api/v1/models/pull-jobs/{first}/events", timeout=30)
    seen.add("event stream", events.text)

    texts = seen.texts + _redis_texts(cluster) + [
        (f"log of {svc.name}", svc.log_path.read_text(errors="replace")) for svc in cluster.services]
    leaks = [(where, text[max(0, text.find(s) - 160):text.find(s) + 60])
             for where, text in texts for s in (SECRET, SIGNATURE) if s in text]
    problems += [f"secret shown in {where}: …{excerpt}…" for where, excerpt in leaks]
    assert not problems, "\n".join(problems)

"""The data node as the cluster's registry mirror, over real processes: redis-server, docker-registry as
upstream behind a byte-counting proxy, `eldric registry` (the data node, /v2/ with the cluster secret),
the controller, agents pulling through the data node (ELDRIC_OLLAMA_REGISTRY), beat's update check, and
skopeo as an independent OCI client."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_blob, push_ollama_model
from testbed.processes import REPO_ROOT, Service, eldric, free_port, session, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")]

SECRET = "mirror-secret"
V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@pytest.fixture(scope="module")
def upstream_models(oci, workdir) -> dict:
    """library/tiny in Ollama's exact layout, and library/ocitiny as an OCI-typed manifest of Ollama layers."""
    tiny = push_ollama_model(oci.url, "library/tiny", "latest",
                             gguf_path=write_llama_gguf(workdir / "tiny.gguf", name="tiny", n_layers=3))
    layer = (workdir / "tiny.gguf").read_bytes()
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    for blob in (layer, config):
        push_blob(oci.url, "library/ocitiny", blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": sha(layer),
                                       "size": len(layer)}]}).encode()
    resp = session().put(f"{oci.url}/v2/library/ocitiny/manifests/latest", data=manifest,
                         headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert resp.status_code == 201, resp.text
    return {"tiny": tiny, "ocitiny": {"manifest_digest": sha(manifest), "blobs": [sha(config), sha(layer)]}}


@pytest.fixture(scope="module")
def proxy(oci):
    p = ThrottlingProxy(oci.url, 512 << 20)  # fast: it is here to count the bytes upstream sends
    yield p
    p.close()


@pytest.fixture(scope="module")
def data_node(cluster, proxy, upstream_models):
    """The data node's registry with the proxy as its upstream, then a controller and two agents using it."""
    port = free_port()
    env = cluster.env(ELDRIC_MIRROR_UPSTREAM=proxy.url, ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_MIRROR_TAG_TTL="2s")
    svc = Service("data-registry", eldric("registry", "--port", str(port), "--storage", str(cluster.root / "data"),
                                          "--min-free", "0"), cluster.root, env=env, cwd=REPO_ROOT).start()
    cluster.services.append(svc)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", headers={"Authorization": f"Bearer {SECRET}"},
                                     timeout=2).ok, timeout=30, message=f"data node registry\n{svc.log_tail()}")
    mirror = f"http://eldric:{SECRET}@127.0.0.1:{port}"  # agents send URL credentials as Basic auth
    agent_env = {"ELDRIC_OLLAMA_REGISTRY": mirror, "ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_REGISTRY_URL": url}
    cluster.start_controller(**agent_env)
    cluster.start_worker("mir-a", **agent_env)
    cluster.start_worker("mir-b", **agent_env)
    return {"url": url, "port": port, "service": svc, "env": agent_env}


def authed() -> dict:
    return {"Authorization": f"Bearer {SECRET}"}


def pull_to(cluster, model: str, worker: str) -> dict:
    resp = cluster.api("POST", "/api/v1/models/pull", json={"model": model, "workers": [worker]})
    assert resp.status_code == 202, resp.text
    return cluster.wait_job(resp.json()["id"])


def test_agents_pull_through_the_data_node_and_the_second_pull_costs_no_upstream_bytes(cluster, data_node, proxy,
                                                                                        upstream_models) -> None:
    tiny = upstream_models["tiny"]
    proxy.reset_counters()
    first = pull_to(cluster, "tiny", "mir-a")
    assert first["state"] == "completed", cluster.logs()
    model_size = sum(layer["size"] for layer in tiny["manifest"]["layers"]) + len(json.dumps(tiny["config"]))
    assert proxy.bytes_served >= model_size * 0.9  # fetched from upstream once
    store = cluster.store("mir-a")
    for digest in [tiny["config_digest"], *tiny["layers"].values()]:
        assert file_digest(store / "blobs" / digest.replace(":", "-")) == digest
    proxy.reset_counters()
    second = pull_to(cluster, "tiny", "mir-b")
    assert second["state"] == "completed", cluster.logs()
    assert proxy.bytes_served == 0 and not [p for p, _ in proxy.requests if "/blobs/" in p]
    assert file_digest(cluster.store("mir-b") / "blobs" / tiny["layers"][
        "application/vnd.ollama.image.model"].replace(":", "-")) == tiny["layers"]["application/vnd.ollama.image.model"]
    listing = cluster.api("GET", "/api/v1/model-registry/mirror").json()
    (entry,) = [m for m in listing["models"] if m["name"] == "library/tiny:latest"]
    assert entry["complete"] and entry["digest"] == tiny["manifest_digest"] and entry["last_used"]


def test_skopeo_inspects_and_copies_through_the_data_node(data_node, upstream_models, tmp_path: Path) -> None:
    base = f"docker://127.0.0.1:{data_node['port']}"
    creds = ["--creds", f"eldric:{SECRET}"]
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *creds, f"{base}/library/tiny:latest"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # skopeo lists the OCI type first and gets the OCI form of Ollama's manifest: the same config and layers.
    # (skopeo 1.9 refuses Ollama layer types inside a Docker schema-2 manifest, from docker-registry just the same.)
    oci_form = json.loads(out.stdout)
    assert oci_form["mediaType"] == OCI_MANIFEST
    docker_form = session().get(f"{data_node['url']}/v2/library/tiny/manifests/latest",
                                headers={**authed(), "Accept": MANIFEST_V2})
    assert sha(docker_form.content) == upstream_models["tiny"]["manifest_digest"]  # Ollama's client: upstream's bytes
    upstream_doc = docker_form.json()
    assert oci_form["config"]["digest"] == upstream_doc["config"]["digest"]
    assert [layer["digest"] for layer in oci_form["layers"]] == [layer["digest"] for layer in upstream_doc["layers"]]
    # skopeo copy of an Ollama model as the data node serves it (from the upstream mirror), every digest checked
    layout = tmp_path / "layout"
    out = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"eldric:{SECRET}",
                          f"{base}/library/tiny:latest", f"oci:{layout}:x"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == "sha256:" + hashlib.sha256(out_bytes := (
        layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes()).hexdigest()
    assert json.loads(out_bytes)["layers"] == oci_form["layers"]
    for digest in [upstream_doc["config"]["digest"], *(layer["digest"] for layer in upstream_doc["layers"])]:
        assert file_digest(layout / "blobs" / "sha256" / digest.split(":")[1]) == digest
    # an OCI-typed model pushed upstream copies as it is
    layout = tmp_path / "layout-oci"
    out = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"eldric:{SECRET}",
                          f"{base}/library/ocitiny:latest", f"oci:{layout}:x"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == upstream_models["ocitiny"]["manifest_digest"]
    for digest in upstream_models["ocitiny"]["blobs"]:
        assert file_digest(layout / "blobs" / "sha256" / digest.split(":")[1]) == digest
    # and back in through the push API, as another repository
    out = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"eldric:{SECRET}",
                          f"oci:{layout}:x", f"{base}/acme/copied:v1"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = session().get(f"{data_node['url']}/v2/acme/copied/manifests/v1", headers={**authed(), "Accept": OCI_MANIFEST})
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == upstream_models["ocitiny"]["manifest_digest"]


def test_v2_needs_the_secret(data_node) -> None:
    http = session()
    refused = http.get(f"{data_node['url']}/v2/library/tiny/manifests/latest", timeout=10)
    assert refused.status_code == 401 and refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://127.0.0.1:{data_node['port']}/library/tiny:latest"], capture_output=True, timeout=60)
    assert out.returncode != 0
    assert http.get(f"{data_node['url']}/v2/", auth=("anyone", SECRET), timeout=10).status_code == 200


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v2/library/tiny/blobs/sha256:nothex", 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/tiny/manifests/-x", 400, "MANIFEST_INVALID"),
    ("GET", "/v2/library/never-there/manifests/latest", 404, "NAME_UNKNOWN"),
    ("PUT", "/v2/library/tiny/manifests/broken", 400, "MANIFEST_INVALID"),
    ("PATCH", "/v2/library/tiny/blobs/uploads/" + "0" * 32, 404, "BLOB_UPLOAD_UNKNOWN"),
])
def test_bad_input_gets_oci_json_errors(data_node, method: str, path: str, status: int, code: str) -> None:
    resp = session().request(method, data_node["url"] + path, headers=authed(), data=b"{not json", timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["errors"][0]["code"] == code


def test_a_push_with_a_missing_blob_is_refused(data_node) -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": V2, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "e" * 64, "size": 2},
        "layers": []}).encode()
    resp = session().put(f"{data_node['url']}/v2/acme/half/manifests/v1", data=manifest,
                         headers={**authed(), "Content-Type": V2}, timeout=30)
    assert resp.status_code == 400 and resp.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_beat_reports_an_upstream_update_without_pulling(cluster, data_node, oci, proxy, upstream_models,
                                                         workdir) -> None:
    pull_to(cluster, "tiny", "mir-a")  # cached (first test) or now
    moved = push_ollama_model(oci.url, "library/tiny", "latest",
                              gguf_path=write_llama_gguf(workdir / "tiny2.gguf", name="tiny", n_layers=4))
    proxy.reset_counters()
    beat = Service("mirror-beat", eldric("beat", "--loglevel", "INFO"), cluster.root, env=cluster.env(
        ELDRIC_MIRROR_UPDATE_SECONDS="1", ELDRIC_REGISTRY_URL=data_node["url"], ELDRIC_INVENTORY_SYNC_SECONDS="0",
        ELDRIC_REAP_SECONDS="0", ELDRIC_PIN_RECONCILE_SECONDS="0", ELDRIC_PIN_UPDATE_SECONDS="0",
        ELDRIC_PARTIAL_CLEAN_SECONDS="0", ELDRIC_BEAT_LOCK_SECONDS="4"), cwd=REPO_ROOT).start()
    cluster.services.append(beat)
    try:
        def reported():
            text = cluster.http.get(f"{cluster.controller_url}/metrics", timeout=10).text
            return "eldric_mirror_updates_available 1.0" in text
        wait_until(reported, timeout=60, message=f"the update to show in /metrics\n{beat.log_tail()}\n{cluster.logs()}")
    finally:
        beat.stop()
    assert not [p for p, _ in proxy.requests if "/blobs/" in p]  # a check never pulls
    listing = cluster.api("GET", "/api/v1/model-registry/mirror").json()
    (entry,) = [m for m in listing["models"] if m["name"] == "library/tiny:latest"]
    assert entry["update_available"] and entry["upstream_digest"] == moved["manifest_digest"]
    assert entry["digest"] == upstream_models["tiny"]["manifest_digest"]
    models = cluster.api("GET", "/api/v1/models").json()["models"]
    flagged = {m["name"]: m.get("mirror_update") for m in models if m.get("mirror_update")}
    assert any(v["upstream_digest"] == moved["manifest_digest"] for v in flagged.values()), models


def test_the_push_api_takes_what_docker_registry_takes(data_node, workdir, monkeypatch) -> None:
    """The helper the tests push to docker-registry with, then a chunked final PUT (no Content-Length)."""
    http = session()
    http.headers.update(authed())
    import testbed.oci_registry as oci_support
    monkeypatch.setattr(oci_support, "_session", lambda: http)  # the same helper, with the data node's secret
    pushed = push_ollama_model(data_node["url"], "acme/pushed", "v1",
                               gguf_path=write_llama_gguf(workdir / "pushed.gguf", name="pushed", n_layers=2))
    got = http.get(f"{data_node['url']}/v2/acme/pushed/manifests/v1", headers={"Accept": V2}, timeout=30)
    assert got.status_code == 200 and got.content == pushed["manifest_bytes"]
    data = b"streamed in chunks " * 1000
    loc = http.post(f"{data_node['url']}/v2/acme/pushed/blobs/uploads/", timeout=30).headers["Location"]
    first = http.patch(data_node["url"] + loc, data=iter([data[:5000], data[5000:9000]]), timeout=30)
    assert first.status_code == 202 and first.headers["Range"] == "0-8999"
    done = http.put(f"{data_node['url']}{loc}?digest={sha(data)}", data=iter([data[9000:]]), timeout=30)
    assert done.status_code == 201, done.text
    assert http.get(f"{data_node['url']}/v2/acme/pushed/blobs/{sha(data)}", timeout=30).content == data


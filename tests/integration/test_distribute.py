"""Distribution over real processes: registry -> workers, worker -> worker, URL, shared storage (NFS)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.support.fake_backends import FakeOllama
from tests.support.file_server import FileServer
from testbed.gguf_models import write_llama_gguf
from testbed.processes import Service, eldric, free_port, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SECRET = "dist-secret"


@pytest.fixture(scope="module")
def ollama_server(workdir):
    with FakeOllama(workdir / "fake-ollama") as server:
        yield server


@pytest.fixture(scope="module")
def live(cluster, workdir, ollama_server):
    storage = workdir / "registry-storage"
    port = free_port()
    reg = Service("registry", eldric("registry", "--port", str(port), "--storage", str(storage)), workdir,
                  env=cluster.env(ELDRIC_CLUSTER_SECRET=SECRET), cwd=REPO).start()
    cluster.services.append(reg)
    cluster.registry_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: cluster.http.get(f"{cluster.registry_url}/healthz", timeout=2).ok, message="registry")
    cluster.registry_storage = storage
    cluster.start_controller(ELDRIC_REGISTRY_URL=cluster.registry_url, ELDRIC_CLUSTER_SECRET=SECRET)
    wrong = workdir / "not-the-export"
    wrong.mkdir()
    (wrong / ".eldric-fingerprint").write_text("someone-else\n")
    backends = {"ELDRIC_OLLAMA_URL": ollama_server.url, "ELDRIC_BACKENDS": "ollama,llamacpp"}
    for name, mounts in (("inf-a", ""), ("inf-b", ""), ("inf-nfs", str(storage)), ("inf-wrong", str(wrong))):
        cluster.start_worker(name, "inference", ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_SHARED_MOUNTS=mounts,
                             **backends)
    cluster.start_worker("data-a", "data", ELDRIC_CLUSTER_SECRET=SECRET)
    return cluster


@pytest.fixture(scope="module")
def registered(live, workdir) -> dict:
    gguf = write_llama_gguf(workdir / "house.gguf", name="house", width=96)
    with open(gguf, "rb") as f:
        resp = live.api("POST", "/api/v1/model-registry/upload", params={"name": "house", "filename": "house.gguf"},
                        data=f)
    assert resp.status_code == 201, resp.text
    return {**resp.json(), "bytes": gguf.read_bytes()}


def _catalog_file(live, worker: str, model: dict) -> bytes:
    sha = model["files"][0]["sha256"].replace(":", "-")
    return (live.store(worker) / "blobs" / sha).read_bytes()


def test_registry_model_reaches_two_workers_and_their_backends(live, registered, ollama_server):
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": registered["id"], "source": {"type": "registry"}, "workers": ["inf-a", "inf-b"]}).json()
    assert job["kind"] == "distribute" and job["source"] == "registry", job
    final = live.wait_job(job["id"])
    assert final["state"] == "completed", json.dumps(final, indent=1)
    ref = f"house:{registered['version']}"
    for w in ("inf-a", "inf-b"):
        assert _catalog_file(live, w, registered) == registered["bytes"]
        installed = live.root / "nodes" / w / "backends" / "llamacpp"
        assert [p.read_bytes() for p in installed.rglob("*.gguf")] == [registered["bytes"]]
        assert (live.root / "nodes" / w / "backends" / "ollama").glob("*/Modelfile")
        # One copy per node: llama.cpp's file is the blob store's file (same inode), and the progress says so.
        [gguf] = installed.rglob("*.gguf")
        blob = live.store(w) / "blobs" / registered["files"][0]["sha256"].replace(":", "-")
        assert gguf.stat().st_ino == blob.stat().st_ino
        record = next(r for r in final["workers"] if r["worker"] == w)
        assert "llamacpp: hard-linked, no copy" in record["placement"], record
        # an upload through Ollama's API crossed no filesystem: the placement says what it was
        assert re.search(r"ollama: (copied \d+\.\d\d GiB \(uploaded through Ollama's API, which keeps its own "
                         r"copy\)|already in place|installed),", record["placement"]), record["placement"]
        assert "other filesystem" not in record["placement"]
    uploads = [r["placement"] for r in final["workers"] if "uploaded through Ollama's API" in r["placement"]]
    assert uploads, final["workers"]  # one node uploaded at least (both may, when they ask at the same moment)
    # Ollama got the GGUF once (same digest for both nodes) and the model was created through its API.
    assert any(c.get("model", "").startswith("house") for c in ollama_server.creates)
    assert ref in ollama_server.models or f"{ref}" in str(ollama_server.models.keys())
    models = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
    assert models[ref]["workers"] == ["inf-a", "inf-b"] and models[ref]["format"] == "gguf"
    details = live.api("GET", "/api/v1/workers/inf-a").json()["backend_details"]
    assert details["ollama"]["url"] == ollama_server.url
    assert details["llamacpp"]["models_dir"].endswith("backends/llamacpp")
    worker_models = live.api("GET", "/api/v1/workers/inf-a/models").json()["models"]
    held = next(m for m in worker_models if m["name"] == ref)  # in ELDRIC_BACKENDS order
    assert held["backends"] == ["ollama", "llamacpp"] and held["backend"] == "ollama,llamacpp", held
    listed = live.api("GET", "/api/v1/models/pull-jobs", params={"kind": "distribute"}).json()["jobs"]
    assert listed[0]["id"] == job["id"]


def test_show_and_tags_describe_a_file_model(live, registered):
    ref = f"house:{registered['version']}"
    resp = live.api("POST", "/api/v1/models/show", json={"model": ref})
    assert resp.status_code == 200, resp.text
    shown = resp.json()
    assert shown["details"]["family"] == "llama" and shown["details"]["format"] == "gguf"
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["general.parameter_count"] > 0
    assert "{{" in shown["template"] and "<|im_end|>" in shown["parameters"], shown  # ChatML family
    assert shown["modelfile"].count("FROM ") == 1
    tags = {m["name"]: m for m in live.api("GET", "/api/tags").json()["models"]}
    assert tags[ref]["details"]["family"] == "llama" and tags[ref]["details"]["format"] == "gguf"
    assert tags[ref]["details"]["parameter_size"]


def test_shared_storage_with_matching_fingerprint_moves_no_bytes(live, registered):
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": registered["id"], "source": {"type": "registry"}, "workers": ["inf-nfs", "inf-wrong"]}).json()
    final = live.wait_job(job["id"])
    by = {w["worker"]: w for w in final["workers"]}
    assert by["inf-nfs"]["state"] == "completed" and by["inf-nfs"]["status"] == "shared", by["inf-nfs"]
    assert by["inf-nfs"].get("transferred") == 0
    assert not list((live.store("inf-nfs") / "blobs").glob("sha256-*")), "nothing copied onto the NFS worker"
    [installed] = (live.root / "nodes" / "inf-nfs" / "backends" / "llamacpp").rglob("*.gguf")
    assert installed.is_symlink() and live.registry_storage in installed.resolve().parents
    # A mount whose fingerprint differs is not the registry's storage: that worker copies.
    assert by["inf-wrong"]["state"] == "completed" and by["inf-wrong"]["status"] != "shared"
    assert _catalog_file(live, "inf-wrong", registered) == registered["bytes"]


def test_worker_to_worker_copy_needs_and_uses_the_cluster_secret(live, registered, tiny_model):
    pull = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["inf-a"]}).json()
    assert live.wait_job(pull["id"])["state"] == "completed"
    inf_a = live.api("GET", "/api/v1/workers/inf-a").json()
    digest = tiny_model["manifest"]["layers"][0]["digest"]
    assert live.http.get(f"{inf_a['address']}/blobs/{digest}", timeout=5).status_code == 401
    ranged = live.http.get(f"{inf_a['address']}/blobs/{digest}", headers={
        "Authorization": f"Bearer {SECRET}", "Range": "bytes=4-11"}, timeout=5)
    assert ranged.status_code == 206 and len(ranged.content) == 8
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": "tiny", "source": {"type": "worker", "worker": "inf-a"}, "workers": ["inf-b"]}).json()
    final = live.wait_job(job["id"])
    assert final["state"] == "completed", json.dumps(final, indent=1)
    manifest = live.store("inf-b") / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    assert manifest.read_bytes() == tiny_model["manifest_bytes"]
    # and a registry file model, copied peer to peer
    ref = f"house:{registered['version']}"
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": ref, "source": {"type": "worker", "worker": "inf-a"}, "workers": ["inf-wrong"]}).json()
    assert live.wait_job(job["id"])["state"] == "completed"


def test_a_namespaced_registry_model_travels_by_name_from_registry_and_from_a_peer(live, workdir):
    gguf = write_llama_gguf(workdir / "acme-house.gguf", name="acme-house", width=80)
    with open(gguf, "rb") as f:
        resp = live.api("POST", "/api/v1/model-registry/upload",
                        params={"name": "acme/house", "version": "v1", "filename": "house.gguf"}, data=f)
    assert resp.status_code == 201, resp.text
    jobs_before = live.api("GET", "/api/v1/models/pull-jobs").json()["total"]
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": "acme/house:v1", "source": {"type": "registry"}, "workers": ["inf-a"]}).json()
    final = live.wait_job(job["id"])
    assert final["state"] == "completed", json.dumps(final, indent=1)
    entry = live.root / "nodes" / "inf-a" / "catalog" / "acme" / "house" / "v1.json"
    assert json.loads(entry.read_text())["name"] == "acme/house:v1"
    # and on to a peer, by the same name
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": "acme/house:v1", "source": {"type": "worker", "worker": "inf-a"}, "workers": ["inf-b"]}).json()
    final = live.wait_job(job["id"])
    assert final["state"] == "completed", json.dumps(final, indent=1)
    models = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
    assert models["acme/house:v1"]["workers"] == ["inf-a", "inf-b"]
    shown = live.api("POST", "/api/v1/models/show", json={"model": "acme/house:v1"})
    assert shown.status_code == 200 and shown.json()["details"]["format"] == "gguf", shown.text
    # delete from one worker leaves the other's copy and removes the catalog directories it made
    job = live.api("POST", "/api/v1/models/delete", json={"model": "acme/house:v1", "workers": ["inf-b"]}).json()
    assert live.wait_job(job["id"])["state"] == "completed"
    assert not (live.root / "nodes" / "inf-b" / "catalog" / "acme").exists()
    assert entry.exists()
    assert live.api("GET", "/api/v1/models/pull-jobs").json()["total"] == jobs_before + 3


def test_the_registry_refuses_a_name_no_worker_could_store(live, workdir):
    resp = live.api("POST", "/api/v1/model-registry/upload", params={"name": "acme.corp/house", "filename": "h.gguf"},
                    data=b"GGUF")
    assert resp.status_code == 400, resp.text
    assert "acme.corp/house" in resp.json()["message"]


@pytest.mark.parametrize("ranges", [True, False])
def test_url_source_with_and_without_range(live, workdir, ranges):
    root = workdir / f"www-{ranges}"
    root.mkdir()
    gguf = write_llama_gguf(root / "web.gguf", name="web", width=64 + 32 * ranges)
    server = FileServer(root, ranges=ranges, token="hf_secret")
    try:
        sha = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
        url = f"{server.url}/web.gguf?X-Amz-Signature=abc123"
        job = live.api("POST", "/api/v1/models/distribute", json={
            "model": f"web{int(ranges)}", "workers": ["inf-a"],
            "source": {"type": "url", "url": url, "token": "hf_secret", "sha256": sha}}).json()
        assert "abc123" not in json.dumps(job) and "hf_secret" not in json.dumps(job)
        final = live.wait_job(job["id"])
        assert final["state"] == "completed", json.dumps(final, indent=1)
        blob = live.store("inf-a") / "blobs" / sha.replace(":", "-")
        assert blob.read_bytes() == gguf.read_bytes()
        assert any(r is not None for _, r in server.log) == ranges or not ranges
    finally:
        server.close()


def test_url_digest_mismatch_fails_the_worker(live, workdir):
    root = workdir / "www-bad"
    root.mkdir()
    (root / "x.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    server = FileServer(root)
    try:
        job = live.api("POST", "/api/v1/models/distribute", json={
            "model": "bad", "workers": ["inf-a"],
            "source": {"type": "url", "url": f"{server.url}/x.gguf", "sha256": "sha256:" + "0" * 64}}).json()
        final = live.wait_job(job["id"])
        assert final["state"] == "failed" and "digest mismatch" in final["workers"][0]["error"]
    finally:
        server.close()


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "x", "source": {"type": "registry"}, "workers": ["data-a"]}, 400, "data-a"),
    ({"model": "x", "source": {"type": "registry"}, "workers": ["ghost"]}, 404, "ghost"),
    ({"model": "nope-id", "source": {"type": "registry"}}, 404, "nope-id"),
    ({"model": "tiny", "source": {"type": "worker", "worker": "ghost"}}, 404, "ghost"),
    ({"model": "x", "source": {"type": "url", "url": "file:///etc/passwd"}}, 400, "source"),
    ({"model": "x", "source": {"type": "carrier-pigeon"}}, 422, "source"),
    ({"model": "tiny", "source": {"type": "ollama", "token": "hf_x"}}, 400, "token"),
    ({"model": "x", "source": {"type": "url", "url": "http://[::1/x.gguf"}}, 400, "source"),
    ({"model": "x", "source": {"type": "url", "url": "http://127.0.0.1:99999/x.gguf"}}, 400, "source"),
    ({"model": "../x", "source": {"type": "url", "url": "http://127.0.0.1:1/x.gguf"}}, 400, "model"),
    # a namespace with a dot: Ollama could not serve it, so no worker could store it; refused before queuing
    ({"model": "acme.corp/x:v1", "source": {"type": "url", "url": "http://127.0.0.1:1/x.gguf"}}, 400, "model"),
    ({"model": "a/b/c:v1", "source": {"type": "url", "url": "http://127.0.0.1:1/x.gguf"}}, 400, "model"),
])
def test_bad_distribute_requests(live, body, status, needle):
    resp = live.api("POST", "/api/v1/models/distribute", json=body)
    assert resp.status_code == status, resp.text
    assert needle in resp.text


def test_llama_cpp_loads_the_gguf_distributed_from_the_registry(live, registered):
    """The GGUF that distribution installed for llama.cpp on inf-a is one llama.cpp really runs."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (scripts/install-deps.sh builds it, ~4-8 min)")
    job = live.api("POST", "/api/v1/models/distribute", json={
        "model": registered["id"], "source": {"type": "registry"}, "workers": ["inf-a"]}).json()
    assert live.wait_job(job["id"])["state"] == "completed"
    installed = [p for p in (live.root / "nodes" / "inf-a" / "backends" / "llamacpp").rglob("*.gguf")
                 if p.read_bytes() == registered["bytes"]]
    assert installed, "the registry model's GGUF is installed for llama.cpp"
    installed = installed[0]
    llm = llama_cpp.Llama(model_path=str(installed), n_ctx=64, n_threads=2, verbose=False)
    out = llm("hello", max_tokens=1, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 1


def test_a_registry_model_pinned_to_workers_reaches_them_through_beat(live, workdir):
    gguf = write_llama_gguf(workdir / "pinned.gguf", name="pinned", width=64, ff=192)
    with open(gguf, "rb") as f:
        model = live.api("POST", "/api/v1/model-registry/upload", params={"name": "pinned", "filename": "p.gguf"},
                         data=f).json()
    refused = live.api("POST", "/api/v1/pins", json={"model": model["id"], "source": "registry", "auto_update": True})
    assert refused.status_code == 400 and "auto_update" in refused.text
    resp = live.api("POST", "/api/v1/pins", json={"model": model["id"], "source": "registry",
                                                   "workers": ["inf-a", "inf-b"]})
    assert resp.status_code == 201, resp.text
    ref = f"pinned:{model['version']}"
    assert resp.json()["model"] == ref and resp.json()["source"] == "registry"
    beat = Service("beat", eldric("beat"), live.root, cwd=REPO,
                   env=live.env(ELDRIC_PIN_RECONCILE_SECONDS="1", ELDRIC_INVENTORY_SYNC_SECONDS="0",
                                ELDRIC_PIN_UPDATE_SECONDS="0", ELDRIC_REAP_SECONDS="0")).start()
    live.services.append(beat)
    try:
        def covered():
            found = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
            return ref in found and {"inf-a", "inf-b"} <= set(found[ref]["workers"])
        wait_until(covered, timeout=60, interval=0.5, message=f"beat to distribute the pinned {ref}\n{beat.log_tail()}")
        jobs = live.api("GET", "/api/v1/models/pull-jobs", params={"kind": "distribute"}).json()["jobs"]
        assert any(j["model"] == ref and j["options"].get("pin") == ref for j in jobs)
    finally:
        beat.stop()
        live.api("DELETE", f"/api/v1/pins/{ref}")

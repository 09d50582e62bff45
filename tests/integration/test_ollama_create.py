"""Ollama's blobs, create and push against the cluster, driven by the official `ollama` Python client.

One cluster for the module: redis-server, docker-registry as upstream (holding `tiny` and `solo`), the data
node (`eldric registry`, the cluster secret on, no pull-through mirror), the controller and one inference
agent. As in the README's one-machine cluster, ELDRIC_OLLAMA_REGISTRY is NOT the data node (here the
docker-registry upstream `tiny` is pulled from), and ELDRIC_REGISTRY_URL is: a created model still reaches
the worker, fetched from the data node's /v2/ (its pull job's source is `cluster`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ollama
import pytest

from eldric.core.manifests import MANIFEST_V2
from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import REPO_ROOT, Service, eldric, free_port, session, wait_until
from tests.support.ollama_js import run_steps

pytestmark = pytest.mark.integration
SECRET = "create-secret"


@pytest.fixture(scope="module")
def live(cluster, oci, tiny_model, workdir: Path):
    solo = write_llama_gguf(workdir / "solo.gguf", name="solo", width=72)
    push_ollama_model(oci.url, "library/solo", "latest", gguf_path=solo)
    port = free_port()
    env = cluster.env(ELDRIC_MIRROR_UPSTREAM="none", ELDRIC_CLUSTER_SECRET=SECRET)
    svc = Service("data-registry", eldric("registry", "--port", str(port), "--storage", str(workdir / "data"),
                                          "--min-free", "0"), workdir, env=env, cwd=REPO_ROOT).start()
    cluster.services.append(svc)
    data = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{data}/healthz", timeout=2).ok, timeout=30, message=svc.log_tail())
    oci_host = oci.url.split("://", 1)[1]
    # ELDRIC_OLLAMA_REGISTRY stays cluster.env's: the upstream docker-registry, not the data node.
    agent_env = {"ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_REGISTRY_URL": data, "ELDRIC_INSECURE_REGISTRIES": oci_host}
    cluster.start_controller(**agent_env)
    cluster.start_worker("inf-c", ELDRIC_BACKENDS="ollama,vllm", **agent_env)  # vLLM: safetensors too
    client = ollama.Client(host=cluster.controller_url)
    assert client.pull("tiny").status == "success"
    return {"client": client, "data": data, "oci_host": oci_host, "cluster": cluster}


def tags(live) -> set[str]:
    return {m.model for m in live["client"].list().models}


def registry_manifest(live, repo: str, tag: str) -> dict:
    resp = session().get(f"{live['data']}/v2/{repo}/manifests/{tag}", timeout=10,
                         headers={"Authorization": f"Bearer {SECRET}", "Accept": MANIFEST_V2})
    assert resp.status_code == 200, resp.text
    return {"doc": resp.json(), "digest": resp.headers["Docker-Content-Digest"]}


def layer_text(live, repo: str, doc: dict, media_type: str) -> str:
    [layer] = [x for x in doc["layers"] if x["mediaType"] == media_type]
    return session().get(f"{live['data']}/v2/{repo}/blobs/{layer['digest']}", timeout=10,
                         headers={"Authorization": f"Bearer {SECRET}"}).text


def test_upload_a_gguf_then_create_from_it(live, workdir: Path) -> None:
    client, http = live["client"], session()
    gguf = write_llama_gguf(workdir / "up.gguf", name="up", width=80)
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    url = f"{live['cluster'].controller_url}/api/blobs/{digest}"
    assert http.head(url, timeout=10).status_code == 404
    assert client.create_blob(gguf) == digest
    assert http.head(url, timeout=10).status_code == 200
    lines = list(client.create(model="up", files={"up.gguf": digest}, template="[up] {{ .Prompt }}", stream=True))
    statuses = [p.status for p in lines]
    assert statuses[-1] == "success", statuses
    assert f"using existing layer {digest}" in statuses and "writing manifest" in statuses
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert any(p.total and p.completed == p.total for p in lines if (p.status or "").startswith("distributing"))
    assert "up:latest" in tags(live)
    # Fetched from the data node, not from ELDRIC_OLLAMA_REGISTRY (the upstream docker-registry, which lacks `up`).
    job_id = next(s for s in statuses if s.startswith("distributing")).rsplit("(job ", 1)[1].rstrip(")")
    job = live["cluster"].api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()
    assert job["source"] == "cluster" and [w["source"] for w in job["workers"]] == [live["data"]], job
    doc = registry_manifest(live, "library/up", "latest")["doc"]
    assert [x["mediaType"] for x in doc["layers"]] == ["application/vnd.ollama.image.model",
                                                       "application/vnd.ollama.image.template"]
    assert doc["layers"][0]["digest"] == digest


def test_create_from_a_cluster_model_with_a_system_prompt(live) -> None:
    answer = live["client"].create(model="pirate", from_="tiny", system="You are a pirate.",
                                   parameters={"temperature": 0.3})
    assert answer.status == "success"
    assert "pirate:latest" in tags(live)
    doc = registry_manifest(live, "library/pirate", "latest")["doc"]
    assert layer_text(live, "library/pirate", doc, "application/vnd.ollama.image.system") == "You are a pirate."
    params = json.loads(layer_text(live, "library/pirate", doc, "application/vnd.ollama.image.params"))
    assert params == {"stop": ["<|im_end|>"], "temperature": 0.3}  # merged over tiny's
    assert layer_text(live, "library/pirate", doc, "application/vnd.ollama.image.license") == "MIT test license"


def test_the_legacy_modelfile_form(live) -> None:
    modelfile = 'FROM tiny\nPARAMETER num_ctx 256\nSYSTEM """Answer\nbriefly."""\nMESSAGE user hi\n'
    resp = live["cluster"].api("POST", "/api/create", json={"model": "legacy", "modelfile": modelfile,
                                                          "stream": False})
    assert resp.status_code == 200 and resp.json() == {"status": "success"}, resp.text
    assert "legacy:latest" in tags(live)
    doc = registry_manifest(live, "library/legacy", "latest")["doc"]
    assert layer_text(live, "library/legacy", doc, "application/vnd.ollama.image.system") == "Answer\nbriefly."
    assert json.loads(layer_text(live, "library/legacy", doc, "application/vnd.ollama.image.messages")) == [
        {"role": "user", "content": "hi"}]


def test_push_copies_a_model_only_a_worker_has_into_the_registry(live) -> None:
    client = live["client"]
    name = f"{live['oci_host']}/library/solo:latest"  # pulled straight from upstream: the data node lacks it
    assert client.pull(name, insecure=True).status == "success"
    lines = list(client.push(name, stream=True))
    statuses = [p.status for p in lines]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"], statuses
    pushed = [p for p in lines if (p.status or "").startswith("pushing ") and p.digest]
    sent = {p.digest for p in pushed if p.completed == 0}  # blobs the registry lacked: copied from the worker
    assert sent and all(any(q.digest == d and q.completed == q.total for q in pushed) for d in sent), lines
    stored = registry_manifest(live, "library/solo", "latest")
    worker_copy = live["cluster"].store("inf-c") / "manifests" / live["oci_host"] / "library" / "solo" / "latest"
    assert stored["digest"] == "sha256:" + hashlib.sha256(worker_copy.read_bytes()).hexdigest()
    assert name in tags(live)


def test_safetensors_files_become_a_registry_model_served_by_file_backends(live, workdir: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    folder = workdir / "st"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                    "max_position_embeddings": 128}))
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    client = live["client"]
    files = {p.name: client.create_blob(p) for p in sorted(folder.iterdir())}
    statuses = [p.status for p in client.create(model="st", files=files, stream=True)]
    assert statuses[-1] == "success" and "writing manifest" in statuses, statuses
    listed = {m.model: m for m in client.list().models}
    assert "st:latest" in listed and listed["st:latest"].details.format == "safetensors"
    with pytest.raises(ollama.ResponseError) as err:  # the registry's check: no config.json
        client.create(model="st2", files={"model.safetensors": files["model.safetensors"]})
    assert err.value.status_code == 400 and "config.json" in err.value.error
    drafts = live["cluster"].api("GET", "/api/v1/model-registry", params={"state": "draft"}).json()["models"]
    assert not [d for d in drafts if d["name"] == "st2"] and "st2:latest" not in tags(live)
    with pytest.raises(ollama.ResponseError) as err:  # nothing of the Ollama layout to build on
        client.create(model="onst", from_="st", system="x")
    assert err.value.status_code == 400 and "file model" in err.value.error and "onst:latest" not in tags(live)


@pytest.mark.parametrize("call, status, words", [
    (lambda c: c.create(model="nofrom", from_="no-such-model"), 404, "model 'no-such-model' not found"),
    (lambda c: c.create(model="quant", from_="tiny", quantize="q4_K_M"), 400, "quantiz"),
    (lambda c: c.create(model="badparam", from_="tiny", parameters={"temprature": 1}), 400, "unknown parameter"),
    (lambda c: c.create(model="badtpl", from_="tiny", template="{{ if .System }}x"), 400, "template error"),
    (lambda c: c.create(model="noblob", files={"m.gguf": "sha256:" + "0" * 64}), 400, "upload it first"),
])
def test_refused_creates_leave_nothing(live, call, status, words) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        call(live["client"])
    assert err.value.status_code == status and words in err.value.error, err.value.error
    assert not {"nofrom:latest", "quant:latest", "badparam:latest", "badtpl:latest", "noblob:latest"} & tags(live)


def test_blob_uploads_are_verified(live) -> None:
    base, http = live["cluster"].controller_url, session()
    assert http.post(f"{base}/api/blobs/sha256:zzz", data=b"x", timeout=10).status_code == 400
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    resp = http.post(f"{base}/api/blobs/{wrong}", data=b"these bytes", timeout=10)
    assert resp.status_code == 400 and "mismatch" in resp.json()["error"]
    assert http.head(f"{base}/api/blobs/{wrong}", timeout=10).status_code == 404


def test_the_official_npm_client_uploads_creates_pushes_and_lists_running_models(live, workdir: Path) -> None:
    """ollama-js has no blob upload: the GGUF goes up with fetch as Open WebUI sends it, then the client's create
    names it in `files`; a create with `from` + `system` (Open WebUI's form), push, ps, list and show follow."""
    gguf = write_llama_gguf(workdir / "jsup.gguf", name="jsup", width=88)
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    steps = [{"op": "upload", "path": str(gguf)},
             {"op": "create", "model": "jsup", "files": {"jsup.gguf": digest}, "stream": True},
             {"op": "create", "model": "jspirate", "from": "tiny", "system": "Arr, matey."},
             {"op": "push", "model": "jsup", "stream": True},
             {"op": "ps"}, {"op": "list"}, {"op": "show", "model": "jspirate"}]
    uploaded, created, from_system, pushed, running, listed, shown = run_steps(live["cluster"].controller_url, steps)
    assert uploaded == {"digest": digest, "head": 404, "status": 201}, uploaded
    statuses = [p["status"] for p in created["parts"]]
    assert f"using existing layer {digest}" in statuses and statuses[-1] == "success", created
    assert from_system == {"status": "success"}, from_system
    statuses = [p["status"] for p in pushed["parts"]]
    assert statuses[0] == "retrieving manifest" and statuses[-1] == "success", pushed
    assert isinstance(running["models"], list) and all("expires_at" in m for m in running["models"]), running
    assert {"jsup:latest", "jspirate:latest"} <= {m["name"] for m in listed["models"]}, listed
    assert shown["system"] == "Arr, matey." and shown["details"]["family"] == "llama", shown
    assert registry_manifest(live, "library/jsup", "latest")["doc"]["layers"][0]["digest"] == digest

"""All or nothing per worker (issue 22, finding 3), `partial_ok`, the debris sweep, and URL files held already
(finding 6), over real processes: registry, controller, agents with vLLM, Triton (FakeTriton) and TGI."""

from __future__ import annotations

import json
import os
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from safetensors.numpy import save_file

from eldric.client.registry import ModelRegistryClient
from eldric.cluster.celeryconf import celery_config
from eldric.cluster import keys
from eldric.cluster.queues import MAINTENANCE_QUEUE, TASK_SWEEP_DEBRIS_ALL
from tests.support.fake_backends import FakeTriton
from testbed.gguf_models import write_llama_gguf
from testbed.processes import Service, eldric, free_port, wait_until
from worker_agent.installers import BackendConfig, LocalModel, install
from worker_agent.installers.staging import RECORD

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SECRET = "rollback-secret"


def node_dir(cluster, worker: str, backend: str) -> Path:
    return cluster.root / "nodes" / worker / "backends" / backend


@pytest.fixture(scope="module")
def triton(cluster):
    repository = node_dir(cluster, "gpu-a", "triton")
    repository.mkdir(parents=True)
    with FakeTriton(repository) as server:
        yield server


@pytest.fixture(scope="module")
def live(cluster, workdir, triton):
    storage = workdir / "registry-storage"
    port = free_port()
    reg = Service("registry", eldric("registry", "--port", str(port), "--storage", str(storage)), workdir,
                  env=cluster.env(ELDRIC_CLUSTER_SECRET=SECRET), cwd=REPO).start()
    cluster.services.append(reg)
    registry_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: cluster.http.get(f"{registry_url}/healthz", timeout=2).ok, message="registry")
    cluster.start_controller(ELDRIC_REGISTRY_URL=registry_url, ELDRIC_CLUSTER_SECRET=SECRET)
    cluster.start_worker("gpu-a", "inference", ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_BACKENDS="vllm,triton,tgi",
                         ELDRIC_TRITON_URL=triton.url, ELDRIC_DEBRIS_SWEEP="remove")
    # gpu-b's Triton is down for good: nothing listens on its port
    cluster.start_worker("gpu-b", "inference", ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_BACKENDS="vllm,triton",
                         ELDRIC_TRITON_URL=f"http://127.0.0.1:{free_port()}")
    return cluster


def safetensors_dir(root: Path, *, tokenizer: bool) -> Path:
    root.mkdir(parents=True)
    save_file({"embed": np.ones((32, 16), np.float16)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    if tokenizer:
        (root / "tokenizer.json").write_text('{"version": "1.0"}')
    return root


@pytest.fixture(scope="module")
def models(live, workdir) -> dict:
    client = ModelRegistryClient(live.controller_url)
    notok = client.upload_model(safetensors_dir(workdir / "st-notok", tokenizer=False), name="acme/st-notok",
                                version="v1")
    ok = client.upload_model(safetensors_dir(workdir / "st-ok", tokenizer=True), name="acme/st-ok", version="v1")
    gguf = client.upload_file(write_llama_gguf(workdir / "g.gguf", name="g"), name="acme/g", version="v1")
    return {"notok": notok, "ok": ok, "gguf": gguf}


def distribute(live, model: str, worker: str, **extra) -> dict:
    resp = live.api("POST", "/api/v1/models/distribute", json={
        "model": model, "source": {"type": "registry"}, "workers": [worker], **extra})
    assert resp.status_code == 202, resp.text
    final = live.wait_job(resp.json()["id"])
    return {**final, "record": final["workers"][0]}


def blobs_of(live, worker: str, model: dict) -> list[Path]:
    """The model's files in the worker's blob store (a part that failed for good leaves none)."""
    store = live.store(worker) / "blobs"
    return [store / f["sha256"].replace(":", "-") for f in model["files"] if (store / f["sha256"].replace(":", "-")).exists()]


def worker_models(live, worker: str) -> dict:
    return {m["name"]: m for m in live.api("GET", f"/api/v1/workers/{worker}/models").json()["models"]}


def test_a_backend_refusing_the_model_leaves_no_install_in_the_others(live, models, triton):
    final = distribute(live, "acme/st-notok:v1", "gpu-a")
    error = final["record"].get("error", "")
    assert final["state"] == "failed" and error.startswith("tgi: ") and "tokenizer" in error, final
    assert "rolled back its install in vllm, triton" in error
    slug = "acme--st-notok--v1"
    # Triton had been told to load it, and was told to unload it again
    assert ("POST", f"/v2/repository/models/{slug}/load") in triton.requests
    assert ("POST", f"/v2/repository/models/{slug}/unload") in triton.requests
    assert triton.states[slug]["state"] == "UNAVAILABLE"
    for backend in ("vllm", "triton", "tgi"):
        left = sorted(p.name for p in node_dir(live, "gpu-a", backend).iterdir()) \
            if node_dir(live, "gpu-a", backend).is_dir() else []
        assert slug not in left and not [n for n in left if "staging" in n], (backend, left)
    assert "acme/st-notok:v1" not in worker_models(live, "gpu-a")
    assert not (live.root / "nodes" / "gpu-a" / "catalog" / "acme" / "st-notok").exists()
    assert blobs_of(live, "gpu-a", models["notok"]) == []


def test_a_format_mismatch_skips_that_backend_with_the_reason_in_placement(live, models, triton):
    final = distribute(live, "acme/g:v1", "gpu-a")
    assert final["state"] == "completed", final
    placement = final["record"]["placement"]
    assert "tgi: skipped (TGI serves safetensors models; this one is gguf)" in placement, placement
    assert "vllm: hard-linked, no copy" in placement and "triton: " in placement
    served = [b for b in ("vllm", "triton") if f"{b}: skipped" not in placement]
    assert worker_models(live, "gpu-a")["acme/g:v1"]["backends"] == served, placement


def test_an_unreachable_backend_fails_the_worker_unless_partial_ok(live, models):
    slug = "acme--st-ok--v1"
    final = distribute(live, "acme/st-ok:v1", "gpu-b")
    error = final["record"].get("error", "")
    assert final["state"] == "failed" and error.startswith("triton: ") and "unreachable" in error, final
    assert "rolled back its install in vllm" in error
    assert live.workers["gpu-b"].log_tail(200).count("retry: Retry in") == 2  # ELDRIC_PULL_RETRIES, then failed
    assert not (node_dir(live, "gpu-b", "vllm") / slug).exists()
    assert not (node_dir(live, "gpu-b", "triton") / slug).exists()
    assert "acme/st-ok:v1" not in worker_models(live, "gpu-b")
    assert blobs_of(live, "gpu-b", models["ok"]) == []  # kept between the tries, gone with the part

    final = distribute(live, "acme/st-ok:v1", "gpu-b", partial_ok=True)
    assert final["state"] == "completed" and final["options"]["partial_ok"] is True, final
    placement = final["record"]["placement"]
    assert "vllm: hard-linked, no copy" in placement
    assert "triton: skipped (unreachable, skipped (partial_ok): Triton at http://127.0.0.1:" in placement, placement
    assert (node_dir(live, "gpu-b", "vllm") / slug / "tokenizer.json").is_file()
    assert not (node_dir(live, "gpu-b", "triton") / slug).exists()
    assert worker_models(live, "gpu-b")["acme/st-ok:v1"]["backends"] == ["vllm"]
    assert len(blobs_of(live, "gpu-b", models["ok"])) == len(models["ok"]["files"])


def test_partial_ok_must_be_a_boolean(live):
    resp = live.api("POST", "/api/v1/models/distribute", json={
        "model": "x", "source": {"type": "registry"}, "partial_ok": "maybe"})
    assert resp.status_code == 422 and "partial_ok" in resp.text, resp.text


def test_the_debris_sweep_unloads_and_removes_what_no_catalog_lists(live, models, triton, workdir):
    """An install by an agent from before the rollback (or killed before its catalog write): vLLM and Triton
    hold `acme/stray:v1`, Triton has it loaded, no catalog lists it. The sweep leaves `acme/st-ok:v1` alone."""
    assert distribute(live, "acme/st-ok:v1", "gpu-a")["state"] == "completed"  # catalogued, loaded
    stray = LocalModel.from_path("acme/stray:v1", safetensors_dir(workdir / "stray", tokenizer=True))
    install(stray, BackendConfig("vllm", models_dir=node_dir(live, "gpu-a", "vllm")))
    install(stray, BackendConfig("triton", models_dir=triton.repository, url=triton.url, timeout=10))
    slug = "acme--stray--v1"
    assert triton.states[slug]["state"] == "READY"
    hour_ago = time.time() - 3600 - 60
    for entry in (node_dir(live, "gpu-a", "vllm") / slug, triton.repository / slug):
        os.utime(entry / RECORD, (hour_ago, hour_ago))  # placed over an hour ago (the sweep's grace)

    producer = Celery("sweep-test", set_as_current=False)
    producer.conf.update(celery_config(live.redis_server.url))
    producer.send_task(TASK_SWEEP_DEBRIS_ALL, args=[], queue=MAINTENANCE_QUEUE)  # what beat sends

    wait_until(lambda: not (triton.repository / slug).exists() and not (node_dir(live, "gpu-a", "vllm") / slug).exists(),
               timeout=30, message=f"the debris sweep\n{live.logs()}")
    assert ("POST", f"/v2/repository/models/{slug}/unload") in triton.requests
    assert triton.states[slug]["state"] == "UNAVAILABLE"
    kept = "acme--st-ok--v1"
    assert triton.states[kept]["state"] == "READY" and (triton.repository / kept).is_dir()
    assert (node_dir(live, "gpu-a", "vllm") / kept).is_dir() and (node_dir(live, "gpu-a", "tgi") / kept).is_dir()
    assert ("POST", f"/v2/repository/models/{kept}/unload") not in triton.requests
    wait_until(lambda: live.redis.exists(keys.worker_debris("gpu-a")) == 0, timeout=10, message="the report")


class _LoggingHandler(SimpleHTTPRequestHandler):
    """Python's own file server: Last-Modified, no ETag, no Range (every GET is the whole file)."""

    def log_message(self, *args) -> None:
        self.server.gets.append(self.path)


def test_a_url_file_the_worker_holds_is_not_downloaded_again(live, workdir):
    root = workdir / "www"
    root.mkdir()
    gguf = write_llama_gguf(root / "web.gguf", name="web", width=80)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_LoggingHandler, directory=str(root)))
    server.gets, server.daemon_threads = [], True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/web.gguf?X-Amz-Signature=first"
    try:
        def fetch(model: str, url: str) -> dict:
            resp = live.api("POST", "/api/v1/models/distribute", json={
                "model": model, "workers": ["gpu-a"], "source": {"type": "url", "url": url}})
            assert resp.status_code == 202, resp.text
            final = live.wait_job(resp.json()["id"])
            assert final["state"] == "completed", json.dumps(final, indent=1)
            return final["workers"][0]

        first = fetch("web1", url)
        assert first["transferred"] == gguf.stat().st_size
        asked = len(server.gets)
        again = fetch("web2", url.replace("first", "second"))  # another signature, the same file
        assert again["transferred"] == 0, again
        assert len(server.gets) == asked + 1  # the probe only
        os.utime(gguf, (time.time() + 5, time.time() + 5))  # the file changed (Last-Modified moves)
        assert fetch("web3", url)["transferred"] == gguf.stat().st_size
    finally:
        server.shutdown()
        server.server_close()

"""Issue 22, finding 1: a pull installs into every backend of the node that serves the model, and the
views say per backend what is served. Real processes: redis-server, docker-registry (the upstream),
controller, agents with different ELDRIC_BACKENDS; stand-ins for Ollama's API over the node's
store and for the /v1/models of llama-server (router mode) and vLLM; and, where llama-cpp-python's
server is installed, `python -m llama_cpp.server` as the real llama.cpp server on the placed GGUF."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.fake_backends import FakeOllama, FakeOpenAIModels
from tests.support.file_server import FileServer
from testbed.gguf_models import write_llama_gguf
from testbed.processes import Service, free_port, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MODEL_LAYER = "application/vnd.ollama.image.model"


def node(live, name: str) -> Path:
    return live.root / "nodes" / name


@pytest.fixture(scope="module")
def live(cluster, tiny_model, workdir):
    """lv-1: llama.cpp + vLLM (as deploy/local.env); mix-1: Ollama + llama.cpp + TGI; tgi-1: TGI + Triton;
    moved-1: TGI only, over an Ollama store that already holds tiny (a node whose backends changed)."""
    cluster.start_controller()
    router = FakeOpenAIModels.llama_router(node(cluster, "lv-1") / "backends" / "llamacpp").start()
    vllm = FakeOpenAIModels(["some-other-model"]).start()
    ollama = FakeOllama(workdir / "fake-ollama", models_dir=cluster.store("mix-1")).start()
    cluster.fakes = {"router": router, "vllm": vllm, "ollama": ollama}
    cluster.start_worker("lv-1", ELDRIC_BACKENDS="llamacpp,vllm", ELDRIC_LLAMACPP_URL=router.url,
                         ELDRIC_VLLM_URL=vllm.url)
    cluster.start_worker("mix-1", ELDRIC_BACKENDS="ollama,llamacpp,tgi", ELDRIC_OLLAMA_URL=ollama.url)
    cluster.start_worker("tgi-1", ELDRIC_BACKENDS="tgi,triton")
    yield cluster
    for fake in cluster.fakes.values():
        fake.stop()


def pull(live, workers: list[str]) -> dict:
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": workers})
    assert resp.status_code == 202, resp.text
    return live.wait_job(resp.json()["id"])


def records(job: dict) -> dict[str, dict]:
    return {r["worker"]: r for r in job["workers"]}


def model_blob(live, worker: str, tiny_model: dict) -> Path:
    [layer] = [x for x in tiny_model["manifest"]["layers"] if x["mediaType"] == MODEL_LAYER]
    return live.store(worker) / "blobs" / layer["digest"].replace(":", "-")


@pytest.fixture(scope="module")
def first_pull(live, tiny_model) -> dict:
    return pull(live, ["lv-1", "mix-1", "tgi-1"])


def test_a_pull_is_hard_linked_into_llamacpp_and_vllm_and_skipped_where_it_cannot_be_served(live, tiny_model,
                                                                                             first_pull):
    by = records(first_pull)
    assert by["lv-1"]["state"] == "completed", json.dumps(first_pull, indent=1)
    blob = model_blob(live, "lv-1", tiny_model)
    llama = node(live, "lv-1") / "backends" / "llamacpp" / "tiny.gguf"
    vllm = node(live, "lv-1") / "backends" / "vllm" / "tiny" / "tiny.gguf"
    assert llama.stat().st_ino == blob.stat().st_ino == vllm.stat().st_ino  # one copy: hard links
    assert by["lv-1"]["placement"] == "installed for llamacpp: hard-linked, no copy, vllm: hard-linked, no copy"
    # the router lists its directory as it was when it started, vLLM serves another model
    assert by["lv-1"]["ready"] == {"llamacpp": False, "vllm": False}

    assert by["mix-1"]["state"] == "completed", json.dumps(first_pull, indent=1)
    placement = by["mix-1"]["placement"]
    assert placement.startswith("installed for ollama: Ollama store, llamacpp: hard-linked, no copy"), placement
    assert "tgi: skipped (TGI serves safetensors models; this one is gguf)" in placement
    assert by["mix-1"]["ready"] == {"ollama": True, "llamacpp": "no API"}
    assert ("POST", "/api/show") in live.fakes["ollama"].requests


def test_a_node_whose_backends_serve_none_of_it_fails_before_downloading(live, first_pull):
    rec = records(first_pull)["tgi-1"]
    assert rec["state"] == "failed"
    assert rec["error"] == ("no backend on this node can serve tiny:latest (gguf): "
                            "tgi: TGI serves safetensors models; this one is gguf; "
                            "triton: Triton serves safetensors models (its vLLM backend); this one is gguf"), rec["error"]
    assert not rec.get("upstream_bytes") and not rec.get("completed")
    assert not any((live.store("tgi-1") / "blobs").glob("sha256-*"))  # not even the config blob came


def test_views_count_and_list_only_what_a_backend_serves(live, first_pull):
    models = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
    tiny = models["tiny:latest"]
    assert tiny["workers"] == ["lv-1", "mix-1"] and tiny["coverage"] == round(100 * 2 / 3, 1), tiny
    assert tiny["missing"] == ["tgi-1"] and tiny["stored_not_served"] == []
    local = {m["name"]: m for m in live.api("GET", "/api/v1/workers/lv-1/models").json()["models"]}
    assert local["tiny:latest"]["backends"] == ["llamacpp", "vllm"]
    assert local["tiny:latest"]["backend"] == "llamacpp,vllm"
    mixed = {m["name"]: m for m in live.api("GET", "/api/v1/workers/mix-1/models").json()["models"]}
    assert mixed["tiny:latest"]["backends"] == ["ollama", "llamacpp"]

    done = subprocess.run([sys.executable, "-m", "eldric.cli", "workers", "lv-1", "--controller", live.controller_url],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(live.root), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if "tiny:latest" in line]
    assert "llamacpp, vllm" in row and "ollama" not in row, done.stdout


def test_a_stored_model_no_backend_serves_is_shown_and_not_counted(live, tiny_model, first_pull):
    """moved-1 serves only TGI, over a store that holds tiny (its Ollama was removed, say)."""
    src, dst = live.store("lv-1"), live.store("moved-1")
    shutil.copytree(src / "manifests", dst / "manifests")
    shutil.copytree(src / "blobs", dst / "blobs")
    old = dst / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    shutil.copy(old / "latest", old / "old")  # tiny:old: on moved-1 only
    live.start_worker("moved-1", ELDRIC_BACKENDS="tgi")
    wait_until(lambda: live.api("GET", "/api/v1/workers/moved-1/models").json()["models"], timeout=20,
               message="moved-1's inventory")
    held = {m["name"]: m for m in live.api("GET", "/api/v1/workers/moved-1/models").json()["models"]}
    assert held["tiny:latest"]["backends"] == [] and held["tiny:latest"]["backend"] == "stored, not served", held

    def view():
        entry = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}["tiny:latest"]
        return entry if entry["stored_not_served"] else None
    tiny = wait_until(view, timeout=10, message="the model view to show moved-1")
    assert tiny["stored_not_served"] == ["moved-1"] and "moved-1" not in tiny["workers"]
    assert "moved-1" in tiny["missing"] and tiny["coverage"] == 50.0, tiny  # 2 of lv-1, mix-1, tgi-1, moved-1
    assert tiny["status"] == "served"  # lv-1 and mix-1 serve it
    lonely = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}["tiny:old"]
    assert lonely["status"] == "stored, not served" and lonely["workers"] == [] and lonely["coverage"] == 0.0
    assert lonely["stored_not_served"] == ["moved-1"], lonely
    tags = {m["name"]: m for m in live.api("GET", "/api/tags").json()["models"]}
    assert tags["tiny:old"]["details"]["status"] == "stored, not served"
    assert tags["tiny:latest"]["details"]["status"] == "served"

    done = subprocess.run([sys.executable, "-m", "eldric.cli", "workers", "moved-1", "--controller",
                           live.controller_url], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(live.root), "COLUMNS": "200"})
    [row] = [line for line in done.stdout.splitlines() if "tiny:latest" in line]
    assert "stored, not served" in row, done.stdout


def test_a_second_pull_finds_everything_in_place_and_a_restarted_router_ready(live, first_pull):
    live.fakes["router"].restart()  # the operator restarts llama-server: it now lists tiny
    again = records(pull(live, ["lv-1"]))["lv-1"]
    assert again["state"] == "completed", again
    assert again["placement"] == "installed for llamacpp: already in place, vllm: already in place"
    assert again["ready"] == {"llamacpp": True, "vllm": False}


def test_llama_cpp_loads_the_gguf_the_pull_placed_and_generates(live, first_pull):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (scripts/install-deps.sh builds it, ~4-8 min)")
    placed = node(live, "lv-1") / "backends" / "llamacpp" / "tiny.gguf"
    llm = llama_cpp.Llama(model_path=str(placed), n_ctx=64, n_threads=2, verbose=False)
    out = llm("hello", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1, out


def test_a_distribution_no_backend_can_serve_fails_before_downloading(live, workdir):
    root = workdir / "www"
    root.mkdir(exist_ok=True)
    write_llama_gguf(root / "web.gguf", name="web")
    server = FileServer(root)
    try:
        resp = live.api("POST", "/api/v1/models/distribute", json={
            "model": "web", "workers": ["tgi-1"], "source": {"type": "url", "url": f"{server.url}/web.gguf"}})
        assert resp.status_code == 202, resp.text
        rec = records(live.wait_job(resp.json()["id"]))["tgi-1"]
        assert rec["state"] == "failed"
        assert rec["error"].startswith("no backend on this node can serve web"), rec["error"]
        assert rec["error"].endswith("(gguf): tgi: TGI serves safetensors models; this one is gguf; "
                                     "triton: Triton serves safetensors models (its vLLM backend); this one is gguf"), \
            rec["error"]
        assert not rec.get("upstream_bytes")
        assert not list((live.store("tgi-1") / "blobs").glob("sha256-*"))
        assert not list((live.store("tgi-1") / ".eldric-partial").glob("*"))
    finally:
        server.close()


def test_nothing_of_the_model_stays_in_an_unserved_backend_dir(live, first_pull):
    """tgi-1 never got a file; mix-1's TGI directory stays empty (it was skipped, not half-installed)."""
    tgi = node(live, "mix-1") / "backends" / "tgi"
    assert not tgi.exists() or not [p for p in tgi.iterdir() if not p.name.startswith(".")]
    assert not os.path.exists(node(live, "tgi-1") / "backends" / "tgi" / "tiny")


def test_a_real_llama_cpp_server_on_the_placed_gguf_is_asked_and_generates(live, first_pull):
    """The operator starts llama.cpp's server on the file a pull placed; the next pull's readiness check
    asks its /v1/models (ELDRIC_LLAMACPP_URL) and finds it, and the server generates from that file."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server is not installed "
                        "(pip install 'llama-cpp-python[server]==0.3.36'; the build is reused from pip's cache)")
    url = f"http://127.0.0.1:{free_port()}"
    live.start_worker("lc-1", ELDRIC_BACKENDS="llamacpp", ELDRIC_LLAMACPP_URL=url)
    first = records(pull(live, ["lc-1"]))["lc-1"]
    assert first["state"] == "completed", first
    assert first["ready"] == {"llamacpp": False}  # nothing listens there yet: installed, not served
    placed = node(live, "lc-1") / "backends" / "llamacpp" / "tiny.gguf"
    server = Service("llama-cpp-server", [sys.executable, "-m", "llama_cpp.server", "--model", str(placed),
                                          "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
                                          "--n_ctx", "64", "--n_threads", "1"], live.root, cwd=REPO).start()
    live.services.append(server)  # stopped with the cluster
    wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).ok, timeout=30,
               message=f"llama_cpp.server on {url}\n{server.log_tail()}")
    again = records(pull(live, ["lc-1"]))["lc-1"]
    assert again["placement"] == "installed for llamacpp: already in place", again
    assert again["ready"] == {"llamacpp": True}, (again, requests.get(f"{url}/v1/models", timeout=5).json())
    out = requests.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 4, "temperature": 0},
                        timeout=30).json()
    assert out["usage"]["completion_tokens"] >= 1, out

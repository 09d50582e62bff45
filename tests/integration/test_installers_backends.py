"""Installing into backends over HTTP: the real `ollama` client against FakeOllama, Triton's
repository API against FakeTriton, and (when it is installed) llama-cpp-python loading a GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import ollama
import pytest
import requests
from safetensors.numpy import save_file

from tests.support.fake_backends import FakeOllama, FakeTriton
from testbed.gguf_models import write_llama_gguf
from testbed.processes import free_port
from worker_agent.installers import (BackendConfig, BackendError, BackendUnavailableError, LocalModel,
                                     MissingFilesError, backend_configs, install, uninstall)
from eldric.core.chat_templates import CHATML
from worker_agent.installers.triton import Installer
from worker_agent.settings import AgentSettings

pytestmark = pytest.mark.integration
ST = "acme--tiny-st"  # st_model's name in a backend (model_slug)


@pytest.fixture
def fake_ollama(tmp_path):
    with FakeOllama(tmp_path / "ollama-server") as server:
        yield server


@pytest.fixture
def fake_triton(tmp_path):
    (tmp_path / "triton-repo").mkdir()
    with FakeTriton(tmp_path / "triton-repo") as server:
        yield server


@pytest.fixture
def gguf_model(tmp_path) -> LocalModel:
    (tmp_path / "src").mkdir()
    return LocalModel.from_path("tiny", write_llama_gguf(tmp_path / "src" / "tiny.gguf"), system="Be brief.")


@pytest.fixture
def st_model(tmp_path) -> LocalModel:
    root = tmp_path / "src-st"
    root.mkdir()
    save_file({"w": np.ones((4, 4), dtype=np.float16)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (root / "tokenizer.json").write_text("{}")
    return LocalModel.from_path("acme/tiny-st", root)


def ollama_config(server: FakeOllama, tmp_path: Path) -> BackendConfig:
    return BackendConfig("ollama", models_dir=tmp_path / "modelfiles", url=server.url, timeout=30)


def show(server: FakeOllama, name: str) -> dict:
    r = requests.post(f"{server.url}/api/show", json={"model": name}, timeout=5)
    r.raise_for_status()
    return r.json()


def triton_config(server: FakeTriton, **options) -> BackendConfig:
    return BackendConfig("triton", models_dir=server.repository, url=server.url, timeout=30, options=options)


# ---------------------------------------------------------------- Ollama

def test_ollama_install_appears_in_tags_and_a_second_install_uploads_nothing(fake_ollama, tmp_path, gguf_model):
    cfg = ollama_config(fake_ollama, tmp_path)
    first = install(gguf_model, cfg)
    digest = gguf_model.digest("tiny.gguf")
    assert first.changed and first.model == "tiny:latest"
    assert fake_ollama.uploads == [(digest, gguf_model.files["tiny.gguf"].stat().st_size)]

    client = ollama.Client(host=fake_ollama.url)
    assert [m.model for m in client.list().models] == ["tiny:latest"]
    shown = client.show("tiny")
    assert shown.template == CHATML and '"<|im_end|>"' in shown.parameters
    assert show(fake_ollama, "tiny")["system"] == "Be brief."  # the client's ShowResponse has no `system`
    assert (tmp_path / "modelfiles" / "tiny" / "Modelfile").read_text().startswith("# tiny:latest")

    second = install(gguf_model, cfg)
    assert (second.changed, second.bytes_copied) == (False, 0)
    assert len(fake_ollama.uploads) == 1 and len(fake_ollama.creates) == 1
    assert [c for c in fake_ollama.requests if c[0] == "POST" and c[1] != "/api/show"] == [
        ("POST", f"/api/blobs/{digest}"), ("POST", "/api/create")]


def test_ollama_a_blob_the_server_has_is_not_uploaded_again(fake_ollama, tmp_path, gguf_model):
    install(gguf_model, ollama_config(fake_ollama, tmp_path))
    other_node_dir = BackendConfig("ollama", models_dir=tmp_path / "elsewhere", url=fake_ollama.url)
    again = install(gguf_model.replace(system="Be verbose."), other_node_dir)  # no record: must ask the server
    assert again.changed and again.bytes_copied == 0
    assert len(fake_ollama.uploads) == 1 and len(fake_ollama.creates) == 2
    assert show(fake_ollama, "tiny")["system"] == "Be verbose."


def test_ollama_uninstall_removes_the_model(fake_ollama, tmp_path, gguf_model):
    cfg = ollama_config(fake_ollama, tmp_path)
    install(gguf_model, cfg)
    assert uninstall("tiny", cfg) is True
    assert ollama.Client(host=fake_ollama.url).list().models == []
    assert uninstall("tiny", cfg) is False
    assert install(gguf_model, cfg).changed  # the record does not fool a reinstall


def test_ollama_from_shared_storage_still_uploads_because_ollama_keeps_its_own_copy(fake_ollama, tmp_path,
                                                                                    gguf_model):
    shared = tmp_path / "nfs" / "tiny.gguf"
    shared.parent.mkdir()
    shared.write_bytes(gguf_model.files["tiny.gguf"].read_bytes())
    result = install(gguf_model, ollama_config(fake_ollama, tmp_path), shared_path=shared)
    assert (result.shared, result.details["read_from_shared"]) == (False, True)
    assert f"FROM {shared}" in Path(result.details["modelfile"]).read_text()
    assert len(fake_ollama.uploads) == 1


def test_ollama_unreachable_is_reported_as_unavailable(tmp_path, gguf_model):
    cfg = BackendConfig("ollama", models_dir=tmp_path / "mf", url=f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        install(gguf_model, cfg)


def test_the_ollama_stand_in_checks_what_it_receives(fake_ollama, tmp_path):
    data = b"GGUF" + bytes(60)
    wrong = "sha256:" + "ab" * 32
    r = requests.post(f"{fake_ollama.url}/api/blobs/{wrong}", data=data, timeout=5)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    r = requests.post(f"{fake_ollama.url}/api/create", timeout=5,
                      json={"model": "x", "files": {"x.gguf": wrong}, "stream": False})
    assert r.status_code == 400 and "not found" in r.json()["error"]
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    digest = ollama.Client(host=fake_ollama.url).create_blob(path)
    for body, error in [({"template": "{% for m in messages %}{{ m }}{% endfor %}"}, "template error"),
                        ({"parameters": {"stopp": ["x"]}}, "unknown parameter"),
                        ({"parameters": {"stop": "x"}}, "list of strings")]:
        r = requests.post(f"{fake_ollama.url}/api/create", timeout=5,
                          json={"model": "x", "files": {"x.gguf": digest}, "stream": False, **body})
        assert r.status_code == 400 and error in r.json()["error"], body


# ---------------------------------------------------------------- Triton

def test_triton_load_and_ready(fake_triton, st_model):
    cfg = triton_config(fake_triton)
    result = install(st_model, cfg)
    assert result.changed and result.details == {"triton_model": ST, "version": 1, "ready": True}
    assert requests.get(f"{fake_triton.url}/v2/models/{ST}/ready", timeout=5).status_code == 200
    index = requests.post(f"{fake_triton.url}/v2/repository/index", json={"ready": True}, timeout=5).json()
    assert index == [{"name": ST, "state": "READY", "reason": "", "version": "1"}]
    assert os.listdir(fake_triton.repository) == [ST]  # staging stayed outside the repository...
    assert not any(p.name.endswith(".eldric-staging") for p in fake_triton.repository.parent.iterdir())  # ...and went
    assert Installer(cfg).is_serving(st_model.name, result.location) is True  # the readiness check after a job

    again = install(st_model, cfg)
    assert again.changed is False and fake_triton.loads == [ST]  # nothing copied, nothing reloaded


def test_triton_safetensors_from_shared_storage(fake_triton, st_model, tmp_path):
    shared = tmp_path / "nfs" / "acme-tiny-st"
    shared.mkdir(parents=True)
    for rel, path in st_model.files.items():
        (shared / rel).write_bytes(path.read_bytes())
    result = install(st_model, triton_config(fake_triton), shared_path=shared)
    assert result.shared and result.bytes_copied == 0
    version_dir = fake_triton.repository / "acme--tiny-st" / "1"
    assert os.readlink(version_dir / "model.safetensors") == str(shared / "model.safetensors")
    assert fake_triton.states["acme--tiny-st"]["state"] == "READY"


def test_triton_refusing_a_load_keeps_the_previous_model(fake_triton, st_model):
    install(st_model, triton_config(fake_triton))
    config_before = (fake_triton.repository / ST / "config.pbtxt").read_text()
    with pytest.raises(BackendError, match="unable to find backend library for backend 'nonesuch'"):
        install(st_model, triton_config(fake_triton, triton_backend="nonesuch"))
    assert (fake_triton.repository / ST / "config.pbtxt").read_text() == config_before
    assert os.listdir(fake_triton.repository) == [ST]
    assert install(st_model, triton_config(fake_triton)).changed is False


def test_triton_unreachable_keeps_the_files_and_a_retry_only_loads(tmp_path, st_model):
    repo = tmp_path / "repo"
    repo.mkdir()
    down = BackendConfig("triton", models_dir=repo, url=f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(BackendUnavailableError):
        install(st_model, down)
    assert (repo / ST / "config.pbtxt").is_file()
    with FakeTriton(repo) as server:
        retry = install(st_model, triton_config(server))
        assert retry.changed is False and server.loads == [ST]


def test_triton_uninstall_unloads_and_removes(fake_triton, st_model):
    cfg = triton_config(fake_triton)
    install(st_model, cfg)
    assert uninstall(st_model.name, cfg) is True
    assert not (fake_triton.repository / ST).exists()
    assert fake_triton.states[ST]["state"] == "UNAVAILABLE"
    assert requests.get(f"{fake_triton.url}/v2/models/{ST}/ready", timeout=5).status_code == 400
    assert Installer(cfg).is_serving(st_model.name, "") is False


# ---------------------------------------------------------------- a node serving every backend

def test_one_node_installs_into_every_backend_it_serves(fake_ollama, fake_triton, tmp_path, gguf_model, st_model):
    settings = AgentSettings.from_env({
        "ELDRIC_WORKER_NAME": "gpu01", "ELDRIC_WORKER_TYPE": "inference", "ELDRIC_DATA_DIR": str(tmp_path / "node"),
        "ELDRIC_BACKENDS": "ollama,vllm,tgi,llamacpp,triton", "ELDRIC_OLLAMA_URL": fake_ollama.url,
        "ELDRIC_TRITON_URL": fake_triton.url, "ELDRIC_TRITON_REPOSITORY": str(fake_triton.repository),
        "ELDRIC_BACKEND_TIMEOUT_SECONDS": "30"})
    configs = backend_configs(settings)
    assert list(configs) == ["ollama", "vllm", "tgi", "llamacpp", "triton"]
    gguf_backends = ("ollama", "vllm", "llamacpp")  # Triton and TGI are given safetensors
    locations = {name: install(gguf_model, configs[name]).location for name in gguf_backends}
    assert locations["vllm"] == str(tmp_path / "node" / "backends" / "vllm" / "tiny")
    assert locations["llamacpp"] == str(tmp_path / "node" / "backends" / "llamacpp" / "tiny.gguf")
    assert [m.model for m in ollama.Client(host=fake_ollama.url).list().models] == ["tiny:latest"]
    assert install(st_model, configs["tgi"]).changed and install(st_model, configs["triton"]).changed
    no_tokenizer = st_model.replace(files={k: v for k, v in st_model.files.items() if k != "tokenizer.json"})
    with pytest.raises(MissingFilesError, match="tokenizer"):
        install(no_tokenizer.replace(name="acme/no-tok"), configs["tgi"])
    assert not (tmp_path / "node" / "backends" / "tgi" / "acme--no-tok").exists()
    assert all(install(gguf_model, configs[name]).changed is False for name in gguf_backends)


# ---------------------------------------------------------------- a real llama.cpp

def test_llama_cpp_loads_the_installed_gguf_and_generates(tmp_path, gguf_model):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (it builds from source in ~4+ minutes: "
                            'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python==0.3.36)')
    result = install(gguf_model, BackendConfig("llamacpp", models_dir=tmp_path / "llamacpp"))
    llm = llama_cpp.Llama(model_path=result.location, n_ctx=64, n_threads=2, verbose=False)
    out = llm("hello", max_tokens=1, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 1

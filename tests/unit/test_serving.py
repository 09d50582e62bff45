"""worker_agent.serving: which backends of a node get a model, what its inventory says, and the
readiness answers that need no server (no sockets: servers are in tests/integration/test_pull_backends.py)."""

from __future__ import annotations

import json

import pytest

from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from worker_agent import serving
from worker_agent.catalog import Catalog
from worker_agent.installers import UnsupportedModelError
from worker_agent.installers.openai_models import lists
from worker_agent.settings import AgentSettings

TINY = ModelName.parse("tiny")
SHA = "sha256:" + "a" * 64


def settings(tmp_path, backends: str, **env: str) -> AgentSettings:
    return AgentSettings.from_env({"ELDRIC_WORKER_NAME": "gpu01", "ELDRIC_WORKER_TYPE": "inference",
                                   "ELDRIC_DATA_DIR": str(tmp_path), "ELDRIC_BACKENDS": backends, **env})


def manifest(*media_types: str) -> Manifest:
    layers = [{"mediaType": f"application/vnd.ollama.image.{m}", "digest": "sha256:" + str(i) * 64, "size": 10}
              for i, m in enumerate(media_types, start=1)]
    return Manifest.parse(json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "digest": SHA, "size": 2},
        "layers": layers}).encode())


class FakeStore:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_models(self) -> list[dict]:
        return [{"name": n, "digest": SHA, "size": 10, "format": "gguf"} for n in self.names]


class FakeAgent:
    def __init__(self, tmp_path, backends: str, store: list[str] = ()) -> None:
        self.settings = settings(tmp_path, backends)
        self.store = FakeStore(list(store))
        self.catalog = Catalog(tmp_path / "catalog")


def test_a_pull_goes_to_llamacpp_and_vllm_and_skips_tgi_and_triton_with_why(tmp_path):
    plan = serving.plan_pull(settings(tmp_path, "ollama,tgi,llamacpp,triton,vllm"), TINY, manifest("model"))
    assert list(plan.serving) == ["ollama", "llamacpp", "vllm"] and plan.format == "gguf"
    assert plan.skipped == {"tgi": "TGI serves safetensors models; this one is gguf",
                            "triton": "Triton serves safetensors models (its vLLM backend); this one is gguf"}
    assert plan.order == ("ollama", "tgi", "llamacpp", "triton", "vllm")
    assert list(plan.without("ollama").serving) == ["llamacpp", "vllm"]


def test_a_node_whose_backends_serve_none_of_a_pull_is_refused_with_every_reason(tmp_path):
    with pytest.raises(UnsupportedModelError) as err:
        serving.plan_pull(settings(tmp_path, "tgi,triton"), TINY, manifest("model"))
    assert str(err.value) == ("no backend on this node can serve tiny:latest (gguf): tgi: TGI serves safetensors "
                              "models; this one is gguf; triton: Triton serves safetensors models (its vLLM "
                              "backend); this one is gguf")


def test_a_manifest_without_a_gguf_layer_is_for_ollama_alone(tmp_path):
    plan = serving.plan_pull(settings(tmp_path, "ollama,llamacpp"), TINY, manifest("template", "params"))
    assert list(plan.serving) == ["ollama"] and plan.skipped == {"llamacpp": serving.NO_GGUF_LAYER}
    with pytest.raises(UnsupportedModelError, match="no backend on this node can serve tiny:latest"):
        serving.plan_pull(settings(tmp_path, "llamacpp"), TINY, manifest("template"))


@pytest.mark.parametrize("paths,fmt,served", [
    (["model.safetensors", "config.json", "tokenizer.json"], "safetensors", ["vllm", "tgi", "triton"]),
    (["x.gguf"], "gguf", ["ollama", "llamacpp", "vllm"]),
    (["adapter_config.json", "adapter_model.safetensors"], "lora", ["vllm", "tgi"]),
])
def test_a_distribution_goes_to_every_backend_serving_its_format(tmp_path, paths, fmt, served):
    plan = serving.plan_files(settings(tmp_path, "ollama,llamacpp,vllm,tgi,triton"), "acme/x", None, paths)
    assert plan.format == fmt and list(plan.serving) == served
    assert set(plan.skipped) == {"ollama", "llamacpp", "vllm", "tgi", "triton"} - set(served)


def test_readiness_without_an_api_to_ask_says_so(tmp_path):
    plan = serving.plan_pull(settings(tmp_path, "ollama,llamacpp,vllm"), TINY, manifest("model"))
    installed = {"ollama": serving.ollama_store_install(TINY, "/m"), "llamacpp": {"location": "/l/tiny.gguf"},
                 "vllm": {"location": "/v/tiny"}}
    # no ELDRIC_OLLAMA_URL: the store is Ollama's; no ELDRIC_LLAMACPP_URL / ELDRIC_VLLM_URL: nothing to ask
    assert serving.readiness(plan, installed) == {"ollama": "no API", "llamacpp": "no API", "vllm": "no API"}


@pytest.mark.parametrize("ids,listed", [
    (["/srv/node/backends/llamacpp/tiny.gguf"], True),  # llama-server --model PATH (its default id)
    (["tiny"], True),                                     # router mode (--models-dir), or --alias tiny
    (["tiny:latest"], True),                              # --alias with the Ollama name
    (["/elsewhere/tiny.gguf"], True),                     # the same file name, as llama-server lists it
    (["qwen2.5--0.5b", "some-other-model"], False),
    ([], False),
])
def test_a_v1_models_answer_lists_the_model_by_any_of_its_names(ids, listed):
    assert lists(ids, "tiny:latest", "/srv/node/backends/llamacpp/tiny.gguf") is listed


def test_the_inventory_lists_per_model_the_backends_serving_it(tmp_path):
    agent = FakeAgent(tmp_path, "llamacpp,vllm", store=["tiny:latest", "qwen2.5:0.5b"])
    (tmp_path / "backends" / "llamacpp").mkdir(parents=True)
    (tmp_path / "backends" / "llamacpp" / "tiny.gguf").write_bytes(b"GGUF")
    (tmp_path / "backends" / "vllm" / "tiny").mkdir(parents=True)
    models = {m["name"]: m for m in serving.local_models(agent)}
    assert models["tiny:latest"]["backends"] == ["llamacpp", "vllm"] and models["tiny:latest"]["backend"] == \
        "llamacpp,vllm"
    assert models["qwen2.5:0.5b"]["backends"] == [] and models["qwen2.5:0.5b"]["backend"] == "stored, not served"
    assert serving.installed_from_pull(agent, ModelName.parse("tiny")) == {"llamacpp": {}, "vllm": {}}
    assert serving.installed_from_pull(agent, ModelName.parse("qwen2.5:0.5b")) == {}


def test_an_ollama_node_serves_every_store_model(tmp_path):
    models = serving.local_models(FakeAgent(tmp_path, "ollama,tgi", store=["tiny:latest"]))
    assert [(m["name"], m["backends"]) for m in models] == [("tiny:latest", ["ollama"])]


def test_a_distributed_file_model_of_the_same_backend_name_is_not_the_pulls(tmp_path):
    """A distributed `tiny` and a pulled `tiny:latest` are both `tiny.gguf` in llama.cpp: the file is the
    catalog's, so the pull skips it, does not count it and its delete leaves it."""
    agent = FakeAgent(tmp_path, "ollama,llamacpp", store=["tiny:latest"])
    (tmp_path / "backends" / "llamacpp").mkdir(parents=True)
    (tmp_path / "backends" / "llamacpp" / "tiny.gguf").write_bytes(b"GGUF")
    agent.catalog.put({"name": "tiny", "format": "gguf", "files": [], "installed": {"llamacpp": {}}})
    models = {m["name"]: m for m in serving.local_models(agent)}
    assert models["tiny:latest"]["backends"] == ["ollama"] and models["tiny"]["backends"] == ["llamacpp"]
    assert serving.installed_from_pull(agent, TINY) == {}
    claims = serving.catalog_claims(agent, TINY)
    assert claims == {"llamacpp": "its tiny is the distributed file model tiny"}
    plan = serving.plan_pull(agent.settings, TINY, manifest("model"), claims)
    assert list(plan.serving) == ["ollama"] and plan.skipped == claims

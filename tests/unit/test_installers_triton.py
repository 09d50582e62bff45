"""worker_agent.installers.triton: config.pbtxt and the repository layout (no server involved)."""

from __future__ import annotations

import json

import pytest

from tests.support.fake_backends import MODEL_CONFIG_FIELDS, parse_pbtxt
from testbed.gguf_models import write_llama_gguf
from worker_agent.installers import BackendConfig, LocalModel, UnsupportedModelError, install
from worker_agent.installers.triton import Installer, render_config


def test_config_pbtxt_is_valid_protobuf_text_with_modelconfig_fields():
    config = parse_pbtxt(render_config("qwen2.5--0.5b", version=3, instance_count=2))
    assert set(config) <= MODEL_CONFIG_FIELDS
    assert config["name"] == ["qwen2.5--0.5b"] and config["backend"] == ["vllm"]
    assert config["max_batch_size"] == [0]
    assert config["version_policy"] == [{"specific": [{"versions": [3]}]}]
    assert config["instance_group"] == [{"count": [2], "kind": ["KIND_MODEL"]}]


def test_config_pbtxt_quotes_names():
    assert 'name: "a\\"b"' in render_config('a"b')


@pytest.mark.parametrize("bad", ['name: "x" backend', "name { ", 'name: "x" ]', "instance_group [ { count: 1 ",
                                 "name = 1"])
def test_the_test_parser_refuses_malformed_text(bad):
    with pytest.raises(ValueError):
        parse_pbtxt(bad)


def test_layout_puts_weights_and_model_json_under_the_version(tmp_path):
    src = tmp_path / "tiny-st"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    model = LocalModel.from_path("tiny", src, format="safetensors")
    installer = Installer(BackendConfig("triton", models_dir=tmp_path / "repo", url="http://127.0.0.1:9",
                                        options={"version": 2}))
    files = installer.layout(model, shared=False)
    assert sorted(files) == ["2/config.json", "2/model.json", "2/model.safetensors", "config.pbtxt"]
    assert json.loads(files["2/model.json"].data)["model"] == str(tmp_path / "repo" / "tiny" / "2")
    assert parse_pbtxt(files["config.pbtxt"].data.decode())["version_policy"] == [{"specific": [{"versions": [2]}]}]
    shared = installer.layout(model, shared=True)
    assert shared["2/model.safetensors"].link and shared["2/model.safetensors"].source == src / "model.safetensors"


def test_triton_skips_gguf_before_touching_the_repository(tmp_path):
    """Issue 22's per-backend rule: a GGUF goes to llama.cpp, vLLM and Ollama; Triton says why not."""
    model = LocalModel.from_path("tiny", write_llama_gguf(tmp_path / "tiny.gguf"))
    with pytest.raises(UnsupportedModelError, match=r"Triton serves safetensors models \(its vLLM backend\); this one is gguf"):
        install(model, BackendConfig("triton", models_dir=tmp_path / "repo", url="http://127.0.0.1:9"))
    assert not (tmp_path / "repo").exists()


def test_triton_refuses_lora_adapters_before_touching_the_repository(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 8}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\0" * 16)
    model = LocalModel.from_path("acme/adapter", tmp_path)
    with pytest.raises(UnsupportedModelError, match="lora"):
        install(model, BackendConfig("triton", models_dir=tmp_path / "repo", url="http://127.0.0.1:9"))
    assert not (tmp_path / "repo").exists()

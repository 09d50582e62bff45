"""Per-backend configuration: AgentSettings fields -> BackendConfig per served backend; the installer registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_agent import installers
from worker_agent.installers import (BackendConfig, InstallError, InstallResult, UnsupportedModelError,
                                     backend_configs, backends, installer_for, register)
from worker_agent.settings import AgentSettings

BASE = {"ELDRIC_WORKER_NAME": "gpu01", "ELDRIC_WORKER_TYPE": "inference"}


def settings(**env: str) -> AgentSettings:
    return AgentSettings.from_env({**BASE, **env})


def test_defaults_put_every_backend_under_the_data_dir(tmp_path):
    s = settings(ELDRIC_DATA_DIR=str(tmp_path), ELDRIC_BACKENDS="ollama,vllm,tgi,llamacpp,triton")
    assert (s.ollama_url, s.triton_url, s.backend_timeout_seconds) == \
        ("http://127.0.0.1:11434", "http://127.0.0.1:8000", 600.0)
    configs = backend_configs(s)
    assert {name: c.models_dir for name, c in configs.items()} == {
        name: tmp_path / "backends" / name for name in ("ollama", "vllm", "tgi", "llamacpp", "triton")}
    assert configs["ollama"].url == "http://127.0.0.1:11434" and configs["triton"].url == "http://127.0.0.1:8000"
    assert configs["vllm"].url is None


def test_environment_sets_each_backends_place(tmp_path):
    s = settings(ELDRIC_BACKENDS="vllm, triton", ELDRIC_VLLM_MODELS_DIR=str(tmp_path / "serve"),
                 ELDRIC_TGI_MODELS_DIR="/data/tgi", ELDRIC_LLAMACPP_MODELS_DIR="/data/gguf",
                 ELDRIC_TRITON_REPOSITORY=str(tmp_path / "repo"), ELDRIC_TRITON_URL="http://triton:8000",
                 ELDRIC_OLLAMA_URL="http://ollama:11434", ELDRIC_BACKEND_TIMEOUT_SECONDS="30")
    assert (s.tgi_models_dir, s.llamacpp_models_dir, s.ollama_url) == \
        (Path("/data/tgi"), Path("/data/gguf"), "http://ollama:11434")
    configs = backend_configs(s)
    assert list(configs) == ["vllm", "triton"]  # only what the node serves
    assert configs["vllm"] == BackendConfig("vllm", models_dir=tmp_path / "serve", timeout=30.0)
    assert configs["triton"] == BackendConfig("triton", models_dir=tmp_path / "repo", url="http://triton:8000",
                                              timeout=30.0)


def test_an_unknown_backend_is_refused():
    with pytest.raises(InstallError, match="unknown backend 'sglang'"):
        backend_configs(settings(ELDRIC_BACKENDS="ollama,sglang"))


def test_the_registry_knows_the_five_backends_and_takes_more(monkeypatch):
    monkeypatch.setattr(installers, "_INSTALLERS", dict(installers._INSTALLERS))  # registering is global
    assert set(backends()) >= {"ollama", "vllm", "tgi", "llamacpp", "triton"}
    with pytest.raises(UnsupportedModelError, match="no installer for backend 'nope'"):
        installer_for(BackendConfig("nope"))

    class Echo:
        backend = "echo"

        def __init__(self, config):
            self.config = config

        def install(self, model, *, shared=False):
            return InstallResult("echo", model.name, "nowhere", changed=False)

        def uninstall(self, name):
            return False

    register("echo", Echo)
    assert isinstance(installer_for(BackendConfig("echo")), Echo)


@pytest.mark.parametrize("backend,missing", [("vllm", "ELDRIC_VLLM_MODELS_DIR"), ("tgi", "ELDRIC_TGI_MODELS_DIR"),
                                             ("llamacpp", "ELDRIC_LLAMACPP_MODELS_DIR"),
                                             ("triton", "ELDRIC_TRITON_REPOSITORY")])
def test_an_installer_without_its_directory_says_which_setting(backend, missing):
    with pytest.raises(InstallError, match=missing):
        installer_for(BackendConfig(backend))

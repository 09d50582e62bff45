"""worker_agent.settings: the agent's settings from defaults, ELDRIC_* variables and explicit arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eldric.cluster.shared_settings import DEFAULT_OLLAMA_REGISTRY
from eldric.core.settings import SettingsError
from worker_agent.settings import AgentSettings

BASE = {"ELDRIC_WORKER_NAME": "gpu01", "ELDRIC_WORKER_TYPE": "inference"}


def load(env: dict | None = None, **explicit) -> AgentSettings:
    return AgentSettings.from_env({**BASE, **(env or {})}, **explicit)


def test_defaults():
    s = load()
    assert (s.worker_id, s.worker_type) == ("gpu01", "inference")
    assert s.data_dir == Path.home() / ".eldric" / "gpu01"
    assert s.models_dir == s.data_dir / "ollama" / "models"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.host == "127.0.0.1"
    assert s.port is None and s.http_port == 8890
    assert s.ollama_registry == DEFAULT_OLLAMA_REGISTRY == "https://registry.ollama.ai"
    assert s.insecure_registries == ()
    assert s.backends == ("ollama",)
    assert s.heartbeat_seconds == 5.0
    assert s.pull_retries == 5


def test_every_setting_names_its_variable_and_says_what_it_is():
    table = AgentSettings.table()
    assert len(table) == len(AgentSettings.model_fields)
    for variable, _default, meaning in table:
        assert variable.startswith("ELDRIC_") and meaning, variable
    assert AgentSettings.env_name("worker_id") == "ELDRIC_WORKER_NAME"
    assert AgentSettings.env_name("download_parts") == "ELDRIC_DOWNLOAD_PARTS"


def test_the_process_environment_is_not_read_when_a_mapping_is_given(monkeypatch):
    monkeypatch.setenv("ELDRIC_WORKER_NAME", "from-process")
    assert load().worker_id == "gpu01"


def test_values_are_parsed_from_the_environment(tmp_path):
    s = load({
        "ELDRIC_DATA_DIR": str(tmp_path / "node"),
        "ELDRIC_REDIS_URL": "redis://redis:6380/2",
        "ELDRIC_AGENT_PORT": "9000",
        "ELDRIC_OLLAMA_MODELS": str(tmp_path / "models"),
        "ELDRIC_OLLAMA_REGISTRY": "http://mirror:5000",
        "ELDRIC_INSECURE_REGISTRIES": " mirror:5000, lab.local ,,",
        "ELDRIC_BACKENDS": "ollama,vllm",
        "ELDRIC_HEARTBEAT_SECONDS": "1.5",
        "ELDRIC_AGENT_CONCURRENCY": "8",
        "ELDRIC_DOWNLOAD_PARTS": "16",
        "ELDRIC_PULL_RETRIES": "0",
        "ELDRIC_RETRY_BASE_SECONDS": "0.5",
    })
    assert s.data_dir == tmp_path / "node"
    assert s.redis_url == "redis://redis:6380/2"
    assert s.port == 9000 and s.http_port == 9000
    assert s.models_dir == tmp_path / "models"
    assert s.ollama_registry == "http://mirror:5000"
    assert s.insecure_registries == ("mirror:5000", "lab.local")
    assert s.backends == ("ollama", "vllm")
    assert s.heartbeat_seconds == 1.5
    assert (s.concurrency, s.download_parts, s.pull_retries) == (8, 16, 0)
    assert s.retry_base_seconds == 0.5


def test_data_dir_expands_the_home_directory():
    assert load({"ELDRIC_DATA_DIR": "~/eldric"}).data_dir == Path.home() / "eldric"


def test_empty_variables_count_as_unset():
    s = load({"ELDRIC_BACKENDS": "", "ELDRIC_AGENT_PORT": "", "ELDRIC_HEARTBEAT_SECONDS": ""})
    assert (s.backends, s.port, s.heartbeat_seconds) == (("ollama",), None, 5.0)


def test_explicit_arguments_win_over_the_environment(tmp_path):
    s = load({"ELDRIC_AGENT_PORT": "9000", "ELDRIC_DATA_DIR": "/elsewhere", "ELDRIC_WORKER_TYPE": "cloud"},
             worker_id="cli-name", worker_type="inference", port=9100, data_dir=tmp_path)
    assert (s.worker_id, s.worker_type, s.port, s.data_dir) == ("cli-name", "inference", 9100, tmp_path)


def test_explicit_none_falls_back_to_the_environment():
    assert load({"ELDRIC_AGENT_PORT": "9000"}, port=None).port == 9000


def test_explicit_worker_id_sets_the_default_data_dir():
    assert load(worker_id="other").data_dir == Path.home() / ".eldric" / "other"


@pytest.mark.parametrize(
    "env, explicit, port",
    [
        ({}, {}, 8890),
        ({"ELDRIC_WORKER_TYPE": "cloud"}, {}, 8889),
        ({"ELDRIC_WORKER_TYPE": "data"}, {}, 8892),
        ({"ELDRIC_AGENT_PORT": "0"}, {}, 0),
        ({}, {"port": 0}, 0),
        ({"ELDRIC_AGENT_PORT": "9000"}, {"port": 0}, 0),
    ],
)
def test_port_none_means_the_types_port_and_zero_means_pick_a_free_one(env, explicit, port):
    assert load(env, **explicit).http_port == port


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"ELDRIC_WORKER_NAME": ""}, "missing setting"),
        ({"ELDRIC_WORKER_TYPE": ""}, "missing setting"),
        ({"ELDRIC_WORKER_NAME": "bad name"}, "invalid worker name"),
        ({"ELDRIC_WORKER_NAME": "../x"}, "invalid worker name"),
        ({"ELDRIC_WORKER_NAME": "n" * 64}, "invalid worker name"),
        ({"ELDRIC_WORKER_TYPE": "gpu"}, "invalid worker type"),
        ({"ELDRIC_AGENT_PORT": "http"}, "port"),
        ({"ELDRIC_AGENT_PORT": "80.5"}, "port"),
        ({"ELDRIC_HEARTBEAT_SECONDS": "soon"}, "heartbeat_seconds"),
        ({"ELDRIC_AGENT_CONCURRENCY": "four"}, "concurrency"),
        ({"ELDRIC_AGENT_CONCURRENCY": "0"}, "concurrency"),
        ({"ELDRIC_DOWNLOAD_PARTS": "0"}, "download_parts"),
        ({"ELDRIC_PART_BYTES": "0"}, "part_bytes"),
        ({"ELDRIC_PULL_RETRIES": "-1"}, "pull_retries"),
        ({"ELDRIC_OLLAMA_REGISTRY": "registry.ollama.ai"}, "http(s) URL"),
        ({"ELDRIC_OLLAMA_REGISTRY": "ftp://mirror"}, "http(s) URL"),
    ],
)
def test_bad_values_fail_at_start_with_a_settings_error(env, fragment):
    with pytest.raises(SettingsError) as info:
        load(env)
    assert fragment in str(info.value)


def test_missing_everything_is_a_settings_error():
    with pytest.raises(SettingsError, match="missing setting"):
        AgentSettings.from_env({})


def test_settings_error_is_a_value_error():
    with pytest.raises(ValueError):
        load({"ELDRIC_WORKER_TYPE": "gpu"})


@pytest.mark.parametrize(
    "env",
    [{"ELDRIC_HEARTBEAT_SECONDS": "0"}, {"ELDRIC_HEARTBEAT_SECONDS": "-1"}, {"ELDRIC_HEARTBEAT_SECONDS": "nan"},
     {"ELDRIC_STALL_SECONDS": "0"}, {"ELDRIC_STALL_SECONDS": "-5"}],
    ids=["heartbeat-0", "heartbeat-negative", "heartbeat-nan", "stall-0", "stall-negative"],
)
def test_non_positive_durations_are_refused(env):
    with pytest.raises(SettingsError):
        load(env)


def test_settings_are_frozen():
    s = load()
    with pytest.raises(ValidationError, match="frozen"):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("retries, nominal", [(0, 2.0), (1, 4.0), (2, 8.0), (5, 64.0), (6, 120.0), (30, 120.0)])
def test_retry_delay_doubles_up_to_the_cap_with_jitter(retries, nominal):
    delays = {load().retry_delay(retries) for _ in range(50)}
    assert all(nominal / 2 <= d <= nominal for d in delays)
    assert len(delays) > 1, "jittered: 200 workers retrying one registry must not wake together"


def test_retry_delay_uses_the_configured_base_and_cap():
    s = load({"ELDRIC_RETRY_BASE_SECONDS": "0.2", "ELDRIC_RETRY_MAX_SECONDS": "1"})
    for n, nominal in enumerate([0.2, 0.4, 0.8, 1.0, 1.0]):
        assert nominal / 2 <= s.retry_delay(n) <= nominal

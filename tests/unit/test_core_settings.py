"""eldric.core.settings: one loader for every service's ELDRIC_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from controller.config import ControllerSettings
from controller.config import from_env as controller_config
from eldric.core.settings import CommaList, EnvSettings, SettingsError, Size, UserPath, parse_size
from registry.server import RegistrySettings


class Demo(EnvSettings):
    name: str = Field(validation_alias="ELDRIC_DEMO_NAME", description="a required setting")
    parts: int = Field(8, ge=1, description="a bounded integer")
    hosts: CommaList = Field((), description="a comma list")
    limit: Size = Field(1 << 30, description="a size")
    home: UserPath | None = Field(None, description="a path")


def test_explicit_beats_environment_beats_default():
    env = {"ELDRIC_DEMO_NAME": "env", "ELDRIC_PARTS": "4"}
    assert (Demo.from_env(env).name, Demo.from_env(env).parts) == ("env", 4)
    assert Demo.from_env(env, name="flag", parts=None).name == "flag"  # None: the flag was not given
    assert Demo.from_env({"ELDRIC_DEMO_NAME": "x"}).parts == 8


def test_values_are_converted_from_text():
    s = Demo.from_env({"ELDRIC_DEMO_NAME": "x", "ELDRIC_HOSTS": " a:5000, b ,,", "ELDRIC_LIMIT": "512M",
                       "ELDRIC_HOME": "~/models"})
    assert s.hosts == ("a:5000", "b")
    assert s.limit == 512 << 20
    assert s.home == Path.home() / "models"


def test_empty_variables_count_as_unset():
    assert Demo.from_env({"ELDRIC_DEMO_NAME": "x", "ELDRIC_PARTS": ""}).parts == 8


def test_every_bad_value_is_named_with_its_variable_in_one_error():
    with pytest.raises(SettingsError) as info:
        Demo.from_env({"ELDRIC_PARTS": "0", "ELDRIC_LIMIT": "lots"})
    text = str(info.value)
    assert "missing setting: ELDRIC_DEMO_NAME (a required setting)" in text
    assert "parts (ELDRIC_PARTS): Input should be greater than or equal to 1, got '0'" in text
    assert "limit (ELDRIC_LIMIT): not a size: 'lots'" in text
    assert isinstance(info.value, ValueError)


def test_only_from_env_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("ELDRIC_CLUSTER_SECRET", "from-process")
    monkeypatch.setenv("ELDRIC_REGISTRY_PORT", "9999")
    assert RegistrySettings().token == "" and RegistrySettings().port == 8892
    assert RegistrySettings.from_env().token == "from-process"
    assert RegistrySettings.from_env().port == 9999


def test_the_table_lists_variable_default_and_meaning_in_order():
    assert Demo.table()[:2] == [("ELDRIC_DEMO_NAME", Demo.model_fields["name"].default, "a required setting"),
                                ("ELDRIC_PARTS", 8, "a bounded integer")]


def test_controller_config_keeps_flask_names():
    config = controller_config({"ELDRIC_JOB_DEADLINE_SECONDS": "60", "ELDRIC_API_TOKEN": "t"})
    assert config["JOB_DEADLINE_SECONDS"] == 60 and config["API_TOKEN"] == "t"
    assert config["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "CONTROLLER_PORT" not in config  # the listen address belongs to the command


def test_controller_refuses_a_non_integer_deadline():
    with pytest.raises(SettingsError, match=r"job_deadline_seconds \(ELDRIC_JOB_DEADLINE_SECONDS\)"):
        ControllerSettings.from_env({"ELDRIC_JOB_DEADLINE_SECONDS": "6h"})


def test_registry_sizes_accept_binary_units_from_flags_and_environment():
    s = RegistrySettings.from_env({"ELDRIC_REGISTRY_MAX_FILE_SIZE": "200G"}, min_free_bytes="0")
    assert (s.max_file_bytes, s.min_free_bytes) == (200 << 30, 0)


@pytest.mark.parametrize("raw, expected", [("1048576", 1 << 20), ("512M", 512 << 20), ("1TiB", 1 << 40), (7, 7)])
def test_parse_size(raw, expected):
    assert parse_size(raw) == expected


def test_the_effective_configuration_masks_secrets():
    text = RegistrySettings.from_env({"ELDRIC_CLUSTER_SECRET": "hunter2", "ELDRIC_REGISTRY_PORT": "9001"}).effective()
    assert "ELDRIC_CLUSTER_SECRET=(set)" in text and "hunter2" not in text
    assert "ELDRIC_REGISTRY_PORT=9001" in text
    controller = ControllerSettings.from_env({"ELDRIC_API_TOKEN": ""}).effective()
    assert "ELDRIC_API_TOKEN=(empty)" in controller


def test_the_effective_configuration_masks_credentials_and_queries_in_urls():
    text = ControllerSettings.from_env({"ELDRIC_REDIS_URL": "redis://:s3cret@redis:6379/0"}).effective()
    assert "ELDRIC_REDIS_URL=redis://***@redis:6379/0" in text and "s3cret" not in text
    text = ControllerSettings.from_env({"ELDRIC_REDIS_URL": "sentinel://app:pw@s1:26379,s2/0?master=m"}).effective()
    assert "pw@" not in text and "sentinel://***@s1:26379,s2/0 " in text
    text = ControllerSettings.from_env({"ELDRIC_REDIS_URL": "redis://redis:6379/0?password=s3cret"}).effective()
    assert "ELDRIC_REDIS_URL=redis://redis:6379/0 " in text and "s3cret" not in text


@pytest.mark.parametrize("url, fragment", [
    ("sentinel://s1:26379,s2:26379/0", "add ?master=NAME"),
    ("http://redis:6379/0", "is not a Redis URL"),
    ("sentinel://:hunter2@s1/x?master=m", "must be a number"),
])
def test_a_bad_redis_url_stops_every_service_with_one_line_and_no_password(url, fragment):
    from eldric.cli import FlowerSettings
    from eldric.cluster.schedules import ScheduleSettings
    from worker_agent.settings import AgentSettings
    base = {"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference"}
    for settings in (ControllerSettings, AgentSettings, RegistrySettings, ScheduleSettings, FlowerSettings):
        with pytest.raises(ValueError) as info:  # each service's SettingsError
            settings.from_env({**base, "ELDRIC_REDIS_URL": url})
        text = str(info.value)
        assert "redis_url (ELDRIC_REDIS_URL)" in text and fragment in text and "hunter2" not in text, (settings, text)


def test_redis_sentinel_and_unix_urls_are_accepted():
    for url in ("redis://:pw@h:6379/1", "rediss://h/0", "unix:///run/redis.sock", "sentinel://a,b:26380/2?master=m"):
        assert ControllerSettings.from_env({"ELDRIC_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("settings, env, message", [
    (ControllerSettings, {"ELDRIC_OLLAMA_REGISTRY": "registry.ollama.ai"},
     r"ollama_registry \(ELDRIC_OLLAMA_REGISTRY\): must be an http\(s\) URL"),
    (RegistrySettings, {"ELDRIC_URL_ALLOWLIST": "10.0.0.0/33"},
     r"url_allowlist \(ELDRIC_URL_ALLOWLIST\): not an address, network or host name: '10.0.0.0/33'"),
])
def test_a_shared_setting_is_checked_in_every_service_that_reads_it(settings, env, message):
    with pytest.raises(SettingsError, match=message):
        settings.from_env(env)

"""eldric.transfer.upstreams: the registry hosts model names may name, the addresses connections may reach."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from eldric.core.names import ModelName
from eldric.transfer.errors import HostNotAllowedError
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy, RegistryAllowList
from eldric.core.settings import SettingsError
from worker_agent.settings import AgentSettings
from eldric.transfer.registry_upstream import registry_base_url
from worker_agent.sources import RegistrySource

ALLOW = RegistryAllowList.build(("registry.lan:5000",), mirror="http://mirror.lan:8080", insecure=("lab.local",))


@pytest.mark.parametrize("host, allowed", [
    ("registry.ollama.ai", True),
    ("hf.co", True),
    ("HF.co", True),
    ("hf.co:443", True),  # an entry without a port allows every port of its host
    ("mirror.lan:8080", True),
    ("mirror.lan", False),  # the mirror is allowed at its own port only
    ("mirror.lan:9090", False),
    ("registry.lan:5000", True),
    ("registry.lan", False),
    ("lab.local", True),
    ("169.254.169.254", False),
    ("127.0.0.1", False),
    ("evil.example", False),
    ("huggingface.co", False),
])
def test_registry_allow_list(host, allowed):
    assert ALLOW.allows(host) is allowed


def test_a_name_outside_the_allow_list_is_refused_naming_what_is_allowed():
    with pytest.raises(HostNotAllowedError) as info:
        ALLOW.check(ModelName.parse("evil.example/x/y:1"))
    assert str(info.value) == ("registry evil.example is not allowed: model names may name hf.co, lab.local, "
                               "mirror.lan:8080, registry.lan:5000, registry.ollama.ai "
                               "(ELDRIC_ALLOWED_REGISTRIES adds hosts)")


def test_default_names_go_to_the_mirror_and_others_to_their_allowed_host():
    assert registry_base_url(ModelName.parse("qwen2.5:0.5b"), "http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert registry_base_url(ModelName.parse("hf.co/bartowski/x:Q4"), "https://registry.ollama.ai") == "https://hf.co"
    assert registry_base_url(ModelName.parse("lab.local/a/b"), "https://registry.ollama.ai",
                             ("lab.local",)) == "http://lab.local"
    with pytest.raises(HostNotAllowedError):
        registry_base_url(ModelName.parse("10.0.0.5:5000/a/b"), "https://registry.ollama.ai")


def test_a_model_name_naming_the_metadata_address_is_refused_before_any_connection(monkeypatch):
    """Issue 11 finding 5: `169.254.169.254/library/x` was pulled from, like any host a name names."""
    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be resolved or connected for a refused name")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    settings = AgentSettings(worker_id="w1", worker_type="inference", ollama_registry="http://127.0.0.1:5000")
    with pytest.raises(HostNotAllowedError, match=r"^registry 169\.254\.169\.254 is not allowed"):
        RegistrySource.from_settings(ModelName.parse("169.254.169.254/library/x"), settings)


def test_allowed_registries_extend_the_list():
    settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                       "ELDRIC_ALLOWED_REGISTRIES": "registry.lan:5000, quay.example"})
    source = RegistrySource.from_settings(ModelName.parse("registry.lan:5000/team/m:1"), settings)
    assert source.base_url == "https://registry.lan:5000"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True),
    ("2606:4700:4700::1111", True),
    ("127.0.0.1", False),
    ("10.1.2.3", False),
    ("172.16.0.1", False),
    ("192.168.1.1", False),
    ("169.254.169.254", False),  # AWS, GCP, Azure metadata
    ("100.100.100.200", False),  # Alibaba metadata, in the shared 100.64/10
    ("0.0.0.0", False),
    ("224.0.0.1", False),
    ("::1", False),
    ("fe80::1", False),
    ("fd00:ec2::254", False),  # AWS metadata over IPv6
    ("::ffff:169.254.169.254", False),  # IPv4-mapped
    ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
])
def test_only_public_addresses_pass_without_an_allow_list(address, public):
    assert PUBLIC_ONLY.allows_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("address, allowed", [
    ("10.9.8.7", True), ("127.0.0.1", True), ("::ffff:127.0.0.1", True), ("127.0.0.2", False),
    ("169.254.169.254", False), ("fd12::1", True), ("8.8.8.8", True),
])
def test_the_allow_list_names_addresses_and_networks(address, allowed):
    policy = AddressPolicy.parse([" 10.0.0.0/8", "127.0.0.1", "fd00::/8 ", ""])
    assert policy.allows_address(ipaddress.ip_address(address)) is allowed


def test_resolve_refuses_an_internal_address_and_says_how_to_allow_it():
    with pytest.raises(HostNotAllowedError) as info:
        PUBLIC_ONLY.resolve("169.254.169.254", 80)
    assert str(info.value) == ("refused to connect to 169.254.169.254: a link-local address (cloud metadata "
                               "services live there); ELDRIC_URL_ALLOWLIST may allow it")
    assert AddressPolicy.parse(["169.254.169.254"]).resolve("169.254.169.254", 80)


def test_a_configured_origin_is_trusted_at_its_port_only():
    policy = PUBLIC_ONLY.trusting("http://127.0.0.1:5000/")
    assert policy.resolve("127.0.0.1", 5000)
    with pytest.raises(HostNotAllowedError, match="loopback"):
        policy.resolve("127.0.0.1", 5001)
    assert PUBLIC_ONLY.trusting("https://mirror.lan").is_trusted_host("MIRROR.lan", 443)


@pytest.mark.parametrize("url, refused", [
    ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is a link-local address"),
    ("http://[::ffff:127.0.0.1]:8080/x.gguf", "refused: ::ffff:127.0.0.1 is a loopback address"),
    ("https://10.0.0.5/x.gguf", "refused: 10.0.0.5 is a private address"),
    ("https://8.8.8.8/x.gguf", None),
    ("https://huggingface.co/x.gguf", None),  # a name: judged when the agent connects, after DNS
])
def test_a_queuing_service_can_refuse_literal_internal_addresses_without_dns(url, refused, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("no lookup"))
    if refused is None:
        PUBLIC_ONLY.check_literal(url)
    else:
        with pytest.raises(HostNotAllowedError, match=f"^{re.escape(refused)}"):
            PUBLIC_ONLY.check_literal(url)
    AddressPolicy.parse(["0.0.0.0/0", "::/0"]).check_literal(url)  # an allow-list may name them all


@pytest.mark.parametrize("env, message", [
    ({"ELDRIC_URL_ALLOWLIST": "10.0.0.0/33"}, r"url_allowlist \(ELDRIC_URL_ALLOWLIST\): not an address, network "
                                              r"or host name: '10.0.0.0/33'"),
    ({"ELDRIC_URL_ALLOWLIST": "http://files.lan/"}, r"ELDRIC_URL_ALLOWLIST\): not an address"),
    ({"ELDRIC_ALLOWED_REGISTRIES": "registry.lan:99999"}, r"allowed_registries \(ELDRIC_ALLOWED_REGISTRIES\): "
                                                          r"not a host or host:port: 'registry.lan:99999'"),
])
def test_bad_allow_list_entries_stop_the_agent_at_start(env, message):
    with pytest.raises(SettingsError, match=message):
        AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference", **env})

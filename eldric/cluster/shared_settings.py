"""The settings several services read, each declared once: Redis, upstream registries, the address allow-list.

A service's settings class (`controller/config.py`, `worker_agent/settings.py`, `registry/server.py`,
`eldric/cluster/schedules.py`, `eldric/cli.py`'s Flower settings) inherits the blocks it reads, so a
shared variable has one default, one description and one check in every service. The blocks live in
the cluster layer because their checks do: Redis URLs here (`redisconn`), allow-lists in
`eldric.transfer.upstreams`; every service may import this layer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from eldric.cluster.redisconn import RedisURL
from eldric.core.settings import CommaList, EnvSettings
from eldric.transfer.upstreams import checked_address_entries, checked_registry_hosts

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OLLAMA_REGISTRY = "https://registry.ollama.ai"


class RedisSettings(EnvSettings):
    """ELDRIC_REDIS_URL for a service that cannot run without Redis."""

    redis_url: RedisURL = Field(DEFAULT_REDIS_URL, description="Redis: Celery broker and all cluster state")


class OptionalRedisSettings(EnvSettings):
    """ELDRIC_REDIS_URL for the registry, which runs without Redis and uses it only for URL-import progress."""

    redis_url: RedisURL | None = Field(None, description="Redis for the progress of URL imports the controller starts")


class UpstreamSettings(EnvSettings):
    """Where registry names are pulled from and which registry hosts names may name (agents; the controller checks names)."""

    ollama_registry: str = Field(DEFAULT_OLLAMA_REGISTRY,
                                 description="base URL serving registry.ollama.ai names (a mirror's http:// URL works)")
    insecure_registries: CommaList = Field((), description="comma list of hosts in model names reached over http")
    allowed_registries: Annotated[CommaList, AfterValidator(checked_registry_hosts)] = Field(
        (), description="comma list of registry hosts (host or host:port) model names may name, besides registry.ollama.ai, "
                        "hf.co, the mirror and the insecure registries")

    @field_validator("ollama_registry")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value


class AddressPolicySettings(EnvSettings):
    """The internal addresses connections outside the cluster may reach (eldric.transfer.upstreams.AddressPolicy)."""

    url_allowlist: Annotated[CommaList, AfterValidator(checked_address_entries)] = Field(
        (), description="comma list of addresses, networks (CIDR) or host names that url sources, URL imports, redirects "
                        "and token realms may reach although loopback, private or link-local")

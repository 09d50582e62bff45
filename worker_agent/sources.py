"""Blob sources: where a model's manifest and blobs come from.

Every source offers the same two calls to the download engine — `fetch_manifest`
and `open_range` — so a new source (data-node registry, peer worker, URL) plugs in
without touching the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import requests

from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError
from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from eldric.core.redaction import host_of, redact_url
from eldric.transfer.errors import ModelNotFoundError, SourceError, SourceUnavailableError
from eldric.transfer.http import error_text, raise_for_registry_status
from eldric.transfer.oci_client import OciClient, OciClientError
from eldric.transfer.retry import NO_HINTS, Hints, is_plain_http_refusal
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy, RegistryAllowList

if TYPE_CHECKING:
    from worker_agent.settings import AgentSettings


class BlobSource(Protocol):
    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]: ...

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response: ...

    def describe(self) -> str: ...


def registry_base_url(name: ModelName, mirror: str, insecure_hosts: tuple[str, ...] = (),
                      allowed: tuple[str, ...] = ()) -> str:
    """The URL serving `name`: the configured mirror for registry.ollama.ai, else the name's host.

    HostNotAllowedError, before any connection, for a host outside the allow-list
    (eldric.transfer.upstreams: the defaults, the mirror, `insecure_hosts` and `allowed`).
    """
    RegistryAllowList.build(allowed, mirror=mirror, insecure=insecure_hosts).check(name)
    if name.is_default_host:
        return mirror.rstrip("/")
    scheme = "http" if name.host in insecure_hosts else "https"
    return f"{scheme}://{name.host}"


CA_HINT = "give its CA certificate in REQUESTS_CA_BUNDLE"


def registry_hints(name: ModelName, base_url: str) -> Hints:
    """The settings that mend a failed connection to `base_url`, the registry serving `name`.

    A mirror's credentials show as `***@` (the same ones stay in the setting)."""
    where = redact_url(base_url).partition("://")[2]
    if name.is_default_host:
        return Hints(name_not_found="set ELDRIC_OLLAMA_REGISTRY to a reachable mirror",
                     tls_to_plain_http=f"set ELDRIC_OLLAMA_REGISTRY to http://{where}",
                     plain_http_to_tls=f"set ELDRIC_OLLAMA_REGISTRY to https://{where}", certificate=CA_HINT)
    return Hints(name_not_found=f"check the registry host in '{name.short}'",
                 tls_to_plain_http="add it to ELDRIC_INSECURE_REGISTRIES",
                 plain_http_to_tls="remove it from ELDRIC_INSECURE_REGISTRIES", certificate=CA_HINT)


class RegistrySource:
    """Docker Registry v2 / OCI distribution, as the Ollama registry (and docker-registry) serve it:
    the download engine's BlobSource over the one OCI client (eldric/transfer/oci_client.py).

    Its connections may reach the registry itself and public addresses (a CDN the registry
    redirects to, a token realm); anything else only when `policy` allows it.
    """

    def __init__(self, base_url: str, session: requests.Session | None = None,
                 policy: AddressPolicy = PUBLIC_ONLY, hints: Hints = NO_HINTS) -> None:
        self.client = OciClient.upstream(base_url, policy, session, hints=hints)
        self.base_url, self.hints = self.client.base, hints
        self.session = self.client.session  # the one its bytes come through (a rate cap paces it)

    @classmethod
    def from_settings(cls, name: ModelName, s: AgentSettings) -> RegistrySource:
        """The source of `name` under the agent's mirror, insecure hosts and both allow-lists."""
        base = registry_base_url(name, s.ollama_registry, s.insecure_registries, s.allowed_registries)
        return cls(base, policy=AddressPolicy.parse(s.url_allowlist), hints=registry_hints(name, base))

    def describe(self) -> str:
        """The registry as job records show it: a mirror's credentials never appear."""
        return redact_url(self.base_url)

    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        with _as_source_errors():
            resp = self.client.manifest(name.repository, name.tag)  # MANIFEST_TIMEOUT
            if resp.status_code == 404:
                raise ModelNotFoundError(f"model '{name.short}' not found at {self.describe()}: {error_text(resp)}")
            self._raise_for_status(resp, f"manifest of {name.short}")
            raw, _ = self.client.read_manifest(resp, f"the manifest of {name.short}")
        try:
            return raw, Manifest.parse(raw)
        except InvalidManifestError as exc:
            raise SourceError(f"unusable manifest for {name.short}: {exc}") from None

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response:
        with _as_source_errors():
            resp = self.client.blob(name.repository, digest, start=start, end=end, timeout=read_timeout)
        if resp.status_code == 404:
            resp.close()
            raise SourceError(f"blob {digest} not found at {self.describe()}")
        self._raise_for_status(resp, f"blob {digest}")
        return resp

    def _raise_for_status(self, resp: requests.Response, what: str) -> None:
        """raise_for_registry_status, with the hint when a TLS server refused plain http (Go's and nginx's 400)."""
        if resp.status_code == 400:
            text = error_text(resp)
            if is_plain_http_refusal(400, text):
                raise SourceError(f"{host_of(self.base_url)} speaks https, not plain http; "
                                  f"{self.hints.plain_http_to_tls}".rstrip("; "))
            raise SourceError(f"{what}: registry answered 400: {text}")
        raise_for_registry_status(resp, what)


@contextmanager
def _as_source_errors() -> Iterator[None]:
    """The OCI client's failures in the download engine's words: SourceUnavailableError is retried."""
    try:
        yield
    except OciClientError as exc:
        raise (SourceUnavailableError if exc.transient else SourceError)(str(exc)) from None

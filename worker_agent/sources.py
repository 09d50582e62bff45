"""Blob sources: where a model's manifest and blobs come from.

Every source offers the same two calls to the download engine — `fetch_manifest`
and `open_range` — so a new source (data-node registry, peer worker, URL) plugs in
without touching the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import requests

from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError, cap_text
from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST, Manifest
from eldric.core.names import ModelName
from eldric.transfer.http import error_text, raise_for_registry_status, read_small_body, upstream_session
from eldric.transfer.registry_token import anonymous_token, bearer_challenge
from eldric.transfer.retry import NO_HINTS, TRANSIENT_ERRORS, Hints, connection_error, is_plain_http_refusal
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy, RegistryAllowList
from eldric.transfer.urlfetch import redact as redact_url
from eldric.transfer.errors import ModelNotFoundError, SourceError

if TYPE_CHECKING:
    from worker_agent.settings import AgentSettings

CONNECT_TIMEOUT = 10.0


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
    """The settings that mend a failed connection to `base_url`, the registry serving `name`."""
    netloc = urlsplit(base_url).netloc
    if name.is_default_host:
        return Hints(name_not_found="set ELDRIC_OLLAMA_REGISTRY to a reachable mirror",
                     tls_to_plain_http=f"set ELDRIC_OLLAMA_REGISTRY to http://{netloc}",
                     plain_http_to_tls=f"set ELDRIC_OLLAMA_REGISTRY to https://{netloc}", certificate=CA_HINT)
    return Hints(name_not_found=f"check the registry host in '{name.short}'",
                 tls_to_plain_http="add it to ELDRIC_INSECURE_REGISTRIES",
                 plain_http_to_tls="remove it from ELDRIC_INSECURE_REGISTRIES", certificate=CA_HINT)


class RegistrySource:
    """Docker Registry v2 / OCI distribution, as the Ollama registry (and docker-registry) serve it.

    Its connections may reach the registry itself and public addresses (a CDN the registry
    redirects to, a token realm); anything else only when `policy` allows it.
    """

    def __init__(self, base_url: str, session: requests.Session | None = None,
                 policy: AddressPolicy = PUBLIC_ONLY, hints: Hints = NO_HINTS) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or upstream_session(policy.trusting(self.base_url))
        self.hints = hints
        self._token: str | None = None

    @classmethod
    def from_settings(cls, name: ModelName, s: AgentSettings) -> RegistrySource:
        """The source of `name` under the agent's mirror, insecure hosts and both allow-lists."""
        base = registry_base_url(name, s.ollama_registry, s.insecure_registries, s.allowed_registries)
        return cls(base, policy=AddressPolicy.parse(s.url_allowlist), hints=registry_hints(name, base))

    def describe(self) -> str:
        """The registry as job records show it: a mirror's credentials never appear."""
        return redact_url(self.base_url)

    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        url = f"{self.base_url}/v2/{name.repository}/manifests/{name.tag}"
        # docker-registry answers MANIFEST_INVALID unless the schema-2 type is accepted.
        resp = self._get(url, headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"}, timeout=(CONNECT_TIMEOUT, 60))
        if resp.status_code == 404:
            raise ModelNotFoundError(f"model '{name.short}' not found at {self.base_url}: {error_text(resp)}")
        self._raise_for_status(resp, f"manifest of {name.short}")
        raw = read_small_body(resp, MAX_MANIFEST_BYTES, f"the manifest of {name.short}")
        try:
            return raw, Manifest.parse(raw)
        except InvalidManifestError as exc:
            raise SourceError(f"unusable manifest for {name.short}: {exc}") from None

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response:
        url = f"{self.base_url}/v2/{name.repository}/blobs/{digest}"
        resp = self._get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=(CONNECT_TIMEOUT, read_timeout))
        if resp.status_code == 404:
            resp.close()
            raise SourceError(f"blob {digest} not found at {self.base_url}")
        self._raise_for_status(resp, f"blob {digest}")
        return resp

    def _get(self, url: str, *, headers: dict, **kw) -> requests.Response:
        """A streamed GET (bodies are read by the caller, bounded), with the anonymous token flow on 401."""
        resp = self._send(url, headers, **kw)
        challenge = bearer_challenge(resp)
        if challenge:
            resp.close()
            self._token = anonymous_token(self.session, challenge, self.base_url, self.hints)
            resp = self._send(url, headers, **kw)
        return resp

    def _send(self, url: str, headers: dict, **kw) -> requests.Response:
        try:
            return self.session.get(url, headers=self._auth(headers), stream=True, **kw)
        except TRANSIENT_ERRORS as exc:
            raise connection_error(exc, url, self.hints) from None
        except requests.RequestException as exc:  # too many redirects, a bad redirect URL: no retry mends it
            raise SourceError(f"registry {self.base_url}: {_short(exc)}") from None

    def _auth(self, headers: dict) -> dict:
        return {**headers, "Authorization": f"Bearer {self._token}"} if self._token else headers

    def _raise_for_status(self, resp: requests.Response, what: str) -> None:
        """raise_for_registry_status, with the hint when a TLS server refused plain http (Go's and nginx's 400)."""
        if resp.status_code == 400:
            text = error_text(resp)
            if is_plain_http_refusal(400, text):
                raise SourceError(f"{urlsplit(self.base_url).netloc} speaks https, not plain http; "
                                  f"{self.hints.plain_http_to_tls}".rstrip("; "))
            raise SourceError(f"{what}: registry answered 400: {text}")
        raise_for_registry_status(resp, what)


def _short(exc: Exception) -> str:
    return cap_text(str(exc), 200)

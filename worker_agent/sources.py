"""Blob sources: where a model's manifest and blobs come from.

Every source offers the same two calls to the download engine — `fetch_manifest`
and `open_range` — so a new source (data-node registry, peer worker, URL) plugs in
without touching the engine.
"""

from __future__ import annotations

import re
from typing import Protocol

import requests

from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError
from eldric.core.manifests import MANIFEST_V2, OCI_MANIFEST, Manifest
from eldric.core.names import ModelName
from eldric.transfer.retry import is_transient_status
from worker_agent.errors import ModelNotFoundError, SourceError, SourceUnavailableError

CONNECT_TIMEOUT = 10.0


class BlobSource(Protocol):
    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]: ...

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response: ...

    def describe(self) -> str: ...


def registry_base_url(name: ModelName, mirror: str, insecure_hosts: tuple[str, ...] = ()) -> str:
    """The URL serving `name`: the configured mirror for registry.ollama.ai, else the name's host."""
    if name.is_default_host:
        return mirror.rstrip("/")
    scheme = "http" if name.host in insecure_hosts else "https"
    return f"{scheme}://{name.host}"


class RegistrySource:
    """Docker Registry v2 / OCI distribution, as the Ollama registry (and docker-registry) serve it."""

    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self._token: str | None = None

    def describe(self) -> str:
        return self.base_url

    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        url = f"{self.base_url}/v2/{name.repository}/manifests/{name.tag}"
        # docker-registry answers MANIFEST_INVALID unless the schema-2 type is accepted.
        resp = self._get(url, headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"}, timeout=(CONNECT_TIMEOUT, 60))
        if resp.status_code == 404:
            raise ModelNotFoundError(f"model '{name.short}' not found at {self.base_url}: {_registry_message(resp)}")
        _raise_for_status(resp, f"manifest of {name.short}")
        raw = resp.content
        try:
            return raw, Manifest.parse(raw)
        except InvalidManifestError as exc:
            raise SourceError(f"unusable manifest for {name.short}: {exc}") from None

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response:
        url = f"{self.base_url}/v2/{name.repository}/blobs/{digest}"
        resp = self._get(url, headers={"Range": f"bytes={start}-{end}"}, stream=True,
                         timeout=(CONNECT_TIMEOUT, read_timeout))
        if resp.status_code == 404:
            resp.close()
            raise SourceError(f"blob {digest} not found at {self.base_url}")
        _raise_for_status(resp, f"blob {digest}")
        return resp

    def _get(self, url: str, *, headers: dict, **kw) -> requests.Response:
        try:
            resp = self.session.get(url, headers=self._auth(headers), **kw)
            if resp.status_code == 401 and "Bearer" in resp.headers.get("WWW-Authenticate", ""):
                resp.close()
                self._token = self._anonymous_token(resp.headers["WWW-Authenticate"])
                resp = self.session.get(url, headers=self._auth(headers), **kw)
            return resp
        except requests.RequestException as exc:
            raise SourceUnavailableError(f"registry {self.base_url} unreachable: {_short(exc)}") from None

    def _auth(self, headers: dict) -> dict:
        return {**headers, "Authorization": f"Bearer {self._token}"} if self._token else headers

    def _anonymous_token(self, challenge: str) -> str:
        """The Docker token flow for public repositories (realm, service, scope from the challenge)."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise SourceError(f"registry {self.base_url} asks for credentials")
        resp = self.session.get(realm, params=params, timeout=(CONNECT_TIMEOUT, 30))
        _raise_for_status(resp, "token")
        body = resp.json()
        return body.get("token") or body.get("access_token") or ""


def raise_if_transient(resp: requests.Response, what: str) -> None:
    """Transient answers (eldric.transfer.retry) are worth retrying later: SourceUnavailableError."""
    if is_transient_status(resp.status_code):
        resp.close()
        raise SourceUnavailableError(f"{what} answered {resp.status_code}")


def _raise_for_status(resp: requests.Response, what: str) -> None:
    raise_if_transient(resp, f"{what}: registry")
    if resp.status_code >= 400:
        msg = _registry_message(resp)
        resp.close()
        raise SourceError(f"{what}: registry answered {resp.status_code}: {msg}")


def _registry_message(resp: requests.Response) -> str:
    """The registry's own words: `{"errors":[{"code":..,"message":..}]}`."""
    try:
        errors = resp.json().get("errors") or []
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors) or resp.reason
    except ValueError:
        return resp.text[:200] or str(resp.reason)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"

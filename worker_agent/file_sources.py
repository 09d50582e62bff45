"""Sources of file models: the data worker's registry, plain URLs (HuggingFace, S3 presigned), peer agents.

Each yields RemoteFile entries (path, size, expected sha256 when known, a range
opener) that the download engine fetches; peers also serve Ollama-layout models
through PeerSource, which speaks the same interface as the upstream registry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import requests

from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError, cap_text
from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.http import (CONNECT_TIMEOUT, bearer, error_text, http_session, raise_if_transient, read_capped,
                                  upstream_session)
from eldric.transfer.model_registry import ModelRegistryApi, file_path, model_path
from eldric.transfer.retry import TRANSIENT_ERRORS, connection_cause, connection_error
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy
from eldric.transfer.urlfetch import UrlSource
from eldric.transfer.download import RangeOpener
from eldric.transfer.errors import ModelNotFoundError, SourceError, SourceUnavailableError

MAX_JSON_BYTES = 32 << 20  # a registry model's or a peer's export description


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    digest: Digest | None
    open_range: RangeOpener
    key: str  # names the partial download when the digest is unknown


def _get(session: requests.Session, url: str, what: str, **kw) -> requests.Response:
    """A streamed GET: its body is read bounded (`_json`, error_text) or by the download engine."""
    try:
        resp = session.get(url, timeout=kw.pop("timeout", (CONNECT_TIMEOUT, 60)), stream=True, **kw)
    except TRANSIENT_ERRORS as exc:  # permanent ones (a name that does not exist, TLS mismatch) are SourceError
        raise connection_error(exc, url, what=f"{what}:") from None
    except requests.RequestException as exc:  # a bad redirect, too many of them: no retry mends it
        raise SourceError(f"{what}: {cap_text(redact_urls(str(exc)), 300)}") from None
    raise_if_transient(resp, what)
    return resp


def _json(resp: requests.Response, what: str) -> dict:
    try:
        body, more = read_capped(resp, MAX_JSON_BYTES)
    except TRANSIENT_ERRORS as exc:
        raise SourceUnavailableError(f"{what}: {connection_cause(exc)}") from None
    try:
        doc = None if more else json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise SourceError(f"{what} did not answer a JSON object of at most {MAX_JSON_BYTES >> 20} MiB")
    return doc


class HttpFileSource:
    """One file at a URL: the registry importer's URL layer (urlfetch.UrlSource), fetched by the same engine."""

    def __init__(self, url: str, token: str | None = None, session: requests.Session | None = None,
                 policy: AddressPolicy = PUBLIC_ONLY) -> None:
        self.url = url
        # requests drops the Authorization header on a redirect to another host
        self.source = UrlSource(session or upstream_session(policy), url, bearer(token), connect_timeout=CONNECT_TIMEOUT)
        self.validator: str | None = None  # the server's ETag or Last-Modified, once probed

    def probe(self) -> tuple[int, bool]:
        """(size, honours Range); the agent plans its disk space by the size, so it must be known."""
        found = self.source.probe()
        if found.size is None:
            raise SourceError(f"{self.source.name}: the server does not say how big the file is")
        self.validator = found.validator
        return found.size, found.ranged

    def remote_file(self, path: str, expected: Digest | None = None) -> tuple[RemoteFile, bool]:
        size, ranged = self.probe()
        key = hashlib.sha256(redact_url(self.url).encode()).hexdigest()[:32]
        return RemoteFile(path=path, size=size, digest=expected, open_range=self.source.open_range, key=key), ranged


class DataRegistrySource:
    """Models in the data worker's registry, over the one API client: a model's record and its files (Range)."""

    def __init__(self, base_url: str, secret: str = "", session: requests.Session | None = None) -> None:
        self.api = ModelRegistryApi(base_url, secret, session)
        self.base_url, self.session = self.api.base_url, self.api.session  # a rate cap paces the session
        self.shown = redact_url(self.base_url)

    def model(self, model_id: str) -> dict:
        url = self.api.url(model_path(model_id))
        resp = _get(self.api.session, url, f"registry {self.shown}", headers=self.api.headers)
        if resp.status_code == 404:
            resp.close()
            raise ModelNotFoundError(f"model {model_id} not found in the registry at {self.shown}")
        if not resp.ok:
            raise SourceError(f"registry {self.shown} answered {resp.status_code}: {error_text(resp)}")
        return _json(resp, f"registry {self.shown}")

    def files(self, model: dict) -> list[RemoteFile]:
        out = []
        for f in model.get("files", []):
            url = self.api.url(file_path(model["id"], f["path"]))
            opener = _ranged_opener(self.api.session, url, self.api.headers)
            out.append(RemoteFile(path=f["path"], size=int(f["size"]), digest=Digest.parse(f["sha256"]),
                                  open_range=opener, key=Digest.parse(f["sha256"]).hex))
        return out


class PeerSource:
    """Another agent of this cluster: its store's models and blobs, behind the cluster secret."""

    def __init__(self, address: str, secret: str, session: requests.Session | None = None, name: str = "") -> None:
        self.address, self.session = address.rstrip("/"), session or http_session()  # inside the cluster: no proxy
        self.headers = bearer(secret)
        self.name = name or self.address

    def describe(self) -> str:
        """How job records name this source: `worker <id>`, for Ollama-layout and file models alike."""
        return self.name

    def export(self, model: str) -> dict:
        resp = _get(self.session, f"{self.address}/api/models/export", f"worker {self.address}",
                    params={"model": model}, headers=self.headers)
        if resp.status_code == 404:
            resp.close()
            raise ModelNotFoundError(f"worker {self.address} does not have model '{model}'")
        if not resp.ok:
            raise SourceError(f"worker {self.address} answered {resp.status_code}: {error_text(resp)}")
        return _json(resp, f"worker {self.address}")

    # BlobSource interface, so pull_model copies Ollama-layout models from a peer unchanged.
    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        exported = self.export(name.short)
        if exported.get("kind") != "ollama":
            raise SourceError(f"worker {self.address} holds '{name.short}' as files, not an Ollama model")
        raw = exported["manifest"].encode()
        try:
            return raw, Manifest.parse(raw)
        except InvalidManifestError as exc:
            raise SourceError(f"worker {self.address} sent a bad manifest: {exc}") from None

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response:
        return self.blob_opener(digest)(start, end, read_timeout)

    def blob_opener(self, digest: Digest) -> RangeOpener:
        return _ranged_opener(self.session, f"{self.address}/blobs/{digest}", self.headers)

    def files(self, entry: dict) -> list[RemoteFile]:
        return [RemoteFile(path=f["path"], size=int(f["size"]), digest=Digest.parse(f["sha256"]),
                           open_range=self.blob_opener(Digest.parse(f["sha256"])), key=Digest.parse(f["sha256"]).hex)
                for f in entry.get("files", [])]


def _ranged_opener(session: requests.Session, url: str, headers: dict) -> RangeOpener:
    def open_range(start: int, end: int, read_timeout: float) -> requests.Response:
        resp = _get(session, url, url, timeout=(CONNECT_TIMEOUT, read_timeout),
                    headers={**headers, "Range": f"bytes={start}-{end}"})
        if resp.status_code not in (200, 206):
            raise SourceError(f"{url} answered {resp.status_code}: {error_text(resp)}")
        return resp
    return open_range

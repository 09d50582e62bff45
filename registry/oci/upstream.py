"""The pull-through cache's upstream: a registry (default Ollama's) read over the distribution API.

Requests go through the one OCI client (eldric/transfer/oci_client.py) over the project's guarded
upstream session (eldric/transfer/http.py): the upstream itself is trusted, anything it redirects to
(a CDN) or names as a token realm must be a public address unless ELDRIC_URL_ALLOWLIST lists it; at
most 10 redirects; every body bounded; Docker's anonymous token flow on a 401 with a Bearer challenge.
This adapter says "upstream has none" as None and any failure as OciClientError with the upstream's status.

`timeout` (`--upstream-timeout`) bounds connecting and each read of manifest and HEAD requests, so a
cached tag is served within it when upstream accepts and never answers (issue 21, finding 10); a
blob's bytes get BLOB_READ_TIMEOUT between reads (a CDN may be slow to start a large one).
"""

from __future__ import annotations

import requests

from eldric.core.digests import Digest
from eldric.core.manifests import MANIFEST_V2
from eldric.core.redaction import redact_url
from eldric.transfer.http import CONNECT_TIMEOUT, error_text
from eldric.transfer.oci_client import OciClient, OciClientError
from eldric.transfer.upstreams import AddressPolicy

DEFAULT_TIMEOUT = 5.0
BLOB_READ_TIMEOUT = 60.0


class Upstream:
    def __init__(self, base_url: str, policy: AddressPolicy, session: requests.Session | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.client = OciClient.upstream(base_url, policy, session, connect_timeout=min(CONNECT_TIMEOUT, timeout))
        self.base_url = self.client.base
        self.shown = redact_url(self.base_url)  # in messages and logs: never its credentials or query

    def fetch_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of the manifest, or None when upstream has no such model."""
        resp = self.client.manifest(repo, reference, timeout=self.timeout)
        if resp.status_code == 404:
            resp.close()
            return None
        self._check(resp, f"manifest of {repo}:{reference}")
        body, media_type = self.client.read_manifest(resp, f"the manifest of {repo}:{reference} upstream")
        return body, media_type or MANIFEST_V2

    def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest upstream's tag points at (Docker-Content-Digest), None when it has no such tag."""
        resp = self.client.manifest(repo, reference, method="HEAD", timeout=self.timeout)
        resp.close()
        if resp.status_code == 404:
            return None
        self._check(resp, f"manifest of {repo}:{reference}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            fetched = self.fetch_manifest(repo, reference)  # some registries omit the header on HEAD
            return str(Digest.of_bytes(fetched[0])) if fetched else None
        return digest

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size as upstream reports it (HEAD, redirects followed), None when it has no such blob."""
        resp = self.client.blob(repo, digest, method="HEAD", timeout=self.timeout)
        resp.close()
        if resp.status_code == 404:
            return None
        self._check(resp, f"blob {digest}")
        try:
            return int(resp.headers["Content-Length"])
        except (KeyError, ValueError):
            raise OciClientError(f"upstream {self.shown} gave no size for blob {digest}") from None

    def open_blob(self, repo: str, digest: str, read_timeout: float = BLOB_READ_TIMEOUT) -> requests.Response | None:
        """The streamed answer to GET blob (redirects followed), or None when upstream has no such blob."""
        resp = self.client.blob(repo, digest, timeout=read_timeout)
        if resp.status_code == 404:
            resp.close()
            return None
        self._check(resp, f"blob {digest}")
        return resp

    def _check(self, resp: requests.Response, what: str) -> None:
        if resp.status_code >= 400 or resp.status_code in (204, 304):
            raise OciClientError(f"upstream {self.shown} answered {resp.status_code} for the {what}: "
                           f"{error_text(resp)}", resp.status_code)

"""The pull-through cache's upstream: a registry (default Ollama's) read over the distribution API.

Connections go through the project's guarded upstream session (eldric/transfer/http.py):
the upstream itself is trusted, anything it redirects to (a CDN) or names as a token
realm must be a public address unless ELDRIC_URL_ALLOWLIST lists it; at most 10
redirects; every body bounded. Public repositories of the Ollama registry and of
docker-registry need at most Docker's anonymous token flow (as the agents do it,
eldric/transfer/registry_token.py): on a 401 with a Bearer challenge, ask the realm for a token.
Failures become UpstreamError with one short sentence (eldric/transfer/retry.py).
"""

from __future__ import annotations

import threading

import requests

from eldric.core.digests import Digest
from eldric.core.errors import EldricError
from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST
from eldric.transfer.errors import TransferError
from eldric.transfer.http import error_text, read_capped, upstream_session
from eldric.transfer.registry_token import anonymous_token, bearer_challenge
from eldric.transfer.retry import TRANSIENT_ERRORS, connection_error
from eldric.transfer.upstreams import AddressPolicy

ACCEPT = f"{MANIFEST_V2}, {OCI_MANIFEST}"
CONNECT_TIMEOUT = 10


class UpstreamError(EldricError):
    """The upstream could not be asked, or answered an error; `status` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Upstream:
    def __init__(self, base_url: str, policy: AddressPolicy, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or upstream_session(policy.trusting(self.base_url))
        self._tokens: dict[str, str] = {}  # repository -> anonymous token
        self._lock = threading.Lock()

    def fetch_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of the manifest, or None when upstream has no such model."""
        resp = self._request("GET", repo, f"/v2/{repo}/manifests/{reference}", {"Accept": ACCEPT}, timeout=60)
        if resp.status_code == 404:
            resp.close()
            return None
        self._check(resp, f"manifest of {repo}:{reference}")
        body, more = read_capped(resp, MAX_MANIFEST_BYTES)
        if more:
            raise UpstreamError(f"the manifest of {repo}:{reference} upstream is larger than 4 MiB")
        media_type = resp.headers.get("Content-Type", MANIFEST_V2).split(";")[0].strip()
        return body, media_type

    def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest upstream's tag points at (Docker-Content-Digest), None when it has no such tag."""
        resp = self._request("HEAD", repo, f"/v2/{repo}/manifests/{reference}", {"Accept": ACCEPT}, timeout=30)
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
        resp = self._request("HEAD", repo, f"/v2/{repo}/blobs/{digest}", {}, timeout=30)
        resp.close()
        if resp.status_code == 404:
            return None
        self._check(resp, f"blob {digest}")
        try:
            return int(resp.headers["Content-Length"])
        except (KeyError, ValueError):
            raise UpstreamError(f"upstream {self.base_url} gave no size for blob {digest}") from None

    def open_blob(self, repo: str, digest: str, read_timeout: float = 60) -> requests.Response | None:
        """The streamed answer to GET blob (redirects followed), or None when upstream has no such blob."""
        resp = self._request("GET", repo, f"/v2/{repo}/blobs/{digest}", {}, timeout=read_timeout)
        if resp.status_code == 404:
            resp.close()
            return None
        self._check(resp, f"blob {digest}")
        return resp

    def _request(self, method: str, repo: str, path: str, headers: dict, *, timeout: float) -> requests.Response:
        resp = self._send(method, repo, path, headers, timeout)
        challenge = bearer_challenge(resp)
        if challenge:
            resp.close()
            try:
                token = anonymous_token(self.session, challenge, self.base_url)
            except TransferError as exc:
                raise UpstreamError(str(exc)) from None
            with self._lock:
                self._tokens[repo] = token
            resp = self._send(method, repo, path, headers, timeout)
        return resp

    def _send(self, method: str, repo: str, path: str, headers: dict, timeout: float) -> requests.Response:
        url = self.base_url + path
        with self._lock:
            token = self._tokens.get(repo)
        if token:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        try:
            return self.session.request(method, url, headers=headers, stream=True,
                                        timeout=(CONNECT_TIMEOUT, timeout), allow_redirects=True)
        except TRANSIENT_ERRORS as exc:
            raise UpstreamError(str(connection_error(exc, url))) from None
        except requests.RequestException as exc:
            raise UpstreamError(f"upstream {self.base_url}: {exc}") from None

    def _check(self, resp: requests.Response, what: str) -> None:
        if resp.status_code >= 400 or resp.status_code in (204, 304):
            raise UpstreamError(f"upstream {self.base_url} answered {resp.status_code} for the {what}: "
                                f"{error_text(resp)}", resp.status_code)

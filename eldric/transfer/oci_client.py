"""The one client of the OCI distribution API (`/v2/`), whoever speaks it.

Its callers adapt it to their own words: the agents' registry source (worker_agent/sources.py,
the download engine's BlobSource) and the controller's check before a pull fans out, both through
eldric/transfer/registry_upstream.py; the data node's pull-through upstream (registry/oci/upstream.py)
and `eldric export`/`import` (eldric/client/bundles.py). What the protocol fixes lives here and
nowhere else: the URLs of manifests, blobs, tag lists and upload sessions; the manifest types asked for
(docker-registry answers MANIFEST_INVALID unless Docker schema 2 is accepted); authentication, a
bearer token of the caller's own or else Docker's anonymous token flow kept per repository
(eldric/transfer/registry_token.py); bounded manifest reads; and pushing: HEAD to skip a blob the
registry holds, a cross-repository mount, an upload session fed in chunks (`PATCH` with
`Content-Range`, then `PUT ?digest=`) whose latest `Location` a later run asks how far it got
(`GET <location>` answers `Range: 0-<last byte>`; distribution spec, "Pushing a blob in chunks").

Failures are OciClientError: the HTTP status (None when nothing answered) and whether a retry may mend
it (eldric/transfer/retry.py); a failed connection is worded by `connection_error` with the
caller's hints. `send`, `manifest` and `blob` return any answer, since which statuses fail and how
that is said differs per caller (a job record, an OCI error code, a CLI line); `call` and the push
methods fail on any status they do not expect.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests

from eldric.core.digests import Digest
from eldric.core.errors import cap_text
from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST
from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.errors import HostNotAllowedError, SourceUnavailableError, TransferError
from eldric.transfer.http import CONNECT_TIMEOUT, bearer, error_text, http_session, read_small_body, upstream_session
from eldric.transfer.registry_token import anonymous_token, bearer_challenge
from eldric.transfer.retry import NO_HINTS, TRANSIENT_ERRORS, Hints, connection_error, is_transient_status
from eldric.transfer.upstreams import AddressPolicy

MANIFEST_ACCEPT = f"{MANIFEST_V2}, {OCI_MANIFEST}"
# Seconds a manifest read may wait for the registry's next bytes. Above the data node's --upstream-timeout
# (at most MANIFEST_TIMEOUT - 5), so an agent pulling through the data node hears its answer (the cached
# manifest when upstream hangs) before giving up; both were 60 s and a cached pull took 2-3 min (issue 21).
MANIFEST_TIMEOUT = 30.0
MAX_TAGS = 1000  # tags asked for in one tags/list page
MAX_TAGS_BODY = 1 << 20
_RANGE = re.compile(r"^(?:bytes=)?0-(-?\d+)$")
_READS = ("GET", "HEAD")  # anonymous tokens are for pulling; a pushed body could not be sent twice anyway


class Readable(Protocol):
    def read(self, n: int = -1) -> bytes: ...


class OciClientError(TransferError):
    """A registry could not be asked, or refused; `status`: its HTTP status (None: no answer);
    `transient`: a retry later may succeed."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.transient = (status is not None and is_transient_status(status)) if transient is None else transient

    @classmethod
    def of(cls, exc: TransferError) -> OciClientError:
        """A transfer error of the toolkit (token flow, bounded read) as the client's own."""
        return cls(str(exc), transient=isinstance(exc, SourceUnavailableError))


class OciClient:
    """One registry's `/v2/` API: `base` (scheme://host[:port]), its session, and a bearer `token` of
    the caller's own (without one, a Bearer challenge gets the anonymous token flow)."""

    def __init__(self, base_url: str, session: requests.Session | None = None, *, token: str = "",
                 hints: Hints = NO_HINTS, read_timeout: float = 300, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.base = base_url.rstrip("/")
        self.session = session or http_session()
        self.hints, self.read_timeout, self.connect_timeout = hints, read_timeout, connect_timeout
        self._own = bearer(token)
        self._tokens: dict[str, str] = {}  # repository -> anonymous token
        self._lock = threading.Lock()  # the data node's request threads share one upstream client

    @classmethod
    def upstream(cls, base_url: str, policy: AddressPolicy, session: requests.Session | None = None, *,
                 hints: Hints = NO_HINTS, connect_timeout: float = CONNECT_TIMEOUT) -> OciClient:
        """A registry outside the cluster, over the guarded upstream session: the registry's own address is
        trusted; a CDN it redirects to or a token realm must be public unless `policy` allows it."""
        base = base_url.rstrip("/")
        return cls(base, session or upstream_session(policy.trusting(base)), hints=hints,
                   connect_timeout=connect_timeout)

    def url(self, path: str) -> str:
        """A path below the base, or a Location the registry gave."""
        return path if urlsplit(path).scheme else urljoin(self.base + "/", path.lstrip("/"))

    # ---- requests ---------------------------------------------------------------------------------

    def send(self, method: str, path: str, *, repo: str = "", headers: dict[str, str] | None = None,
             timeout: float | None = None, stream: bool = True, **kw) -> requests.Response:
        """The registry's answer, whatever its status (the caller closes it); redirects followed.

        Without a token of its own, a read answered 401 with a Bearer challenge asks the realm for an
        anonymous token once, kept for `repo`'s later requests.
        """
        url = self.url(path)
        resp = self._send(method, url, repo, headers or {}, timeout, stream, kw)
        challenge = None if self._own or method not in _READS else bearer_challenge(resp)
        if challenge:
            resp.close()
            try:
                token = anonymous_token(self.session, challenge, self.base, self.hints)
            except TransferError as exc:
                raise OciClientError.of(exc) from None
            with self._lock:
                self._tokens[repo] = token
            resp = self._send(method, url, repo, headers or {}, timeout, stream, kw)
        return resp

    def _send(self, method: str, url: str, repo: str, headers: dict[str, str], timeout: float | None,
              stream: bool, kw: dict) -> requests.Response:
        with self._lock:
            token = self._tokens.get(repo)
        headers = {**headers, **(self._own or bearer(token))}
        timeouts = (self.connect_timeout, self.read_timeout if timeout is None else timeout)
        try:
            if method == "GET":  # the same request as session.request("GET"); a source's fake session needs only get
                return self.session.get(url, headers=headers, stream=stream, timeout=timeouts, **kw)
            return self.session.request(method, url, headers=headers, stream=stream, timeout=timeouts, **kw)
        except TRANSIENT_ERRORS as exc:
            raise OciClientError.of(connection_error(exc, url, self.hints)) from None
        except requests.RequestException as exc:  # too many redirects, a bad redirect URL: no retry mends it
            raise OciClientError(f"registry {redact_url(self.base)}: {cap_text(redact_urls(str(exc)), 200)}") from None
        except HostNotAllowedError as exc:  # a redirect hop to an internal address, refused before connecting
            raise OciClientError.of(exc) from None

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), stream: bool = False,
             **kw) -> requests.Response:
        """`send`, failing unless the status is one of `ok`: `<METHOD> <path>: HTTP <status>: <the registry's words>`."""
        return self.expect(self.send(method, path, stream=stream, **kw), ok, method, path)

    def expect(self, resp: requests.Response, ok: tuple[int, ...], method: str, path: str) -> requests.Response:
        if resp.status_code not in ok:
            where = urlsplit(self.url(path)).path
            raise OciClientError(f"{method} {where}: HTTP {resp.status_code}: {error_text(resp)}", resp.status_code)
        return resp

    # ---- reading ----------------------------------------------------------------------------------

    def manifest(self, repo: str, reference: str, *, method: str = "GET",
                 timeout: float = MANIFEST_TIMEOUT) -> requests.Response:
        """The answer to GET (or HEAD) of `repo:reference`'s manifest; Docker schema 2 and OCI are asked for."""
        return self.send(method, f"/v2/{repo}/manifests/{reference}", repo=repo,
                         headers={"Accept": MANIFEST_ACCEPT}, timeout=timeout)

    def blob(self, repo: str, digest: Digest | str, *, method: str = "GET", start: int = 0, end: int | None = None,
             timeout: float | None = None) -> requests.Response:
        """The answer to GET (or HEAD) of a blob; bytes `start`..`end` (inclusive, open when None) as a Range."""
        ranged = start or end is not None
        headers = {"Range": f"bytes={start}-{'' if end is None else end}"} if ranged else {}
        return self.send(method, f"/v2/{repo}/blobs/{digest}", repo=repo, headers=headers, timeout=timeout)

    def read_manifest(self, resp: requests.Response, what: str) -> tuple[bytes, str]:
        """(body, media type) of a manifest answer, streamed and at most MAX_MANIFEST_BYTES; `what` names it."""
        try:
            body = read_small_body(resp, MAX_MANIFEST_BYTES, what)
        except TransferError as exc:
            raise OciClientError.of(exc) from None
        return body, resp.headers.get("Content-Type", "").split(";")[0].strip()

    def list_tags(self, repo: str, *, timeout: float | None = None) -> list[str] | None:
        """`repo`'s tags (`GET /v2/<repo>/tags/list`, the first page, sorted); [] when the registry answers that
        it knows no such repository (`NAME_UNKNOWN`); None when it does not list them (any other answer)."""
        resp = self.send("GET", f"/v2/{repo}/tags/list", repo=repo, params={"n": str(MAX_TAGS)}, timeout=timeout)
        with resp:
            try:
                doc = json.loads(read_small_body(resp, MAX_TAGS_BODY, f"the tags of {repo}"))
            except (TransferError, ValueError, RecursionError):
                return None
        if resp.status_code == 404 and isinstance(doc, dict):
            codes = [e.get("code") for e in doc.get("errors") or [] if isinstance(e, dict)]
            return [] if "NAME_UNKNOWN" in codes else None
        tags = doc.get("tags") if resp.status_code == 200 and isinstance(doc, dict) else None
        return sorted(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else None

    def check(self) -> None:
        """The registry speaks `/v2/` (and the token is right)."""
        self.call("GET", "/v2/")

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """(manifest bytes, media type) of `repo:reference`."""
        path = f"/v2/{repo}/manifests/{reference}"
        resp = self.expect(self.manifest(repo, reference), (200,), "GET", path)
        return self.read_manifest(resp, f"the manifest of {repo}:{reference}")

    def open_blob(self, repo: str, digest: Digest, start: int = 0) -> requests.Response:
        """The blob's bytes from `start` as a streamed response (read `.raw`); close it when done."""
        resp = self.expect(self.blob(repo, digest, start=start), (206,) if start else (200,), "GET",
                           f"/v2/{repo}/blobs/{digest}")
        resp.raw.decode_content = True
        return resp

    # ---- pushing ----------------------------------------------------------------------------------

    def has_blob(self, repo: str, digest: Digest) -> bool:
        return self.call("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404)).status_code == 200

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        """Link a blob `from_repo` holds into `repo`: None when done, else the upload session it opened instead."""
        resp = self.call("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": str(digest), "from": from_repo},
                         ok=(201, 202))
        return None if resp.status_code == 201 else self._location(resp)

    def start_upload(self, repo: str) -> str:
        """Open an upload session; returns its Location."""
        return self._location(self.call("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,)))

    def upload_offset(self, location: str, known: int = 0) -> int | None:
        """How many bytes the session holds, or None when the registry no longer knows it (expired, done).

        `Range: 0-<last byte>`; registries answer `0-0` for 0 bytes as for 1 (docker-registry, the data
        node), so then `known` (what this client last saw confirmed) decides.
        """
        try:
            resp = self.call("GET", location, ok=(204,))
        except OciClientError as exc:
            if exc.status is None:
                raise
            return None
        match = _RANGE.match(resp.headers.get("Range", "").strip())
        last = int(match.group(1)) if match else -1
        return min(known, 1) if last == 0 else max(last + 1, 0)

    def send_chunk(self, location: str, body: object, start: int, length: int) -> str:
        """PATCH `length` bytes at offset `start`; returns the session's next Location."""
        resp = self.call("PATCH", location, data=body, ok=(202, 204), headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(length),
            "Content-Range": f"{start}-{start + length - 1}"})
        return self._location(resp, default=location)

    def finish_upload(self, location: str, digest: Digest, body: object = None, length: int | None = None) -> None:
        """Close the session: the registry checks the digest of what it received and keeps the blob.

        `body`: the last bytes (or all of them: a monolithic upload), a readable or an iterable of blocks,
        streamed; sent with `length` as its Content-Length, chunked without one."""
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream"}
        if body is None or length is not None:
            headers["Content-Length"] = str(length or 0)
        self.call("PUT", f"{location}{sep}digest={digest}", ok=(201, 204), data=body, headers=headers)

    def cancel_upload(self, location: str) -> None:
        """Drop a session (best effort: an old registry may not know DELETE on uploads)."""
        try:
            self.call("DELETE", location, ok=(204, 404))
        except OciClientError:
            pass

    def put_manifest(self, repo: str, tag: str, raw: bytes, media_type: str) -> str:
        """Store a manifest under `tag`; returns its digest as the registry reports it."""
        resp = self.call("PUT", f"/v2/{repo}/manifests/{tag}", data=raw, ok=(201,),
                         headers={"Content-Type": media_type})
        return resp.headers.get("Docker-Content-Digest", str(Digest.of_bytes(raw)))

    def _location(self, resp: requests.Response, default: str | None = None) -> str:
        location = resp.headers.get("Location") or default
        if not location:
            raise OciClientError(f"{resp.request.method} {urlsplit(resp.url).path}: no Location in the answer")
        return urljoin(resp.url, location)


def upload_blob(client: OciClient, location: str, reader_at: Callable[[int], Readable], size: int,
                offset: int, *, chunk_bytes: int, on_location: Callable[[str, int], None]) -> str:
    """Send bytes [offset, size) through the session at `location` in chunks; returns the last Location.

    `reader_at(start)` gives a readable positioned at `start`; each chunk reads at most `chunk_bytes`
    of it. `on_location(location, offset)` hears where a later run would go on.
    """
    source = reader_at(offset)
    while offset < size:
        length = min(chunk_bytes, size - offset)
        location = client.send_chunk(location, _Span(source, length), offset, length)
        offset += length
        on_location(location, offset)
    return location


class _Span:
    """`length` bytes of a readable, with a length (so requests sends Content-Length, not chunked)."""

    def __init__(self, source: Readable, length: int) -> None:
        self.source, self.left, self.length = source, length, length

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(self.left if n is None or n < 0 else min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data

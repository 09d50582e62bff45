"""A client of the OCI distribution API (`/v2/`) as `eldric export` and `eldric import` use it.

It reads manifests and blobs (streamed, never held whole) and pushes them: HEAD to skip blobs the
registry holds, a cross-repository mount when another repository of the same registry holds one,
else an upload session fed in chunks (`PATCH` with `Content-Range`, then `PUT ?digest=`). The
session's latest `Location` is reported after every chunk, so a later run can ask the registry how
far it got (`GET <location>` answers `Range: 0-<last byte>`) and go on from there (distribution
spec, "Pushing a blob in chunks"). The same requests work against the data node (`eldric registry`)
and any OCI registry (Debian's docker-registry in the tests).

Authentication is the data node's: `Authorization: Bearer <token>` on every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import requests

from eldric.core.digests import Digest
from eldric.core.errors import EldricError
from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST
from eldric.transfer.http import error_text, http_session, read_capped

MANIFEST_ACCEPT = ", ".join((MANIFEST_V2, OCI_MANIFEST))
_RANGE = re.compile(r"^(?:bytes=)?0-(-?\d+)$")


class DistributionError(EldricError):
    """The registry refused a request or could not be reached; `status` is its HTTP status, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DistributionClient:
    """One registry's `/v2/` API: `base_url` (scheme://host:port), an optional bearer `token`."""

    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None,
                 timeout: tuple[float, float] = (10, 300)) -> None:
        self.base = base_url.rstrip("/")
        self.session = session or http_session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def call(self, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kw) -> requests.Response:
        """One request (a path below the base, or a Location the registry gave); DistributionError unless `ok`."""
        url = url if urlsplit(url).scheme else urljoin(self.base + "/", url.lstrip("/"))
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, url, **kw)
        except requests.RequestException as exc:
            raise DistributionError(f"cannot reach the registry at {self.base}: {type(exc).__name__}") from None
        if resp.status_code not in ok:
            path = urlsplit(url).path
            raise DistributionError(f"{method} {path}: HTTP {resp.status_code}: {error_text(resp)}", resp.status_code)
        return resp

    def check(self) -> None:
        """The registry speaks `/v2/` (and the token is right)."""
        self.call("GET", "/v2/")

    # ---- reading ------------------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """(manifest bytes, media type) of `repo:reference`; Docker schema-2 and OCI manifests are asked for."""
        resp = self.call("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT},
                         stream=True)
        body, more = read_capped(resp, MAX_MANIFEST_BYTES)
        if more:
            raise DistributionError(f"manifest of {repo}:{reference} is larger than {MAX_MANIFEST_BYTES} bytes")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media_type

    def open_blob(self, repo: str, digest: Digest, start: int = 0) -> requests.Response:
        """The blob's bytes from `start` as a streamed response (read `.raw`); close it when done."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = self.call("GET", f"/v2/{repo}/blobs/{digest}", stream=True, headers=headers, ok=(206,) if start else (200,))
        resp.raw.decode_content = True
        return resp

    # ---- pushing ------------------------------------------------------------------------------------

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
        except DistributionError as exc:
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

    def finish_upload(self, location: str, digest: Digest) -> None:
        """Close the session: the registry checks the digest of what it received and keeps the blob."""
        sep = "&" if "?" in location else "?"
        self.call("PUT", f"{location}{sep}digest={digest}", ok=(201, 204),
                  headers={"Content-Length": "0", "Content-Type": "application/octet-stream"})

    def cancel_upload(self, location: str) -> None:
        """Drop a session (best effort: an old registry may not know DELETE on uploads)."""
        try:
            self.call("DELETE", location, ok=(204, 404))
        except DistributionError:
            pass

    def put_manifest(self, repo: str, tag: str, raw: bytes, media_type: str) -> str:
        """Store a manifest under `tag`; returns its digest as the registry reports it."""
        resp = self.call("PUT", f"/v2/{repo}/manifests/{tag}", data=raw, ok=(201,),
                         headers={"Content-Type": media_type})
        return resp.headers.get("Docker-Content-Digest", str(Digest.of_bytes(raw)))

    def _location(self, resp: requests.Response, default: str | None = None) -> str:
        location = resp.headers.get("Location") or default
        if not location:
            raise DistributionError(f"{resp.request.method} {urlsplit(resp.url).path}: no Location in the answer")
        return urljoin(resp.url, location)


def upload_blob(client: DistributionClient, location: str, reader_at: Callable[[int], object], size: int,
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

    def __init__(self, source, length: int) -> None:
        self.source, self.left, self.length = source, length, length

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(self.left if n is None or n < 0 else min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data

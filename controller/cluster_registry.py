"""The data node's `/v2/` as the controller's create, blobs and push use it, over the one OCI client.

The data node answers both the registry REST API and `/v2/` on one port (config REGISTRY_URL), with the
cluster secret as the bearer. Ollama's blob API has no repository, so blobs uploaded through
`/api/blobs` are pushed into BLOBS_REPO; the data node keeps one blob store, so a manifest in any
repository may name them (and mounts need no copy). Failures become the controller's request errors:
the registry unreachable is 503; its refusals keep their status (400 DIGEST_INVALID on a mismatch, 413
over --max-file-size, 507 when the disk would fill).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import requests

from eldric.core.digests import Digest
from eldric.core.ggufheader import GGUFHeader, GGUFHeaderError, read_header
from eldric.core.manifests import MANIFEST_V2
from eldric.core.names import ModelName
from eldric.core.redaction import redact_url
from eldric.core.request_errors import BadRequestError, RequestError, UnavailableError
from eldric.transfer.http import error_text
from eldric.transfer.oci_client import OciClient, OciClientError, upload_blob

BLOBS_REPO = "eldric/blobs"  # where Ollama's repository-less /api/blobs uploads go
HEADER_BYTES = 32 << 20  # a GGUF's metadata and tensor list fit in this (vocabularies of 256k tokens too)
CHUNK_BYTES = 64 << 20  # a copied blob is sent in chunks this large, progress told after each


class RegistryRefusedError(RequestError):
    """The data node refused; `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ClusterRegistry:
    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None) -> None:
        self.oci = OciClient(base_url, session, token=token)
        self.base = self.oci.base

    def _failed(self, exc: OciClientError) -> RequestError:
        if exc.status is None:
            return UnavailableError(f"the cluster's registry at {redact_url(self.base)} (ELDRIC_REGISTRY_URL) is "
                                    f"unreachable: {exc}")
        if exc.status == 400:
            return BadRequestError(str(exc))
        return RegistryRefusedError(str(exc), exc.status if exc.status in (404, 409, 413, 507) else 502)

    def has_blob(self, digest: Digest, repo: str = BLOBS_REPO) -> bool:
        try:
            return self.oci.has_blob(repo, digest)
        except OciClientError as exc:
            raise self._failed(exc) from None

    def blob_size(self, digest: Digest, repo: str = BLOBS_REPO) -> int | None:
        """The blob's size when the registry holds it, else None."""
        try:
            resp = self.oci.blob(repo, digest, method="HEAD")
        except OciClientError as exc:
            raise self._failed(exc) from None
        with resp:
            return int(resp.headers.get("Content-Length") or 0) if resp.status_code == 200 else None

    def upload(self, digest: Digest, body: BinaryIO | Iterator[bytes] | bytes, length: int | None,
               repo: str = BLOBS_REPO) -> None:
        """Stream `body` into the registry as `digest` (checked there before the blob becomes visible).
        On any failure the session is dropped: nothing is left behind."""
        try:
            location = self.oci.start_upload(repo)
        except OciClientError as exc:
            raise self._failed(exc) from None
        try:
            self.oci.finish_upload(location, digest, body=body, length=length)
        except OciClientError as exc:
            self.oci.cancel_upload(location)
            if exc.status == 400:
                raise BadRequestError(f"digest mismatch: the bytes sent are not {digest}") from None
            raise self._failed(exc) from None
        except BaseException:
            self.oci.cancel_upload(location)
            raise

    def copy(self, digest: Digest, size: int, source: BinaryIO, repo: str) -> Iterator[int]:
        """Send `size` bytes of `source` (a peer's stream) as `digest` in chunks; yields bytes sent so far."""
        try:
            location = self.oci.start_upload(repo)
        except OciClientError as exc:
            raise self._failed(exc) from None
        try:
            offset = 0
            while offset < size:
                end = min(size, offset + CHUNK_BYTES)
                location = upload_blob(self.oci, location, lambda _start: source, end, offset,
                                       chunk_bytes=CHUNK_BYTES, on_location=_ignore)
                offset = end
                yield offset
            self.oci.finish_upload(location, digest)
        except OciClientError as exc:
            self.oci.cancel_upload(location)
            raise self._failed(exc) from None
        except BaseException:
            self.oci.cancel_upload(location)
            raise

    def store_small(self, data: bytes, repo: str) -> Digest:
        """A small blob (a template, params, config) stored unless held already."""
        digest = Digest.of_bytes(data)
        if not self.has_blob(digest, repo):
            self.upload(digest, data, len(data), repo)
        return digest

    def read_blob(self, digest: Digest, limit: int, repo: str = BLOBS_REPO) -> bytes:
        """At most the first `limit` bytes of a blob."""
        try:
            resp = self.oci.call("GET", f"/v2/{repo}/blobs/{digest}", ok=(200, 206), stream=True,
                                 headers={"Range": f"bytes=0-{limit - 1}"})
        except OciClientError as exc:
            raise self._failed(exc) from None
        with resp:
            return resp.raw.read(limit, decode_content=True) or b""

    def gguf_header(self, digest: Digest, size: int, repo: str = BLOBS_REPO) -> GGUFHeader | None:
        """The header of an uploaded GGUF; None when it does not fit HEADER_BYTES (facts then unknown).
        BadRequestError when the blob is not a GGUF at all."""
        head = self.read_blob(digest, min(size, HEADER_BYTES), repo)
        if head[:4] != b"GGUF":
            raise BadRequestError("supplied file was not in GGUF format", field="files")
        with tempfile.NamedTemporaryFile(prefix="eldric-gguf-head-") as f:
            f.write(head)
            f.flush()
            try:
                return read_header(Path(f.name))
            except GGUFHeaderError as exc:
                if size > len(head) and "truncated" in str(exc):
                    return None
                raise BadRequestError(f"supplied file was not in GGUF format: {exc}", field="files") from None

    def manifest(self, name: ModelName) -> tuple[bytes, str] | None:
        """`name`'s manifest as the data node resolves it (pushed, registry model, mirror), or None."""
        try:
            resp = self.oci.manifest(name.repository, name.tag)
        except OciClientError as exc:
            raise self._failed(exc) from None
        with resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise RegistryRefusedError(f"the cluster's registry answered {resp.status_code} for the manifest "
                                           f"of {name.short}: {error_text(resp)}", 502)
            try:
                return self.oci.read_manifest(resp, f"the manifest of {name.short}")
            except OciClientError as exc:
                raise self._failed(exc) from None

    def put_manifest(self, name: ModelName, raw: bytes, media_type: str = MANIFEST_V2) -> str:
        try:
            return self.oci.put_manifest(name.repository, name.tag, raw, media_type)
        except OciClientError as exc:
            raise self._failed(exc) from None


def _ignore(_location: str, _offset: int) -> None:
    """upload_blob's progress hook: copy() tells its progress per chunk itself."""


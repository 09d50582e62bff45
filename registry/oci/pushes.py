"""The OCI push API's blob uploads: POST opens a session, PATCH appends, PUT ?digest= verifies and stores.

Sessions reuse the registry's resumable upload sessions (registry/uploads.py: bytes on
disk under `<storage>/oci-uploads/<uuid>.part`, the sha256 kept running in memory), so
a chunked push survives a dropped connection and the final PUT never re-reads the file.
The digest is checked on the server before the blob becomes visible; a mismatch drops
the session's bytes (DIGEST_INVALID), as docker-registry does.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from eldric.core.digests import Digest
from eldric.core.request_errors import (BadRequestError, ConflictError, NotFoundError, RangeNotSatisfiableError,
                                      TooLargeError)
from registry.oci.errors import OCIError
from registry.oci.store import PUSH, OCIStore, parse_digest
from registry.uploads import UploadSessions

_UUID = re.compile(r"^[0-9a-f]{32}$")
# PATCH's Content-Range: `<start>-<end>` in the distribution spec; `bytes <start>-<end>[/<total>]` accepted too.
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?$")


def parse_chunk_start(header: str | None) -> int | None:
    """The first byte a PATCH's Content-Range names, or None without the header."""
    if header is None:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise OCIError("BLOB_UPLOAD_INVALID", f"invalid Content-Range {header[:100]!r}: expected <start>-<end>",
                       status=416)
    return int(match.group(1))


class Pushes:
    def __init__(self, directory: Path, store: OCIStore, max_blob_bytes: int) -> None:
        self.sessions = UploadSessions(directory, max_blob_bytes)
        self.store = store

    def _session(self, upload_id: str) -> str:
        if not _UUID.fullmatch(upload_id) or not self.sessions.data_path(upload_id).exists():
            raise OCIError("BLOB_UPLOAD_UNKNOWN", f"no blob upload {upload_id[:64]!r}", {"uuid": upload_id[:64]})
        return upload_id

    def start(self) -> str:
        upload_id = uuid.uuid4().hex
        self.sessions.open_new(upload_id)
        return upload_id

    def offset(self, upload_id: str) -> int:
        return self.sessions.offset(self._session(upload_id))

    def append(self, upload_id: str, stream: BinaryIO, start: int | None, length: int | None) -> int:
        upload_id = self._session(upload_id)
        with _as_oci(upload_id):
            return self.sessions.append(upload_id, stream, start, length=length)

    def finish(self, upload_id: str, digest: str | None, stream: BinaryIO, length: int | None, *,
               has_body: bool = True) -> Digest:
        """Append the last bytes (if any), check the digest, store the blob; the session ends either way."""
        upload_id = self._session(upload_id)
        if not digest:
            raise OCIError("DIGEST_INVALID", "the final PUT of an upload needs ?digest=sha256:<hex>")
        expected = parse_digest(digest)
        try:
            with _as_oci(upload_id):
                if has_body:
                    self.sessions.append(upload_id, stream, None, length=length)
                data, actual, size = self.sessions.finish(upload_id)
            if actual != expected:
                raise OCIError("DIGEST_INVALID", f"digest mismatch: the upload's sha256 is {actual}, not {expected}",
                               {"digest": str(expected)})
            self.store.add_blob(data, actual, size, PUSH)
            return actual
        except OCIError as exc:
            if exc.status != 409:  # a busy session stays for the request that holds it
                self.sessions.discard(upload_id)
            raise

    def cancel(self, upload_id: str) -> None:
        self.sessions.discard(self._session(upload_id))

    def expire(self, max_age: float) -> int:
        """Drop sessions untouched for `max_age` seconds (abandoned pushes)."""
        now, dropped = time.time(), 0
        for part in self.sessions.dir.glob("*.part"):
            try:
                if now - part.stat().st_mtime > max_age:
                    self.sessions.discard(part.stem)
                    dropped += 1
            except FileNotFoundError:
                continue
        return dropped


class _as_oci:
    """The upload sessions' errors as OCI errors (range 416 carries the offset in `Range`)."""

    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, RangeNotSatisfiableError):
            raise OCIError("BLOB_UPLOAD_INVALID", str(exc), {"offset": exc.size}, status=416) from None
        if isinstance(exc, ConflictError):
            raise OCIError("BLOB_UPLOAD_INVALID", str(exc), status=409) from None
        if isinstance(exc, TooLargeError):
            raise OCIError("SIZE_INVALID", str(exc), status=413) from None
        if isinstance(exc, NotFoundError):
            raise OCIError("BLOB_UPLOAD_UNKNOWN", str(exc), {"uuid": self.upload_id}) from None
        if isinstance(exc, BadRequestError):  # the client stopped sending
            raise OCIError("BLOB_UPLOAD_INVALID", str(exc)) from None
        return False

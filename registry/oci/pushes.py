"""The OCI push API's blob uploads: POST opens a session, PATCH appends, PUT ?digest= verifies and stores.

Sessions reuse the registry's resumable upload sessions (registry/uploads.py: bytes on
disk under `<storage>/oci-uploads/<uuid>.part`, the sha256 kept running in memory), so
a chunked push survives a dropped connection and the final PUT never re-reads the file.
The digest is checked on the server before the blob becomes visible; a mismatch drops
the session's bytes (DIGEST_INVALID), as docker-registry does. The check and the move
into the store run under the session's lock: a PATCH meanwhile is BLOB_UPLOAD_UNKNOWN
and appends nothing (issue 21). `--min-free` and a full disk answer 507 STORAGE_FULL
and drop the session's bytes, so a refused push leaves no `.part` on a full disk.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from eldric.core.digests import Digest
from eldric.core.request_errors import (BadRequestError, ConflictError, InsufficientStorageError, NotFoundError,
                                        RangeNotSatisfiableError, TooLargeError)
from eldric.transfer.ranges import parse_content_range
from registry.oci.errors import OCIError
from registry.oci.store import PUSH, OCIStore, parse_digest
from registry.uploads import FreeSpace, UploadSessions

_UUID = re.compile(r"^[0-9a-f]{32}$")


def parse_chunk_range(header: str | None) -> tuple[int, int] | None:
    """(first byte, length) a PATCH's Content-Range names (`<first>-<last>`, the spec's form), or None without it."""
    if header is None:
        return None
    try:
        first, last, _total = parse_content_range(header)
    except ValueError as exc:  # also a number past int()'s 4300 digits
        raise OCIError("BLOB_UPLOAD_INVALID", f"invalid Content-Range {header[:100]!r}: {str(exc)[:200]}",
                       status=416) from None
    return first, last - first + 1


class Pushes:
    def __init__(self, directory: Path, store: OCIStore, max_blob_bytes: int, space: FreeSpace | None = None) -> None:
        self.sessions = UploadSessions(directory, max_blob_bytes, space)
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

    def append(self, upload_id: str, stream: BinaryIO, span: tuple[int, int] | None, length: int | None) -> int:
        """Append a chunk (at `span`'s first byte, exactly its length; without one, at the end)."""
        upload_id = self._session(upload_id)
        start, exact = span if span else (None, None)
        try:
            with _as_oci(upload_id):
                return self.sessions.append(upload_id, stream, start, length=length, exact=exact)
        except OCIError as exc:
            if exc.code == "STORAGE_FULL":  # a push that cannot fit leaves nothing on the full disk
                self.sessions.discard(upload_id)
            raise

    def finish(self, upload_id: str, digest: str | None, stream: BinaryIO, length: int | None, *,
               has_body: bool = True) -> Digest:
        """Append the last bytes (if any), check the digest, store the blob; the session ends either way."""
        upload_id = self._session(upload_id)
        if not digest:
            raise OCIError("DIGEST_INVALID", "the final PUT of an upload needs ?digest=sha256:<hex>")
        expected = parse_digest(digest)

        def store(data: Path, actual: Digest, size: int) -> Digest:  # under the session's lock
            if actual != expected:
                raise OCIError("DIGEST_INVALID", f"digest mismatch: the upload's sha256 is {actual}, not {expected}",
                               {"digest": str(expected)})
            self.store.add_blob(data, actual, size, PUSH)
            return actual

        try:
            with _as_oci(upload_id):
                if has_body:
                    self.sessions.append(upload_id, stream, None, length=length)
                return self.sessions.finish(upload_id, store)
        except OCIError as exc:
            # A busy (409) or finishing (BLOB_UPLOAD_UNKNOWN) session belongs to the request that holds it.
            if exc.status != 409 and exc.code != "BLOB_UPLOAD_UNKNOWN":
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
        if isinstance(exc, InsufficientStorageError):
            raise OCIError("STORAGE_FULL", str(exc)) from None
        if isinstance(exc, NotFoundError):
            raise OCIError("BLOB_UPLOAD_UNKNOWN", str(exc), {"uuid": self.upload_id}) from None
        if isinstance(exc, BadRequestError):  # the client stopped sending
            raise OCIError("BLOB_UPLOAD_INVALID", str(exc)) from None
        return False

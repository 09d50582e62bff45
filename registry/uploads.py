"""Receiving file bytes: streaming copy with inline sha256, and resumable upload sessions.

Upload sessions follow the OCI distribution push protocol (chunked upload): a
session is created for one file of a draft model; each PATCH appends bytes at the
session's current offset (sent as `Content-Range` or `Upload-Offset`); the final
PUT checks the digest. Bytes already received survive a dropped connection or a
registry restart, so a client asks for the offset (HEAD) and continues from there.

The running sha256 of each session is kept in memory next to the number of bytes
it covers; after a restart (or a write that failed half-way) it is rebuilt once
from the bytes on disk, so the final PUT never re-reads a 20 GiB file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable

from werkzeug.exceptions import ClientDisconnected

from eldric.core.digests import Digest, sha256_of_file
from eldric.core.formats import HEAD_BYTES
from eldric.core.request_errors import (BadRequestError, ConflictError, NotFoundError, RangeNotSatisfiableError,
                                   TooLargeError)

CHUNK = 1 << 20


class ClientGoneError(BadRequestError):
    """The client stopped sending before the body was complete."""


def copy_stream(src: BinaryIO, dst: BinaryIO, hasher: hashlib._Hash, *, limit: int,
                head_check: Callable[[bytes], None] | None = None, length: int | None = None) -> int:
    """Copy `src` to `dst` until EOF, hashing what is written; at most `limit` bytes.

    `head_check` sees the first HEAD_BYTES bytes (or all, if fewer) before they are
    written, so a file that is obviously not what it claims is refused at once.
    Reads go into one reused buffer (readinto): no allocation or extra copy per chunk.
    `length` (the Content-Length, if known) keeps each read within the body, which
    werkzeug's LimitedStream.readinto needs to report a short body cleanly.
    """
    buf = memoryview(bytearray(CHUNK))
    copied = 0
    head = b""
    while True:
        want = CHUNK if length is None else min(CHUNK, length - copied)
        n = _read_into(src, buf[:want]) if want > 0 else 0
        chunk = buf[:n]
        if head_check is not None:
            head += bytes(chunk[:HEAD_BYTES - len(head)])
            if not n or len(head) >= HEAD_BYTES:
                head_check(head)
                head_check = None
        if not n:
            return copied
        copied += n
        if copied > limit:
            raise TooLargeError(f"the file is larger than the limit of {limit} bytes", "file")
        dst.write(chunk)
        hasher.update(chunk)


def _read_into(src: BinaryIO, buf: memoryview) -> int:
    try:
        if hasattr(src, "readinto"):
            return src.readinto(buf) or 0
        data = src.read(len(buf))
        buf[:len(data)] = data
        return len(data)
    except (ClientDisconnected, OSError) as exc:  # OSError: the socket timed out or was reset
        raise ClientGoneError(f"the client stopped sending before the whole body arrived ({exc})") from None


@dataclass
class _Live:
    """In-memory state of a session: a lock (one writer at a time) and the running hash."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    hashed: int = 0


class UploadSessions:
    def __init__(self, directory: Path, max_file_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()

    def data_path(self, upload_id: str) -> Path:
        return self.dir / f"{upload_id}.part"

    def open_new(self, upload_id: str) -> None:
        self.data_path(upload_id).touch(exist_ok=False)

    def offset(self, upload_id: str) -> int:
        try:
            return self.data_path(upload_id).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"no upload {upload_id!r}") from None

    def _live_of(self, upload_id: str) -> _Live:
        with self._lock:
            return self._live.setdefault(upload_id, _Live())

    def append(self, upload_id: str, stream: BinaryIO, start: int | None,
               head_check: Callable[[bytes], None] | None = None, limit: int | None = None,
               length: int | None = None) -> int:
        """Append the body at `start` (default: the current offset); return the new offset.

        A `start` other than the current offset answers 416 with that offset, so a
        client that lost track resumes at the right byte instead of corrupting the file.
        """
        live = self._live_of(upload_id)
        if not live.lock.acquire(blocking=False):
            raise ConflictError(f"upload {upload_id} is receiving another request; retry when it ends")
        try:
            offset = self.offset(upload_id)
            if start is not None and start != offset:
                raise RangeNotSatisfiableError(f"upload {upload_id} is at offset {offset}; send bytes from there",
                                               offset)
            self._catch_up(upload_id, live, offset)
            check = head_check if offset == 0 else None
            with open(self.data_path(upload_id), "ab") as f:
                try:
                    room = min(self.max_file_bytes, self.max_file_bytes if limit is None else limit) - offset
                    copy_stream(stream, f, live.hasher, limit=room, head_check=check, length=length)
                finally:
                    f.flush()
                    live.hashed = f.tell()
                    # A failed write may leave bytes on disk the hash never saw; _catch_up notices.
            return self.offset(upload_id)
        finally:
            live.lock.release()

    def _catch_up(self, upload_id: str, live: _Live, offset: int) -> None:
        if live.hashed != offset:  # after a restart, or a write that failed midway: rehash once
            with open(self.data_path(upload_id), "rb") as f:
                live.hasher = sha256_of_file(f, offset)
            live.hashed = offset

    def finish(self, upload_id: str) -> tuple[Path, Digest, int]:
        """The session's file, digest and size; the caller moves the file into the store."""
        live = self._live_of(upload_id)
        if not live.lock.acquire(blocking=False):
            raise ConflictError(f"upload {upload_id} is receiving another request; retry when it ends")
        try:
            offset = self.offset(upload_id)
            self._catch_up(upload_id, live, offset)
            return self.data_path(upload_id), Digest(live.hasher.copy().hexdigest()), offset
        finally:
            live.lock.release()

    def discard(self, upload_id: str) -> None:
        with self._lock:
            self._live.pop(upload_id, None)
        self.data_path(upload_id).unlink(missing_ok=True)

    def orphans(self, known: set[str]) -> list[str]:
        """Session files on disk with no session record (left by a crash between the two)."""
        return [p.stem for p in self.dir.glob("*.part") if p.stem not in known]

    @staticmethod
    def remove_file(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

"""Receiving file bytes: streaming copy with inline sha256, and resumable upload sessions.

Upload sessions follow the OCI distribution push protocol (chunked upload): a
session is created for one file of a draft model; each PATCH appends bytes at the
session's current offset (sent as `Content-Range` or `Upload-Offset`); the final
PUT checks the digest. Bytes already received survive a dropped connection or a
registry restart, so a client asks for the offset (HEAD) and continues from there.

The running sha256 of each session is kept in memory next to the number of bytes
it covers; after a restart (or a write that failed half-way) it is rebuilt once
from the bytes on disk, so the final PUT never re-reads a 20 GiB file.

Finishing holds the session's lock from the digest until the file has moved into the
store, and a session that is finishing or finished takes no more bytes (issue 21: a
PATCH that opened the file in between appended to the stored blob).

Free space (`--min-free`, FreeSpace) is checked before a body is read when its length
is known and again before every chunk is written; a full disk (ENOSPC) is the same
InsufficientStorageError (507), never a 500.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from collections.abc import Callable

from werkzeug.exceptions import ClientDisconnected

from eldric.core.digests import Digest, sha256_of_file
from eldric.core.formats import HEAD_BYTES
from eldric.core.request_errors import (BadRequestError, ConflictError, InsufficientStorageError, NotFoundError,
                                        RangeNotSatisfiableError, TooLargeError)
from eldric.transfer.diskspace import format_size, is_disk_full

CHUNK = 1 << 20
T = TypeVar("T")
OPEN, FINISHING, FINISHED = "open", "finishing", "finished"


@dataclass(frozen=True)
class FreeSpace:
    """The `--min-free` rule: bytes that would leave less than `min_free` free on `directory` are refused (507)."""

    directory: Path
    min_free: int = 0

    def check(self, incoming: int) -> None:
        """Refuse `incoming` more bytes (not yet on the disk) when they would leave less than min_free free."""
        free = shutil.disk_usage(self.directory).free
        if incoming > 0 and free - incoming < self.min_free:
            raise InsufficientStorageError(
                f"not enough free space on the registry storage for {format_size(incoming)} more: "
                f"{format_size(free)} free, of which --min-free keeps {format_size(self.min_free)}; "
                "free space on the registry or lower --min-free")


@contextmanager
def storage_full_as_507() -> Iterator[None]:
    """ENOSPC/EDQUOT while writing: InsufficientStorageError (507) instead of a 500."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorageError(f"the registry storage is full ({exc.strerror}); "
                                           "free space on the registry and send the bytes again") from None
        raise


class ClientGoneError(BadRequestError):
    """The client stopped sending before the body was complete."""


def copy_stream(src: BinaryIO, dst: BinaryIO, hasher: hashlib._Hash, *, limit: int,
                head_check: Callable[[bytes], None] | None = None, length: int | None = None,
                space: FreeSpace | None = None) -> int:
    """Copy `src` to `dst` until EOF, hashing what is written; at most `limit` bytes.

    `head_check` sees the first HEAD_BYTES bytes (or all, if fewer) before they are
    written, so a file that is obviously not what it claims is refused at once.
    Reads go into one reused buffer (readinto): no allocation or extra copy per chunk.
    `length` (the Content-Length, if known) keeps each read within the body, which
    werkzeug's LimitedStream.readinto needs to report a short body cleanly.
    `space` is asked before each chunk is written (a statvfs(2) per MiB: microseconds).
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
        if space is not None:
            space.check(n)
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


def _has_more(src: BinaryIO) -> bool:
    """Whether a body goes on past the bytes read (one more byte is read to know)."""
    return _read_into(src, memoryview(bytearray(1))) > 0


def _range_mismatch(named: int, body: int | None, offset: int) -> RangeNotSatisfiableError:
    has = "more" if body is None else str(body)
    return RangeNotSatisfiableError(f"the chunk's Content-Range names {named} bytes but its body has {has}; "
                                    f"nothing of it was kept, send it again from offset {offset}", offset)


@dataclass
class _Live:
    """In-memory state of a session: a lock (one writer at a time), the running hash, open/finishing/finished."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    hashed: int = 0
    state: str = OPEN


class UploadSessions:
    def __init__(self, directory: Path, max_file_bytes: int, space: FreeSpace | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.space = space or FreeSpace(self.dir)
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

    def _hold(self, upload_id: str) -> _Live:
        """Take the session's lock: 409 while another request holds it, 404 once it is finishing or finished."""
        live = self._live_of(upload_id)
        if not live.lock.acquire(blocking=False):
            if live.state != OPEN:
                raise NotFoundError(f"upload {upload_id} is being finished; it takes no more bytes")
            raise ConflictError(f"upload {upload_id} is receiving another request; retry when it ends")
        if live.state != OPEN:
            live.lock.release()
            raise NotFoundError(f"upload {upload_id} has ended; it takes no more bytes")
        return live

    def append(self, upload_id: str, stream: BinaryIO, start: int | None,
               head_check: Callable[[bytes], None] | None = None, limit: int | None = None,
               length: int | None = None, exact: int | None = None) -> int:
        """Append the body at `start` (default: the current offset); return the new offset.

        A `start` other than the current offset answers 416 with that offset, so a
        client that lost track resumes at the right byte instead of corrupting the file.
        `exact` (the length a chunk's Content-Range names): a body of another length is
        416 and none of it is kept. A known `length` that would break --min-free is
        refused before a byte is read.
        """
        live = self._hold(upload_id)
        try:
            offset = self.offset(upload_id)
            if start is not None and start != offset:
                raise RangeNotSatisfiableError(f"upload {upload_id} is at offset {offset}; send bytes from there",
                                               offset)
            if exact is not None and length is not None and length != exact:
                raise _range_mismatch(exact, length, offset)
            if length:
                self.space.check(length)
            self._catch_up(upload_id, live, offset)
            saved = live.hasher.copy()
            check = head_check if offset == 0 else None
            room = min(self.max_file_bytes, self.max_file_bytes if limit is None else limit) - offset
            with storage_full_as_507(), self._open_for_append(upload_id) as f:
                try:
                    copied = copy_stream(stream, f, live.hasher, limit=room, head_check=check,
                                         length=length if exact is None else exact, space=self.space)
                finally:
                    f.flush()
                    live.hashed = f.tell()
                    # A failed write may leave bytes on disk the hash never saw; _catch_up notices.
            if exact is not None and (copied != exact or _has_more(stream)):
                os.truncate(self.data_path(upload_id), offset)  # none of a chunk that is not what it said
                live.hasher, live.hashed = saved, offset
                raise _range_mismatch(exact, None if copied == exact else copied, offset)
            return self.offset(upload_id)
        finally:
            live.lock.release()

    def _open_for_append(self, upload_id: str) -> BinaryIO:
        """The session's file for appending; never created here (a session that ended stays ended)."""
        try:
            fd = os.open(self.data_path(upload_id), os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise NotFoundError(f"no upload {upload_id!r}") from None
        return os.fdopen(fd, "ab")

    def _catch_up(self, upload_id: str, live: _Live, offset: int) -> None:
        if live.hashed != offset:  # after a restart, or a write that failed midway: rehash once
            with open(self.data_path(upload_id), "rb") as f:
                live.hasher = sha256_of_file(f, offset)
            live.hashed = offset

    def finish(self, upload_id: str, store: Callable[[Path, Digest, int], T]) -> T:
        """`store(file, digest, size)` moves the session's file into place; then the session ends.

        All under the session's lock, so no byte is appended between the digest and the move
        (issue 21); meanwhile the session answers as an unknown upload. If `store` raises, the
        session stays as it was (the caller may discard it).
        """
        live = self._hold(upload_id)
        try:
            offset = self.offset(upload_id)
            self._catch_up(upload_id, live, offset)
            live.state = FINISHING
            try:
                result = store(self.data_path(upload_id), Digest(live.hasher.copy().hexdigest()), offset)
            except BaseException:
                live.state = OPEN
                raise
            live.state = FINISHED
            self.discard(upload_id)
            return result
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

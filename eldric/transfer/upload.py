"""The one resumable upload client: a file into a registry upload session, chunk by chunk.

Used by the registry SDK (`eldric.client.registry`) and the operator CLI
(`eldric registry upload`). Each chunk is a PATCH at the session's offset with
`Content-Range`; the sha256 is computed while the bytes are sent (one read of the
file). After a failure the server is asked for its offset and the upload goes on
from there; bytes the server kept of a failed chunk are hashed from the file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import BinaryIO

import requests

from eldric.core.errors import EldricError
from eldric.transfer.retry import backoff_delay, is_transient_status

BLOCK = 1 << 20


class FileSpan:
    """`length` bytes of `f` from `offset`, hashed and counted as requests reads them (sent with Content-Length)."""

    def __init__(self, f: BinaryIO, offset: int, length: int, hasher: hashlib._Hash | None = None,
                 on_read: Callable[[int], None] = lambda n: None) -> None:
        self.f, self.left, self.length, self.hasher, self.on_read = f, length, length, hasher, on_read
        f.seek(offset)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int | None = -1) -> bytes:
        data = self.f.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self.on_read(self.length - self.left)
        return data


def hash_range(f: BinaryIO, hasher: hashlib._Hash, start: int, end: int) -> None:
    """Feed bytes [start, end) of `f` to `hasher`."""
    f.seek(start)
    left = end - start
    while left > 0:
        block = f.read(min(BLOCK, left))
        if not block:
            raise EldricError("the file shrank while it was being uploaded")
        hasher.update(block)
        left -= len(block)


def is_retryable(exc: BaseException) -> bool:
    """A failed chunk worth resuming: the connection broke, or the server answered 409/416 (offset moved) or 5xx."""
    if isinstance(exc, requests.RequestException):
        return True
    status = getattr(exc, "status", None)
    return status is None or status in (409, 416) or is_transient_status(status)


# call(method, path, **requests kwargs) -> Response; raises an exception with `.status` on an HTTP error.
Call = Callable[..., requests.Response]


def send_chunks(call: Call, session_path: str, f: BinaryIO, size: int, *, chunk_bytes: int, attempts: int = 8,
                sleep: Callable[[float], None] = time.sleep, on_progress: Callable[[int], None] = lambda n: None,
                on_offset: Callable[[int], None] = lambda n: None) -> hashlib._Hash:
    """PATCH `f` into the session from the server's offset to the end; return the sha256 of the whole file.

    `on_offset` hears each offset the server confirms (where a rerun resumes); `on_progress` hears bytes sent.
    Gives up with the last error after `attempts` failures in a row.
    """
    hasher, hashed, failures, offset = hashlib.sha256(), 0, 0, None  # hasher covers bytes [0, hashed)
    chunk_bytes = max(1, chunk_bytes)
    while offset is None or offset < size:
        try:
            if offset is None:  # start, or after a failure: the server says where we are
                offset = int(call("GET", session_path).json()["offset"])
                on_offset(offset)
                on_progress(offset)
                continue
            if hashed != offset:  # the server kept part of a chunk whose send failed
                if hashed > offset:
                    hasher, hashed = hashlib.sha256(), 0
                hash_range(f, hasher, hashed, offset)
                hashed = offset
            length, trial, start = min(chunk_bytes, size - offset), hasher.copy(), offset
            body = FileSpan(f, start, length, trial, lambda n, start=start: on_progress(start + n))
            resp = call("PATCH", session_path, data=body, headers={
                "Content-Range": f"bytes {start}-{start + length - 1}/{size}",
                "Content-Type": "application/octet-stream"})
            offset = int(resp.json()["offset"])
            on_offset(offset)
            if offset == start + length:
                hasher, hashed = trial, offset
            failures = 0
        except Exception as exc:
            if not is_retryable(exc):
                raise
            failures += 1
            if failures >= attempts:
                raise
            sleep(backoff_delay(failures - 1, base=0.2, cap=5.0))
            offset = None
    if hashed != size:
        hash_range(f, hasher, hashed, size)
    return hasher

"""registry/uploads.py without a server: session states, a chunk that is not its Content-Range, --min-free."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest

from eldric.core.digests import Digest
from eldric.core.request_errors import InsufficientStorageError, NotFoundError, RangeNotSatisfiableError
from registry.uploads import FreeSpace, UploadSessions


@pytest.fixture
def sessions(tmp_path: Path) -> UploadSessions:
    found = UploadSessions(tmp_path / "uploads", max_file_bytes=1 << 20)
    found.open_new("a" * 32)
    return found


def test_while_finishing_and_after_a_session_takes_no_bytes(sessions: UploadSessions, tmp_path: Path) -> None:
    uid = "a" * 32
    sessions.append(uid, io.BytesIO(b"hello"), None)
    answers = []

    def store(data: Path, digest: Digest, size: int) -> str:
        with pytest.raises(NotFoundError, match="being finished"):
            sessions.append(uid, io.BytesIO(b"more"), None)
        answers.append((digest, size))
        data.rename(tmp_path / "stored")
        return "ok"

    assert sessions.finish(uid, store) == "ok"
    assert answers == [(Digest(hashlib.sha256(b"hello").hexdigest()), 5)]
    with pytest.raises(NotFoundError):
        sessions.append(uid, io.BytesIO(b"late"), None)
    assert (tmp_path / "stored").read_bytes() == b"hello" and not sessions.data_path(uid).exists()


def test_a_failed_store_leaves_the_session_open(sessions: UploadSessions) -> None:
    uid = "a" * 32

    def refuse(*_: object) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        sessions.finish(uid, refuse)
    assert sessions.append(uid, io.BytesIO(b"x"), None) == 1


@pytest.mark.parametrize("body", [b"short", b"far too long for it"])
def test_a_chunk_that_is_not_its_content_range_keeps_nothing_of_itself(sessions: UploadSessions, body: bytes) -> None:
    uid = "a" * 32
    sessions.append(uid, io.BytesIO(b"0123"), None)
    with pytest.raises(RangeNotSatisfiableError) as exc:
        sessions.append(uid, io.BytesIO(body), 4, exact=10)  # chunked: no length, counted as it arrives
    assert exc.value.size == 4 and sessions.offset(uid) == 4
    sessions.append(uid, io.BytesIO(b"456789"), 4, exact=6)
    digest = sessions.finish(uid, lambda _data, d, _size: d)
    assert digest == Digest(hashlib.sha256(b"0123456789").hexdigest())  # the running hash was rolled back too


def test_min_free_refuses_a_known_length_before_reading_and_a_stream_before_writing(tmp_path: Path) -> None:
    floor = shutil.disk_usage(tmp_path).free + (1 << 30)  # above what is free, however others use the disk
    sessions = UploadSessions(tmp_path / "uploads", 1 << 40, FreeSpace(tmp_path, floor))
    sessions.open_new("b" * 32)
    body = io.BytesIO(b"z" * (3 << 20))
    with pytest.raises(InsufficientStorageError, match="--min-free"):
        sessions.append("b" * 32, body, None, length=3 << 20)
    assert body.tell() == 0  # not a byte read
    with pytest.raises(InsufficientStorageError):
        sessions.append("b" * 32, body, None)  # chunked: checked before each chunk is written
    assert sessions.offset("b" * 32) == 0

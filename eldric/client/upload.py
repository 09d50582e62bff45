"""Resumable uploads into the model registry through its upload sessions (draft, PATCH chunks, PUT, commit)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable

import requests

from eldric.client.api import REGISTRY, ClientError


class _Chunk:
    """`length` bytes of `f` from `offset`, hashed and counted as requests reads them (sent with Content-Length)."""

    def __init__(self, f: BinaryIO, offset: int, length: int, hasher: hashlib._Hash,
                 on_read: Callable[[int], None]) -> None:
        self.f, self.left, self.length, self.hasher, self.on_read = f, length, length, hasher, on_read
        f.seek(offset)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        self.hasher.update(data)
        self.on_read(self.length - self.left)
        return data


def _hash_range(f: BinaryIO, hasher: hashlib._Hash, start: int, end: int) -> None:
    f.seek(start)
    while start < end:
        block = f.read(min(1 << 20, end - start))
        if not block:
            raise ClientError("the file shrank while it was being uploaded")
        hasher.update(block)
        start += len(block)


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, requests.RequestException) or getattr(exc, "status", None) in (
        None, 409, 416, 500, 502, 503, 504)


class ResumableUpload:
    """One file into the registry through an upload session (draft, PATCH chunks, PUT with sha256, commit).

    The session ids are kept in `state_dir`, keyed by controller, file (path, size, mtime) and target
    name, so the same command run again after a crash or Ctrl-C continues from the registry's offset.
    """

    def __init__(self, call: Callable[..., requests.Response], path: Path, *, name: str, version: str | None = None,
                 fmt: str | None = None, chunk_bytes: int = 64 << 20, state_dir: Path, key_extra: str = "",
                 attempts: int = 8, sleep: Callable[[float], None] = time.sleep) -> None:
        self.call, self.path, self.name, self.version, self.fmt = call, path, name, version, fmt
        self.chunk_bytes, self.attempts, self.sleep = max(1, chunk_bytes), attempts, sleep
        st = path.stat()
        key = f"{key_extra}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{name}|{version}|{fmt}"
        self.state_file = Path(state_dir) / f"upload-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        self.resumed_at = 0
        self.offset = 0

    def run(self, on_progress: Callable[[int], None]) -> dict:
        size = self.path.stat().st_size
        session = self._resume() or self._open(size)
        uid, model_id = session["upload_id"], session["model_id"]
        with open(self.path, "rb") as f:
            hasher = self._send(f, uid, size, on_progress)
        try:
            self.call("PUT", f"{REGISTRY}/uploads/{uid}", params={"digest": "sha256:" + hasher.hexdigest()})
            model = self.call("POST", f"{REGISTRY}/{model_id}/commit").json()
        except ClientError as exc:
            if exc.status in (400, 404, 413, 422):  # refused for good: the draft is of no further use
                self._forget()
                try:
                    self.call("DELETE", f"{REGISTRY}/{model_id}")
                except ClientError:
                    pass
            raise
        self._forget()
        return model

    def _send(self, f: BinaryIO, uid: str, size: int, on_progress: Callable[[int], None]) -> hashlib._Hash:
        """PATCH chunks from the registry's offset to the end; return the sha256 of the whole file."""
        hasher, hashed, failures, offset = hashlib.sha256(), 0, 0, None
        while offset is None or offset < size:
            try:
                if offset is None:  # start, or after a failure: the registry says where we are
                    offset = self.offset = int(self.call("GET", f"{REGISTRY}/uploads/{uid}").json()["offset"])
                    self.resumed_at = self.resumed_at or offset
                    on_progress(offset)
                    continue
                if hashed != offset:
                    if hashed > offset:
                        hasher, hashed = hashlib.sha256(), 0
                    _hash_range(f, hasher, hashed, offset)
                    hashed = offset
                length, trial, start = min(self.chunk_bytes, size - offset), hasher.copy(), offset
                body = _Chunk(f, offset, length, trial, lambda n: on_progress(start + n))
                resp = self.call("PATCH", f"{REGISTRY}/uploads/{uid}", data=body, headers={
                    "Content-Range": f"bytes {offset}-{offset + length - 1}/{size}",
                    "Content-Type": "application/octet-stream"})
                offset = self.offset = int(resp.json()["offset"])
                if offset == start + length:
                    hasher, hashed = trial, offset
                failures = 0
            except (ClientError, requests.RequestException) as exc:
                if not _is_transient(exc):
                    raise
                failures += 1
                if failures >= self.attempts:
                    raise ClientError(f"upload stopped at byte {self.offset} of {size} ({exc}); "
                                      "run the same command again to resume") from None
                self.sleep(min(5.0, 0.2 * 2 ** failures))
                offset = None
        if hashed != size:
            _hash_range(f, hasher, hashed, size)
        return hasher

    def _resume(self) -> dict | None:
        try:
            session = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            self.call("GET", f"{REGISTRY}/uploads/{session['upload_id']}")
        except ClientError as exc:
            if exc.status in (404, 410):  # expired or finished: start over
                self._forget()
                return None
            raise
        return session

    def _open(self, size: int) -> dict:
        draft = {"name": self.name, "version": self.version, "format": self.fmt, "source": "upload"}
        model = self.call("POST", REGISTRY, json={k: v for k, v in draft.items() if v}).json()
        upload = self.call("POST", f"{REGISTRY}/{model['id']}/uploads", json={"path": self.path.name, "size": size})
        session = {"model_id": model["id"], "upload_id": upload.json()["id"], "file": str(self.path.resolve())}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(session))
        return session

    def _forget(self) -> None:
        self.state_file.unlink(missing_ok=True)


def default_name(path: Path) -> str:
    """The registry name a file gets unless --name says otherwise: its stem, cleaned to [A-Za-z0-9_.-]."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in path.stem)
    return stem.lstrip(".-") or "model"


# ---- argument parsing --------------------------------------------------------------------------

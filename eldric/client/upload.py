"""Resumable uploads into the model registry through its upload sessions (draft, PATCH chunks, PUT, commit)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable

import requests

from eldric.client.api import ClientError
from eldric.core.formats import HEAD_BYTES, check_head, detect_format
from eldric.core.request_errors import InvalidFormatError
from eldric.transfer.model_registry import API_PREFIX, model_path, upload_path
from eldric.transfer.upload import is_retryable, send_chunks


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
        self.resumed_at = 0  # where a rerun took up the registry's session (0: a fresh upload)
        self.offset = 0
        self._resuming = False

    def run(self, on_progress: Callable[[int], None]) -> dict:
        size = self.path.stat().st_size
        check_single_file(self.path, self.fmt)
        session = self._resume()
        self._resuming = session is not None
        session = session or self._open(size)
        uid, model_id = session["upload_id"], session["model_id"]
        with open(self.path, "rb") as f:
            hasher = self._send(f, uid, size, on_progress)
        try:
            self.call("PUT", upload_path(uid), params={"digest": "sha256:" + hasher.hexdigest()})
            model = self.call("POST", model_path(model_id, "commit")).json()
        except ClientError as exc:
            # Refused for good, the draft of no further use: 409 here is a name:version taken meanwhile or the same
            # files already registered (the registry names that model).
            if exc.status in (400, 404, 409, 413, 422):
                self._forget()
                try:
                    self.call("DELETE", model_path(model_id))
                except ClientError:
                    pass
            raise
        self._forget()
        return model

    def _send(self, f: BinaryIO, uid: str, size: int, on_progress: Callable[[int], None]) -> hashlib._Hash:
        """PATCH chunks from the registry's offset to the end; return the sha256 of the whole file."""
        def confirmed(offset: int) -> None:
            # Only the offset the registry reports first for a session of an earlier run is a resume; every
            # later one is this run's own progress (issue 22: a fresh upload said "resumed at byte <size>").
            if self._resuming:
                self.resumed_at, self._resuming = offset, False
            self.offset = offset

        try:
            return send_chunks(self.call, upload_path(uid), f, size, chunk_bytes=self.chunk_bytes,
                               attempts=self.attempts, sleep=self.sleep, on_progress=on_progress, on_offset=confirmed)
        except (ClientError, requests.RequestException) as exc:
            if not is_retryable(exc):
                raise
            raise ClientError(f"upload stopped at byte {self.offset} of {size} ({exc}); "
                              "run the same command again to resume") from None

    def _resume(self) -> dict | None:
        try:
            session = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            self.call("GET", upload_path(session["upload_id"]))
        except ClientError as exc:
            if exc.status in (404, 410):  # expired or finished: start over
                self._forget()
                return None
            raise
        return session

    def _open(self, size: int) -> dict:
        draft = {"name": self.name, "version": self.version, "format": self.fmt, "source": "upload"}
        model = self.call("POST", API_PREFIX, json={k: v for k, v in draft.items() if v}).json()
        upload = self.call("POST", model_path(model["id"], "uploads"), json={"path": self.path.name, "size": size})
        session = {"model_id": model["id"], "upload_id": upload.json()["id"], "file": str(self.path.resolve())}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(session))
        return session

    def _forget(self) -> None:
        self.state_file.unlink(missing_ok=True)


def check_single_file(path: Path, fmt: str | None) -> None:
    """What the registry checks of a one-file model before its body (eldric/core/formats.py), checked here
    before a draft is made or a byte is sent: the name against the declared format, and the file's first bytes."""
    try:
        detect_format([path.name], fmt)
        with open(path, "rb") as f:
            check_head(path.name, f.read(HEAD_BYTES))
    except InvalidFormatError as exc:
        raise ClientError(f"{exc}; nothing was uploaded", 422) from None


def default_name(path: Path) -> str:
    """The registry name a file gets unless --name says otherwise: its stem, cleaned to [A-Za-z0-9_.-]."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in path.stem)
    return stem.lstrip(".-") or "model"


# ---- argument parsing --------------------------------------------------------------------------

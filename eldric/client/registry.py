"""A Python client of the model registry API (the registry itself or the controller's mirror).

What the Training Worker calls to register its output, and what tests and the
benchmark use. Large files go through upload sessions in chunks; a dropped
connection is resumed from the offset the server reports. The sha256 is computed
while the bytes are sent (one read of the file), and the server checks it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import requests

from eldric.core.errors import EldricError
from eldric.transfer.http import BLOCK
from eldric.transfer.model_registry import (API_PREFIX, UPLOAD_FILE_PATH, ModelRegistryApi, file_path, model_path,
                                            upload_path)
from eldric.transfer.retry import TRANSIENT_ERRORS
from eldric.transfer.upload import FileSpan, send_chunks


class RegistryClientError(EldricError):
    """An error answer of the registry: `status` and the problem body."""

    def __init__(self, status: int, body: dict | str) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.body = status, body


class ModelRegistryClient:
    """The SDK over the one API client (eldric/transfer/model_registry.py): JSON answers, RegistryClientError."""

    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None, *,
                 chunk_bytes: int = 256 << 20, resumable_above: int = 256 << 20, attempts: int = 8,
                 timeout: tuple[float, float] = (5, 600)) -> None:
        self.api = ModelRegistryApi(base_url, token, session, timeout)
        self.chunk_bytes, self.resumable_above, self.attempts = chunk_bytes, resumable_above, attempts

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        """One call to a path of the API (eldric.transfer.model_registry); RegistryClientError for an error answer."""
        resp = self.api.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise RegistryClientError(resp.status_code, body)
        return resp

    def list_models(self, **query: object) -> dict:
        return self.call("GET", API_PREFIX, params=query).json()

    def get_model(self, model_id: str) -> dict:
        return self.call("GET", model_path(model_id)).json()

    def delete_model(self, model_id: str) -> None:
        self.call("DELETE", model_path(model_id))

    def upload_file(self, file: str | os.PathLike, *, name: str, filename: str | None = None,
                    digest: str | None = None, **query: object) -> dict:
        """One request: a single-file model (GGUF). Not resumable; see upload_model for that."""
        file = Path(file)
        params = {"name": name, "filename": filename or file.name, **{k: v for k, v in query.items() if v}}
        if digest:
            params["digest"] = digest
        with open(file, "rb") as f:
            body = FileSpan(f, 0, file.stat().st_size)
            return self.call("POST", UPLOAD_FILE_PATH, params=params, data=body,
                             headers={"Content-Type": "application/octet-stream"}).json()

    def upload_model(self, files: str | os.PathLike | dict[str, Path], *, name: str, **draft: object) -> dict:
        """Create a draft, upload every file (resumably when large), commit; delete the draft on failure.

        `files` is a directory (every file under it, by relative path) or {path in model: local file}.
        """
        mapping = _files_of(files)
        model = self.call("POST", API_PREFIX, json={"name": name, **{k: v for k, v in draft.items() if v is not None}}).json()
        try:
            for path, local in sorted(mapping.items()):
                self.put_file(model["id"], path, local)
            return self.call("POST", model_path(model["id"], "commit")).json()
        except BaseException:
            try:
                self.delete_model(model["id"])
            except (RegistryClientError, *TRANSIENT_ERRORS):
                pass
            raise

    def register_training_output(self, files: str | os.PathLike | dict[str, Path], *, name: str, base_model: str,
                                 run_id: str, **draft: object) -> dict:
        """The Training Worker's call: files registered with source=training and lineage."""
        lineage = {**(draft.pop("lineage", None) or {}), "base_model": base_model, "run_id": run_id}
        return self.upload_model(files, name=name, source="training", lineage=lineage, **draft)

    def put_file(self, model_id: str, path: str, local: Path) -> dict:
        size = local.stat().st_size
        if size > self.resumable_above:
            return self.upload_resumable(model_id, path, local)
        with open(local, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            body = FileSpan(f, 0, size)
            return self.call("PUT", file_path(model_id, path), params={"digest": digest}, data=body).json()

    def upload_resumable(self, model_id: str, path: str, local: Path) -> dict:
        """Upload in chunks through a session; after a failure, ask the offset and go on from there."""
        size = local.stat().st_size
        session = self.call("POST", model_path(model_id, "uploads"), json={"path": path, "size": size}).json()
        with open(local, "rb") as f:
            hasher = send_chunks(self.call, upload_path(session["id"]), f, size, chunk_bytes=self.chunk_bytes,
                                 attempts=self.attempts)
        return self.call("PUT", upload_path(session["id"]), params={"digest": "sha256:" + hasher.hexdigest()}).json()

    def download(self, model_id: str, path: str, dest: str | os.PathLike) -> Path:
        """Fetch a file to `dest`, continuing a partial one with Range; verified against its sha256."""
        dest = Path(dest)
        have = dest.stat().st_size if dest.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.call("GET", file_path(model_id, path), headers=headers, stream=True) as resp:
            mode = "ab" if resp.status_code == 206 else "wb"
            with open(dest, mode) as out:
                for chunk in resp.iter_content(BLOCK):
                    out.write(chunk)
            expected = resp.headers.get("X-Content-Digest")
        with open(dest, "rb") as f:
            actual = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        if expected and actual != expected:
            raise EldricError(f"{dest}: downloaded bytes have {actual}, expected {expected}")
        return dest


def _files_of(files: str | os.PathLike | dict[str, Path]) -> dict[str, Path]:
    if isinstance(files, dict):
        return {k: Path(v) for k, v in files.items()}
    root = Path(files)
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

"""A Python client of the model registry API (the registry itself or the controller's mirror).

What the Training Worker calls to register its output, and what tests and the
benchmark use. Large files go through upload sessions in chunks; a dropped
connection is resumed from the offset the server reports. The sha256 is computed
while the bytes are sent (one read of the file), and the server checks it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from eldric.core.errors import EldricError
from eldric.cluster.registry_api import API_PREFIX

BLOCK = 1 << 20
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class RegistryClientError(EldricError):
    """An error answer of the registry: `status` and the problem body."""

    def __init__(self, status: int, body: dict | str) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.body = status, body


class _BigBlocks(HTTPAdapter):
    """Send request bodies in 1 MiB blocks (urllib3's default is 16 KiB: 64x the system calls)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


def http_session(trust_env: bool = False) -> requests.Session:
    session = requests.Session()
    session.trust_env = trust_env  # cluster-internal traffic does not go through an egress proxy
    for prefix in ("http://", "https://"):
        session.mount(prefix, _BigBlocks())
    return session


class _Body:
    """`length` bytes of a file from `offset`, hashed as they are read; requests sends it with Content-Length."""

    def __init__(self, f: BinaryIO, offset: int, length: int, hasher: hashlib._Hash | None) -> None:
        self.f, self.left, self.hasher = f, length, hasher
        self.length = length
        f.seek(offset)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        return data


class ModelRegistryClient:
    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None, *,
                 chunk_bytes: int = 256 << 20, resumable_above: int = 256 << 20, attempts: int = 8,
                 timeout: tuple[float, float] = (5, 600)) -> None:
        self.base = base_url.rstrip("/") + API_PREFIX
        self.session = session or http_session()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.chunk_bytes, self.resumable_above, self.attempts = chunk_bytes, resumable_above, attempts
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        resp = self.session.request(method, self.base + path, headers=headers, timeout=self.timeout, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise RegistryClientError(resp.status_code, body)
        return resp

    def list_models(self, **query: object) -> dict:
        return self.call("GET", "", params=query).json()

    def get_model(self, model_id: str) -> dict:
        return self.call("GET", f"/{model_id}").json()

    def delete_model(self, model_id: str) -> None:
        self.call("DELETE", f"/{model_id}")

    def upload_file(self, file: str | os.PathLike, *, name: str, filename: str | None = None,
                    digest: str | None = None, **query: object) -> dict:
        """One request: a single-file model (GGUF). Not resumable; see upload_model for that."""
        file = Path(file)
        params = {"name": name, "filename": filename or file.name, **{k: v for k, v in query.items() if v}}
        if digest:
            params["digest"] = digest
        with open(file, "rb") as f:
            body = _Body(f, 0, file.stat().st_size, None)
            return self.call("POST", "/upload", params=params, data=body,
                             headers={"Content-Type": "application/octet-stream"}).json()

    def upload_model(self, files: str | os.PathLike | dict[str, Path], *, name: str, **draft: object) -> dict:
        """Create a draft, upload every file (resumably when large), commit; delete the draft on failure.

        `files` is a directory (every file under it, by relative path) or {path in model: local file}.
        """
        mapping = _files_of(files)
        model = self.call("POST", "", json={"name": name, **{k: v for k, v in draft.items() if v is not None}}).json()
        try:
            for path, local in sorted(mapping.items()):
                self.put_file(model["id"], path, local)
            return self.call("POST", f"/{model['id']}/commit").json()
        except BaseException:
            try:
                self.delete_model(model["id"])
            except (RegistryClientError, *_TRANSIENT):
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
            body = _Body(f, 0, size, None)
            return self.call("PUT", f"/{model_id}/files/{quote(path)}", params={"digest": digest}, data=body).json()

    def upload_resumable(self, model_id: str, path: str, local: Path) -> dict:
        """Upload in chunks through a session; after a failure, ask the offset and go on from there."""
        size = local.stat().st_size
        session = self.call("POST", f"/{model_id}/uploads", json={"path": path, "size": size}).json()
        hasher, hashed, offset, failures = hashlib.sha256(), 0, 0, 0  # hasher covers bytes [0, hashed)
        with open(local, "rb") as f:
            while offset < size:
                if hashed != offset:  # the server kept part of a chunk whose send failed
                    if hashed > offset:
                        hasher, hashed = hashlib.sha256(), 0
                    _hash_range(f, hasher, hashed, offset)
                    hashed = offset
                length = min(self.chunk_bytes, size - offset)
                trial = hasher.copy()
                try:
                    resp = self.call("PATCH", f"/uploads/{session['id']}", data=_Body(f, offset, length, trial),
                                     headers={"Content-Range": f"bytes {offset}-{offset + length - 1}/{size}"})
                    offset = resp.json()["offset"]
                    if offset == hashed + length:
                        hasher, hashed = trial, offset
                except (*_TRANSIENT, RegistryClientError) as exc:
                    if isinstance(exc, RegistryClientError) and exc.status not in (409, 416, 502, 503, 504):
                        raise
                    failures += 1
                    if failures >= self.attempts:
                        raise
                    time.sleep(min(5.0, 0.2 * 2 ** failures))
                    offset = self.call("GET", f"/uploads/{session['id']}").json()["offset"]
        digest = "sha256:" + hasher.hexdigest()
        return self.call("PUT", f"/uploads/{session['id']}", params={"digest": digest}).json()

    def download(self, model_id: str, path: str, dest: str | os.PathLike) -> Path:
        """Fetch a file to `dest`, continuing a partial one with Range; verified against its sha256."""
        dest = Path(dest)
        have = dest.stat().st_size if dest.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.call("GET", f"/{model_id}/files/{quote(path)}", headers=headers, stream=True) as resp:
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


def _hash_range(f: BinaryIO, hasher: hashlib._Hash, start: int, end: int) -> None:
    f.seek(start)
    left = end - start
    while left > 0:
        block = f.read(min(BLOCK, left))
        if not block:
            raise EldricError("the file shrank while it was being uploaded")
        hasher.update(block)
        left -= len(block)


def _files_of(files: str | os.PathLike | dict[str, Path]) -> dict[str, Path]:
    if isinstance(files, dict):
        return {k: Path(v) for k, v in files.items()}
    root = Path(files)
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

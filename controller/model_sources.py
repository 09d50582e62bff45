"""Where the controller reads a cluster model's manifest and blobs: a worker agent that has it.

Agents serve their store to holders of the cluster secret (worker_agent/server.py): a model's manifest
at `GET /api/models/export?model=`, a blob at `GET /blobs/sha256:<hex>`. Create (`from` a cluster
model) and push copy the blobs the data node's registry lacks from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import requests

from controller.models import workers_with
from controller.workers import get_worker
from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError
from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from eldric.core.request_errors import BadRequestError, UnavailableError
from eldric.transfer.http import http_session

TIMEOUT = (5.0, 30.0)


@dataclass(frozen=True)
class WorkerCopy:
    """A model's manifest as a worker holds it, and where that worker serves its blobs."""

    worker: str
    address: str
    raw: bytes
    manifest: Manifest

    def open_blob(self, digest: Digest, secret: str) -> requests.Response:
        """The blob's bytes as a stream (the caller closes it)."""
        session = http_session(token=secret)
        try:
            resp = session.get(f"{self.address}/blobs/{digest}", stream=True, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise UnavailableError(f"worker {self.worker} could not send blob {digest}: {exc}") from None
        if resp.status_code != 200:
            resp.close()
            raise UnavailableError(f"worker {self.worker} answered {resp.status_code} for blob {digest}")
        resp.raw.decode_content = False
        return resp


def worker_copy(client: redis.Redis, name: ModelName, secret: str) -> WorkerCopy | None:
    """The manifest of an Ollama-format model from an online worker that has it; None when none has it."""
    errors = []
    with http_session(token=secret) as session:
        for wid in workers_with(client, name.short):
            worker = get_worker(client, wid)
            if not worker or not worker["online"] or not worker["address"]:
                continue
            try:
                resp = session.get(f"{worker['address']}/api/models/export", params={"model": name.short},
                                   timeout=TIMEOUT)
            except requests.RequestException as exc:
                errors.append(f"{wid}: {exc}")
                continue
            if resp.status_code == 404:
                continue
            doc = resp.json() if resp.ok else {}
            if doc.get("kind") == "files":
                raise BadRequestError(f"'{name.short}' is a file model ({(doc.get('entry') or {}).get('format')}), "
                                      "not an Ollama-format model: create builds on GGUF models of the Ollama layout",
                                      field="from")
            if doc.get("kind") != "ollama":
                errors.append(f"{wid}: {resp.status_code} {doc.get('kind') or ''}".strip())
                continue
            raw = doc["manifest"].encode()
            try:
                return WorkerCopy(wid, worker["address"], raw, Manifest.parse(raw))
            except InvalidManifestError as exc:
                errors.append(f"{wid}: {exc}")
    if errors:
        raise UnavailableError(f"no online worker could give the manifest of '{name.short}' ({'; '.join(errors)})")
    return None

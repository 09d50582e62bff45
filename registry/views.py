"""How models, files and upload sessions look to API clients (plain dicts, JSON-ready)."""

from __future__ import annotations

import json
from datetime import datetime, UTC

from eldric.core.digests import Digest
from eldric.core.request_errors import BadRequestError
from eldric.transfer.model_registry import model_path, upload_path

MAX_LINEAGE_BYTES = 16 << 10


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def file_view(entry: dict) -> dict:
    digest = Digest.parse(entry["digest"])
    # Relative to the storage root, so a worker mounting the export over NFS finds the bytes.
    return {"path": entry["path"], "size": entry["size"], "sha256": str(digest),
            "location": f"blobs/{digest.filename}"}


def model_view(model: dict, fingerprint: str) -> dict:
    ready = model["state"] == "ready"
    version = model["version"] if ready else model["requested_version"]
    files = [file_view(f) for f in model.get("files", [])]
    return {
        "id": model["id"], "name": model["name"], "version": version,
        "reference": f"{model['name']}:{version}" if ready else None,
        "state": model["state"], "format": model["format"], "source": model["source"],
        "size": model["size"] if ready else sum(f["size"] for f in files),
        "created_at": iso_time(model["created_at"]), "committed_at": iso_time(model["committed_at"]),
        "description": model["description"], "lineage": model["lineage"], "origin": model["origin"],
        "details": model["details"] or {}, "files": files,
        "storage": {"fingerprint": fingerprint, "tree": f"trees/{model['id']}" if ready else None},
        "links": {"self": model_path(model["id"]), "files": model_path(model["id"], "files", "")},
    }


def upload_view(record: dict, offset: int) -> dict:
    return {"id": record["id"], "model_id": record["model_id"], "path": record["path"], "offset": offset,
            "size": record["size"], "digest": record["digest"], "location": upload_path(record["id"])}


def clean_lineage(lineage: object, *, required: bool) -> dict | None:
    """Lineage is a flat JSON object; training output must name its base model and run id."""
    if lineage is None:
        if required:
            raise BadRequestError("training output needs lineage with base_model and run_id", "lineage")
        return None
    if not isinstance(lineage, dict) or not all(isinstance(k, str) for k in lineage):
        raise BadRequestError("lineage must be a JSON object", "lineage")
    if not all(v is None or isinstance(v, (str, int, float, bool)) for v in lineage.values()):
        raise BadRequestError("lineage values must be strings, numbers or booleans", "lineage")
    if len(json.dumps(lineage)) > MAX_LINEAGE_BYTES:
        raise BadRequestError("lineage is larger than 16 KiB", "lineage")
    if required and not (lineage.get("base_model") and lineage.get("run_id")):
        raise BadRequestError("training output needs lineage.base_model and lineage.run_id", "lineage")
    return {k: v for k, v in lineage.items() if v is not None}

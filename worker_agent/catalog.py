"""Models on this node that came as files (registry, URL, peer), not as Ollama-registry pulls.

Each entry is a small JSON record `catalog/<name>/<version>.json` listing the model's
files (path inside the model, sha256, size) whose bytes live in the node's one
content-addressed blob store (shared with Ollama's), plus where each backend got
it installed. A file shared by two models, or by a model and an Ollama layer, is
stored once.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from eldric.core.errors import InvalidNameError
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.names import FileModelRef

ENTRY_SUFFIX = ".json"


def entry_files(entry: dict, blobs: BlobStore) -> dict[str, Path]:
    """Where a catalog model's files are on this node: its shared tree, or the blob store."""
    if entry.get("shared") and entry.get("shared_path"):
        return {f["path"]: Path(entry["shared_path"]) / f["path"] for f in entry.get("files", [])}
    return {f["path"]: blobs.path(Digest.parse(f["sha256"])) for f in entry.get("files", [])}


class Catalog:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, reference: str) -> Path:
        """`<root>/[<namespace>/]<name>/<version>.json`: the name is checked before any path is built."""
        ref = FileModelRef.parse(reference)
        return self.root.joinpath(*ref.path_parts(), f"{ref.version}{ENTRY_SUFFIX}")

    def get(self, reference: str) -> dict | None:
        try:
            return json.loads(self.path(reference).read_text())
        except (FileNotFoundError, InvalidNameError, ValueError):
            return None

    def put(self, entry: dict) -> Path:
        """Write the entry atomically; it is the last step, so a listed model is complete."""
        final = self.path(entry["name"])
        final.parent.mkdir(parents=True, exist_ok=True)
        entry = {**entry, "modified_at": time.time()}
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=final.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, indent=1)
        os.replace(tmp, final)
        return final

    def delete(self, reference: str) -> dict | None:
        entry = self.get(reference)
        if entry is not None:
            path = self.path(reference)
            path.unlink(missing_ok=True)
            for directory in (path.parent, path.parent.parent):  # the name's, then the namespace's
                if directory == self.root:
                    break
                try:
                    directory.rmdir()
                except OSError:  # not empty: other versions or models
                    break
        return entry

    def entries(self) -> list[dict]:
        out = []
        if not self.root.is_dir():
            return out
        paths = [*self.root.glob(f"*/*{ENTRY_SUFFIX}"), *self.root.glob(f"*/*/*{ENTRY_SUFFIX}")]
        for path in sorted(paths):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def referenced_digests(self) -> set[str]:
        return {f["sha256"].removeprefix("sha256:") for e in self.entries() for f in e.get("files", [])
                if not e.get("shared")}

    def inventory(self) -> list[dict]:
        """Inventory records; `backends`: those it was installed into (worker_agent/serving.py keeps the node's)."""
        return [{"name": e["name"], "full_name": e["name"], "digest": e.get("digest"), "size": e.get("size", 0),
                 "modified_at": e.get("modified_at", 0), "format": e.get("format"),
                 "backends": list(e.get("installed", {})),
                 "source": e.get("source"), "shared": bool(e.get("shared")),
                 "details": e.get("details") or {}} for e in self.entries()]

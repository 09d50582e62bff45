"""Ollama's on-disk model store: `blobs/sha256-<hex>` and `manifests/<host>/<ns>/<model>/<tag>`.

Laid out exactly as Ollama does, so an Ollama server on the node lists what we
pulled with no second download. Our partial downloads live in `.eldric-partial/`
(same filesystem, so the final rename is atomic; Ollama ignores the directory).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from registry.blobstore import BlobStore
from registry.manifests import Manifest
from registry.names import ModelName


class OllamaStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests_dir = self.root / "manifests"
        self.partial_dir = self.root / ".eldric-partial"

    def ensure(self) -> None:
        for d in (self.blobs.root, self.manifests_dir, self.partial_dir):
            d.mkdir(parents=True, exist_ok=True)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts())

    def write_manifest(self, name: ModelName, raw: bytes) -> Path:
        """Write the manifest bytes as received (Ollama does the same), atomically."""
        final = self.manifest_path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                # No fsync, as Ollama: on ext4 it would force the whole just-written
                # blob to disk first (seconds for large models). A process crash
                # still never exposes a manifest before its verified blobs.
                f.write(raw)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return final

    def read_manifest(self, name: ModelName) -> tuple[bytes, Manifest] | None:
        try:
            raw = self.manifest_path(name).read_bytes()
        except FileNotFoundError:
            return None
        return raw, Manifest.parse(raw)

    def has_model(self, name: ModelName) -> bool:
        found = self.read_manifest(name)
        if found is None:
            return False
        return all(self.blobs.has(b.digest, b.size) for b in found[1].blobs())

    def list_models(self) -> list[dict]:
        """Every complete model in the store (a manifest whose blobs are all present)."""
        out: list[dict] = []
        if not self.manifests_dir.is_dir():
            return out
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                name = ModelName.parse(f"{host}/{namespace}/{model}:{tag}")
                raw = path.read_bytes()
                manifest = Manifest.parse(raw)
            except ValueError:
                continue  # not ours to judge; a hand-made file we cannot read is skipped
            if not all(self.blobs.has(b.digest, b.size) for b in manifest.blobs()):
                continue
            out.append({
                "name": name.short,
                "full_name": str(name),
                "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                "size": manifest.total_size,
                "modified_at": path.stat().st_mtime,
                "format": "gguf",
                "backend": "ollama",
            })
        return out

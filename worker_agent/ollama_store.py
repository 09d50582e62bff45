"""Ollama's on-disk model store: `blobs/sha256-<hex>` and `manifests/<host>/<ns>/<model>/<tag>`.

Laid out exactly as Ollama does, so an Ollama server on the node lists what we
pulled with no second download. Our partial downloads live in `.eldric-partial/`
(same filesystem, so the final rename is atomic; Ollama ignores the directory).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from eldric.core.atomicfile import write_atomically
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from worker_agent.blob_leases import BlobLeases


class OllamaStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests_dir = self.root / "manifests"
        self.partial_dir = self.root / ".eldric-partial"
        self.leases = BlobLeases(self.root / ".eldric-leases")  # blobs running jobs count on

    def ensure(self) -> None:
        for d in (self.blobs.root, self.manifests_dir, self.partial_dir):
            d.mkdir(parents=True, exist_ok=True)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_parts())

    def write_manifest(self, name: ModelName, raw: bytes) -> Path:
        """Write the manifest bytes as received (Ollama does the same), atomically."""
        # No fsync, as Ollama: on ext4 it would force the whole just-written blob to
        # disk first (seconds for large models). A process crash still never
        # exposes a manifest before its verified blobs.
        return write_atomically(self.manifest_path(name), raw)

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
            details = self.details(manifest)
            out.append({
                "name": name.short,
                "full_name": str(name),
                "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                "size": manifest.total_size,
                "modified_at": path.stat().st_mtime,
                "format": details.get("format") or "gguf",
                "backend": "ollama",
                "details": details,
            })
        return out

    def details(self, manifest: Manifest) -> dict:
        """Ollama's `details` from the config blob (model_format, model_family, model_type, file_type)."""
        try:
            config = json.loads(self.blobs.path(manifest.config.digest).read_bytes()[: 1 << 20])
        except (OSError, ValueError):
            return {}
        if not isinstance(config, dict):
            return {}
        family = config.get("model_family") or ""
        return {"format": config.get("model_format") or "gguf", "family": family,
                "families": config.get("model_families") or ([family] if family else None),
                "parameter_size": config.get("model_type") or "", "quantization_level": config.get("file_type") or "",
                "parent_model": ""}

    def layer_text(self, manifest: Manifest, media_type: str, limit: int = 1 << 20) -> str | None:
        layer = manifest.layer_of(media_type)
        if layer is None:
            return None
        with open(self.blobs.path(layer.digest), "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")

    def delete_model(self, name: ModelName, keep: Callable[[], Collection[str]] = frozenset) -> list[str]:
        """Remove the manifest, then every blob of it that nothing else uses (see `delete_blobs`)."""
        path = self.manifest_path(name)
        with self.leases.exclusive():
            try:
                manifest = Manifest.parse(path.read_bytes())
            except FileNotFoundError:
                return []
            path.unlink()
            for parent in list(path.parents)[:3]:  # tidy empty model/namespace/host directories
                try:
                    parent.rmdir()
                except OSError:
                    break
            return self._delete_unused([b.digest for b in manifest.blobs()], keep)

    def delete_blobs(self, digests: Iterable[Digest], keep: Callable[[], Collection[str]] = frozenset) -> list[str]:
        """Delete those blobs no manifest, no running job's lease and no `keep()` hex digest references.

        `keep` is called under the store's lease lock, so a job that lists a blob (a catalog entry)
        and then gives its lease back is seen either way.
        """
        with self.leases.exclusive():
            return self._delete_unused(list(digests), keep)

    def _delete_unused(self, digests: list[Digest], keep: Callable[[], Collection[str]]) -> list[str]:
        # Leases first: a job writes its manifest before it gives its lease back.
        still_used = self.leases.leased() | self.referenced_digests() | set(keep())
        return [str(d) for d in digests if d.hex not in still_used and self.blobs.delete(d)]

    def referenced_digests(self) -> set[str]:
        used: set[str] = set()
        for path in self.manifests_dir.glob("*/*/*/*"):
            try:
                used.update(b.digest.hex for b in Manifest.parse(path.read_bytes()).blobs())
            except (OSError, ValueError):
                continue
        return used

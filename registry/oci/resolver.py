"""What answers a /v2/ read: pushed tags first, then registry models, then the pull-through cache.

A manifest reference (tag or digest) in a repository resolves, in this order, to
1. a manifest pushed here (`eldric import`, `skopeo copy`, any OCI client's push);
2. a committed GGUF model of the registry of that name (registry/oci/registry_models.py);
3. the mirror: a cached upstream manifest, re-resolved upstream after the tag TTL,
   or fetched now (registry/oci/pullthrough.py) when an upstream is configured.
A blob is served from the blob store when held here, else fetched through the mirror; a HEAD
of a blob not held is 200 only while the mirror fetches it (never for a blob a push must send).
A pushed manifest naming a blob the mirror is fetching waits for that fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eldric.core.digests import Digest
from registry.oci.errors import OCIError
from registry.oci.pullthrough import PullThrough
from registry.oci.registry_models import RegistryModels
from registry.oci.store import MIRROR, PUSH, OCIStore, StoredManifest, parse_manifest


@dataclass(frozen=True)
class LocalBlob:
    path: Path
    size: int


@dataclass(frozen=True)
class MirroredBlob:
    size: int
    read: Callable[[int, int], Iterator[bytes]] | None  # (start, length) -> bytes as they arrive; None for HEAD


class Resolver:
    def __init__(self, store: OCIStore, models: RegistryModels, mirror: PullThrough | None) -> None:
        self.store, self.models, self.mirror = store, models, mirror

    def manifest(self, repo: str, reference: str) -> StoredManifest:
        stored = self.store.resolve(repo, reference)
        if stored is not None and stored.origin == PUSH:
            return stored
        derived = self.models.manifest(repo, reference)
        if derived is not None:
            return derived
        if self.mirror is not None:
            found = self.mirror.manifest(repo, reference, stored if stored is None or stored.origin == MIRROR else None)
            if found is not None:
                return found
        elif stored is not None:
            return stored
        if not self.has_repository(repo):
            raise OCIError("NAME_UNKNOWN", f"repository {repo} is not known to this registry", {"name": repo})
        raise OCIError("MANIFEST_UNKNOWN", f"manifest unknown: {repo}:{reference}", {"name": repo, "reference": reference})

    def has_repository(self, repo: str) -> bool:
        return self.store.has_repository(repo) or bool(self.models.tags(repo))

    def blob(self, repo: str, digest: Digest, *, head: bool = False) -> LocalBlob | MirroredBlob:
        size = self.store.use_blob(digest)
        if size is not None:
            return LocalBlob(self.store.blobs.path(digest), size)
        if self.mirror is not None:
            if head:
                return MirroredBlob(self.mirror.head_blob(repo, digest), None)
            size, read = self.mirror.stream_blob(repo, digest)
            return MirroredBlob(size, read)
        raise OCIError("BLOB_UNKNOWN", f"blob unknown to registry: {digest}", {"digest": str(digest)})

    def put_manifest(self, repo: str, reference: str, body: bytes, content_type: str | None) -> str:
        """Store a pushed manifest; one naming a blob the mirror is fetching (a HEAD said 200) waits for it."""
        try:
            return self.store.put_manifest(repo, reference, body, content_type)
        except OCIError as exc:
            if exc.code != "MANIFEST_BLOB_UNKNOWN" or self.mirror is None:
                raise
            _, refs = parse_manifest(body, content_type)
            if not self.mirror.wait_for(blob for blob, _ in refs):
                raise
        return self.store.put_manifest(repo, reference, body, content_type)

    def tags(self, repo: str) -> list[str]:
        tags = sorted(set(self.store.tags(repo)) | set(self.models.tags(repo)))
        if not tags:
            raise OCIError("NAME_UNKNOWN", f"repository {repo} is not known to this registry", {"name": repo})
        return tags

    def repositories(self) -> list[str]:
        return sorted(set(self.store.repositories()) | set(self.models.repositories()))

"""Manifests, tags and blob records of the /v2/ API, over the registry's database and blob store.

Bytes live in the registry's one blob store (`<storage>/blobs/sha256-<hex>`), so a blob
that a registry model, a push and the mirror all hold is stored once. The records live
in the registry's SQLite database (tables `oci_*`, declared in registry/catalog.py):

- `oci_blobs`: every blob this API holds, with its `origin` (`push`, `mirror`, `derived`)
  and `last_used`; the registry's own cleanup keeps a blob while such a row names it.
- `oci_manifests`: manifest bytes per repository, exactly as pushed or fetched (their
  sha256 is their digest), and the blobs each references (`oci_manifest_blobs`).
- `oci_tags`: repository + tag -> manifest digest, `resolved_at` (when the mirror last
  asked upstream) and the last update check's `upstream_digest`, `checked_at`, `check_error`.

Every write runs in the catalog's `BEGIN IMMEDIATE` transaction, so a blob is never
deleted while another transaction links it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.errors import InvalidDigestError, InvalidManifestError
from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST, Manifest
from registry.catalog import Catalog
from registry.oci.errors import OCIError

PUSH, MIRROR, DERIVED = "push", "mirror", "derived"
MANIFEST_TYPES = (MANIFEST_V2, OCI_MANIFEST)
TOUCH_SECONDS = 60.0  # last_used is rewritten at most this often per blob or manifest

# Repository names: the distribution spec's grammar, letters of either case (registry model names have
# capitals), at most 255 characters. Tags: the spec's `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
_COMPONENT = r"[A-Za-z0-9]+(?:(?:\.|_|__|-+)[A-Za-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_repo(repo: str) -> str:
    if len(repo) > 255 or not _REPO.fullmatch(repo):
        raise OCIError("NAME_INVALID", f"invalid repository name {repo[:300]!r}", {"name": repo[:300]})
    return repo


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


def parse_digest(raw: str, code: str = "DIGEST_INVALID") -> Digest:
    try:
        if raw.startswith("sha256-"):  # Ollama's file form is not a reference
            raise InvalidDigestError(raw)
        return Digest.parse(raw)
    except InvalidDigestError:
        raise OCIError(code, f"invalid digest {raw[:200]!r}: expected sha256:<64 lowercase hex digits>",
                       {"digest": raw[:200]}) from None


def check_reference(reference: str) -> str:
    """A tag or a `sha256:` digest; anything else is MANIFEST_INVALID (docker-registry's answer too)."""
    if is_digest_reference(reference):
        return str(parse_digest(reference))
    if not _TAG.fullmatch(reference):
        raise OCIError("MANIFEST_INVALID", f"invalid tag {reference[:200]!r}", {"tag": reference[:200]})
    return reference


@dataclass(frozen=True)
class StoredManifest:
    repo: str
    digest: str
    media_type: str
    body: bytes
    origin: str


def parse_manifest(body: bytes, content_type: str | None) -> tuple[str, list[tuple[str, int]]]:
    """(media type, [(blob digest, size)]) of a pushed image manifest; MANIFEST_INVALID otherwise."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise OCIError("MANIFEST_INVALID", "manifest larger than 4 MiB", status=413)
    try:
        manifest = Manifest.parse(body)
    except InvalidManifestError as exc:
        raise OCIError("MANIFEST_INVALID", f"manifest invalid: {exc}") from None
    declared = json.loads(body).get("mediaType")
    media_type = declared or (content_type or "").split(";")[0].strip() or MANIFEST_V2
    if media_type not in MANIFEST_TYPES:
        raise OCIError("MANIFEST_INVALID", f"unsupported manifest media type {media_type[:100]!r}; "
                       f"this registry stores {' and '.join(MANIFEST_TYPES)}")
    sizes: dict[str, int] = {}
    for layer in (manifest.config, *manifest.layers):
        if sizes.setdefault(str(layer.digest), layer.size) != layer.size:
            raise OCIError("MANIFEST_INVALID", f"the manifest gives blob {layer.digest} two sizes, "
                           f"{sizes[str(layer.digest)]} and {layer.size}", {"digest": str(layer.digest)})
    return media_type, [(str(layer.digest), layer.size) for layer in manifest.blobs()]


class OCIStore:
    def __init__(self, catalog: Catalog, blobs: BlobStore, clock: Callable[[], float] = time.time) -> None:
        self.catalog, self.blobs, self.clock = catalog, blobs, clock

    def _db(self):
        return self.catalog.connection()

    # -- blobs -----------------------------------------------------------------------------------

    def blob_size(self, digest: Digest) -> int | None:
        """Size of a stored blob this registry may serve (a /v2/ blob or a ready model's file), else None."""
        found = self._blob_row(digest)
        return found[0] if found else None

    def use_blob(self, digest: Digest) -> int | None:
        """blob_size, and `last_used` moved to now when it is older than TOUCH_SECONDS (one write a minute at most)."""
        found = self._blob_row(digest)
        if found is None:
            return None
        size, last_used = found
        now = self.clock()
        if last_used is not None and last_used < now - TOUCH_SECONDS:
            self._db().execute("UPDATE oci_blobs SET last_used = ? WHERE digest = ?", (now, str(digest)))
        return size

    def _blob_row(self, digest: Digest) -> tuple[int, float | None] | None:
        key = str(digest)
        row = self._db().execute("SELECT size, last_used FROM oci_blobs WHERE digest = ? UNION ALL SELECT f.size, NULL "
                                 "FROM files f JOIN models m ON m.id = f.model_id WHERE f.digest = ? AND "
                                 "m.state = 'ready' LIMIT 1", (key, key)).fetchone()
        if row is None or not self.blobs.has(digest):
            return None
        return int(row[0]), row[1]

    def add_blob(self, tmp: Path | None, digest: Digest, size: int, origin: str) -> None:
        """Record a verified blob; move `tmp` into place (None: the bytes are in the store already)."""
        now = self.clock()
        with self.catalog.transaction() as tx:
            tx.conn.execute("INSERT INTO oci_blobs (digest, size, origin, created_at, last_used) VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT(digest) DO UPDATE SET last_used = excluded.last_used",
                            (str(digest), size, origin, now, now))
            if tmp is not None and not self.blobs.has(digest, size):
                self.blobs.commit(tmp, digest)
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    # -- manifests and tags ----------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, content_type: str | None,
                     origin: str = PUSH) -> str:
        """Store a manifest whose blobs are all here; tag it when `reference` is a tag. Returns its digest."""
        media_type, refs = parse_manifest(body, content_type)
        digest = str(Digest.of_bytes(body))
        if is_digest_reference(reference) and reference != digest:
            raise OCIError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}",
                           {"digest": reference})
        self._check_blobs(refs)
        self.save_manifest(repo, reference, body, media_type, digest, refs, origin)
        return digest

    def _check_blobs(self, refs: list[tuple[str, int]]) -> None:
        """Every blob a pushed manifest names is here (MANIFEST_BLOB_UNKNOWN) with the size it says (MANIFEST_INVALID)."""
        stored = {blob: self.blob_size(Digest.parse(blob)) for blob, _ in refs}
        missing = [blob for blob, size in stored.items() if size is None]
        if missing:
            raise OCIError("MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {missing[0]}", {"digest": missing[0]})
        for blob, size in refs:
            if stored[blob] != size:
                raise OCIError("MANIFEST_INVALID", f"the manifest says blob {blob} has {size} bytes, the blob held "
                               f"here has {stored[blob]}; push the manifest with the blob's size",
                               {"digest": blob, "size": size, "stored_size": stored[blob]})

    def save_manifest(self, repo: str, reference: str, body: bytes, media_type: str, digest: str,
                      refs: Iterable[tuple[str, int]], origin: str, resolved_at: float | None = None) -> None:
        now = self.clock()
        with self.catalog.transaction() as tx:
            db = tx.conn
            db.execute("INSERT INTO oci_manifests (repo, digest, media_type, body, origin, created_at, last_used) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(repo, digest) DO UPDATE SET last_used = excluded.last_used",
                       (repo, digest, media_type, body, origin, now, now))
            for blob, size in refs:
                db.execute("INSERT OR IGNORE INTO oci_manifest_blobs (repo, manifest, blob) VALUES (?, ?, ?)",
                           (repo, digest, blob))
                if origin != MIRROR:  # a mirrored manifest's blobs are recorded when they arrive
                    db.execute("INSERT OR IGNORE INTO oci_blobs (digest, size, origin, created_at, last_used) "
                               "VALUES (?, ?, ?, ?, ?)", (blob, size, origin, now, now))
            if not is_digest_reference(reference):
                db.execute("INSERT INTO oci_tags (repo, tag, digest, origin, resolved_at) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest, origin = excluded.origin, "
                           "resolved_at = excluded.resolved_at",
                           (repo, reference, digest, origin, resolved_at if resolved_at is not None else now))

    def tag(self, repo: str, tag: str) -> dict | None:
        row = self._db().execute("SELECT * FROM oci_tags WHERE repo = ? AND tag = ?", (repo, tag)).fetchone()
        return dict(row) if row else None

    def manifest(self, repo: str, digest: str) -> StoredManifest | None:
        row = self._db().execute("SELECT * FROM oci_manifests WHERE repo = ? AND digest = ?", (repo, digest)).fetchone()
        if row is None:
            return None
        now = self.clock()
        if row["last_used"] < now - TOUCH_SECONDS:
            self._db().execute("UPDATE oci_manifests SET last_used = ? WHERE repo = ? AND digest = ?", (now, repo, digest))
        return StoredManifest(repo, digest, row["media_type"], bytes(row["body"]), row["origin"])

    def resolve(self, repo: str, reference: str) -> StoredManifest | None:
        """The manifest a tag or digest names in `repo`, or None."""
        if is_digest_reference(reference):
            return self.manifest(repo, reference)
        tag = self.tag(repo, reference)
        return self.manifest(repo, tag["digest"]) if tag else None

    def mark_resolved(self, repo: str, tag: str) -> None:
        """The mirror asked upstream and the tag still points where it did."""
        self._db().execute("UPDATE oci_tags SET resolved_at = ? WHERE repo = ? AND tag = ?", (self.clock(), repo, tag))

    def tags(self, repo: str) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT tag FROM oci_tags WHERE repo = ? ORDER BY tag", (repo,))]

    def repositories(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT DISTINCT repo FROM oci_tags ORDER BY repo")]

    def has_repository(self, repo: str) -> bool:
        return self._db().execute("SELECT 1 FROM oci_manifests WHERE repo = ? LIMIT 1", (repo,)).fetchone() is not None

    def is_mirrored_blob(self, repo: str, digest: Digest) -> bool:
        """Whether a manifest the mirror keeps in `repo` names the blob (so the mirror may fetch it for a HEAD)."""
        return self._db().execute(
            "SELECT 1 FROM oci_manifest_blobs b JOIN oci_manifests m ON m.repo = b.repo AND m.digest = b.manifest "
            "WHERE b.repo = ? AND b.blob = ? AND m.origin = ? LIMIT 1", (repo, str(digest), MIRROR)).fetchone() is not None

    def record_check(self, repo: str, tag: str, upstream_digest: str | None, error: str | None) -> None:
        self._db().execute("UPDATE oci_tags SET upstream_digest = ?, checked_at = ?, check_error = ? "
                           "WHERE repo = ? AND tag = ?", (upstream_digest, self.clock(), error, repo, tag))

    def mirrored_tags(self) -> list[dict]:
        rows = self._db().execute("SELECT * FROM oci_tags WHERE origin = ? ORDER BY repo, tag", (MIRROR,))
        return [dict(r) for r in rows]

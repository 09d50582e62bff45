"""The mirror's bookkeeping: what is cached, the size limit, and checks for upstream updates.

Listing (`GET /api/v1/model-registry/mirror`): every mirrored tag with its digest, size
(all its blobs), how much of it is here, last use and the last update check; and every
mirrored blob with size and last use.

Size limit: when the mirrored blobs pass `max_bytes`, blobs are evicted least recently
used first among those no manifest references (and no registry model file); when that
is not enough, the least recently used mirrored manifest is forgotten (its tags with it),
which frees its blobs for the next round. Pushed and registry content is never evicted.

Update check (beat, `mirror.check_updates`): HEAD each mirrored tag upstream and record
the digest it points at now; `update_available` is that digest differing from the cached
one. Nothing is pulled: the next client pull after the tag TTL brings the new version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from eldric.core.digests import Digest
from eldric.transfer.oci_client import OciClientError
from registry.oci.store import MIRROR, OCIStore
from registry.oci.upstream import Upstream
from registry.views import iso_time

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, store: OCIStore, upstream: Upstream | None, *, max_bytes: int = 0,
                 upstream_url: str = "", tag_ttl: float = 3600.0) -> None:
        self.store, self.upstream, self.max_bytes = store, upstream, max_bytes
        self.upstream_url, self.tag_ttl = upstream_url, tag_ttl

    def _db(self):
        return self.store.catalog.connection()

    def _blob_sizes(self) -> dict[str, tuple[int, float]]:
        rows = self._db().execute("SELECT digest, size, last_used FROM oci_blobs WHERE origin = ?", (MIRROR,))
        return {r["digest"]: (r["size"], r["last_used"]) for r in rows}

    def listing(self) -> dict:
        blobs = self._blob_sizes()
        models = []
        for tag in self.store.mirrored_tags():
            manifest = self.store.manifest(tag["repo"], tag["digest"])
            refs = _references(manifest.body) if manifest else {}
            cached = sum(size for d, size in refs.items() if d in blobs)
            last_used = max([blobs[d][1] for d in refs if d in blobs], default=None)
            models.append({
                "name": f"{tag['repo']}:{tag['tag']}", "repository": tag["repo"], "tag": tag["tag"],
                "digest": tag["digest"], "size": sum(refs.values()), "cached_bytes": cached,
                "complete": bool(refs) and all(d in blobs for d in refs),
                "resolved_at": iso_time(tag["resolved_at"]), "last_used": iso_time(last_used),
                "upstream_digest": tag["upstream_digest"], "checked_at": iso_time(tag["checked_at"]),
                "check_error": tag["check_error"], "update_available": is_update(tag),
            })
        return {"upstream": self.upstream_url or None, "tag_ttl_seconds": self.tag_ttl,
                "max_bytes": self.max_bytes or None, "total_bytes": sum(s for s, _ in blobs.values()),
                "updates_available": sum(1 for m in models if m["update_available"]), "models": models,
                "blobs": [{"digest": d, "size": s, "last_used": iso_time(u)}
                          for d, (s, u) in sorted(blobs.items(), key=lambda kv: -kv[1][1])]}

    # -- size limit ------------------------------------------------------------------------------

    def evict(self) -> list[str]:
        """Evict until the mirrored blobs fit `max_bytes`; return the digests deleted."""
        if not self.max_bytes:
            return []
        deleted: list[str] = []
        while sum(s for s, _ in self._blob_sizes().values()) > self.max_bytes:
            freed = self._evict_unreferenced_blob()
            if freed:
                deleted.append(freed)
            elif not self._forget_oldest_manifest():
                break  # everything left is referenced by a manifest in use: nothing more to free
        return deleted

    def _evict_unreferenced_blob(self) -> str | None:
        with self.store.catalog.transaction() as tx:
            row = tx.conn.execute(
                "SELECT digest FROM oci_blobs b WHERE origin = ? AND NOT EXISTS (SELECT 1 FROM oci_manifest_blobs m "
                "WHERE m.blob = b.digest) AND NOT EXISTS (SELECT 1 FROM files f WHERE f.digest = b.digest) "
                "ORDER BY last_used LIMIT 1", (MIRROR,)).fetchone()
            if row is None:
                return None
            tx.conn.execute("DELETE FROM oci_blobs WHERE digest = ?", (row[0],))
            self.store.blobs.delete(Digest.parse(row[0]))
        log.info("mirror size limit: evicted blob %s", row[0])
        return row[0]

    def _forget_oldest_manifest(self) -> bool:
        with self.store.catalog.transaction() as tx:
            row = tx.conn.execute("SELECT repo, digest FROM oci_manifests WHERE origin = ? ORDER BY last_used LIMIT 1",
                                  (MIRROR,)).fetchone()
            if row is None:
                return False
            repo, digest = row
            tx.conn.execute("DELETE FROM oci_tags WHERE repo = ? AND digest = ? AND origin = ?", (repo, digest, MIRROR))
            tx.conn.execute("DELETE FROM oci_manifest_blobs WHERE repo = ? AND manifest = ?", (repo, digest))
            tx.conn.execute("DELETE FROM oci_manifests WHERE repo = ? AND digest = ?", (repo, digest))
        log.info("mirror size limit: forgot %s@%s", repo, digest)
        return True

    # -- upstream updates ------------------------------------------------------------------------

    def check_updates(self, on_checked: Callable[[dict], None] = lambda tag: None) -> list[dict]:
        """HEAD every mirrored tag upstream; record and return what each points at now. Never pulls."""
        results = []
        for tag in self.store.mirrored_tags():
            upstream_digest, error = None, None
            if self.upstream is None:
                error = "no upstream configured"
            else:
                try:
                    upstream_digest = self.upstream.head_manifest(tag["repo"], tag["tag"])
                    if upstream_digest is None:
                        error = "upstream no longer has this tag"
                except OciClientError as exc:
                    error = str(exc)[:500]
            self.store.record_check(tag["repo"], tag["tag"], upstream_digest, error)
            checked = {**tag, "upstream_digest": upstream_digest, "check_error": error}
            result = {"name": f"{tag['repo']}:{tag['tag']}", "digest": tag["digest"],
                      "upstream_digest": upstream_digest, "update_available": is_update(checked), "error": error}
            on_checked(result)
            results.append(result)
        return results


def is_update(tag: dict) -> bool:
    return bool(tag.get("upstream_digest")) and tag["upstream_digest"] != tag["digest"]


def _references(body: bytes) -> dict[str, int]:
    doc = json.loads(body)
    return {e["digest"]: e["size"] for e in [doc.get("config") or {}, *(doc.get("layers") or [])] if "digest" in e}

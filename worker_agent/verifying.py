"""Verification: a model becomes visible only once every byte of it is checked and in place.

Bytes are checked as they arrive: each blob is hashed while it is written and renamed into the
store only when its sha256 matches (eldric/transfer/download.py), and a file model's files are
checked against their digests as they are staged for a backend (installers/staging.py). This
module holds the last check of a pull before its manifest is written: every blob the manifest
names is in the store at its size. A blob the pull found present at its start may have gone since
(a delete of another tag sharing it, a sweep), and a manifest must never point at missing bytes.
"""

from __future__ import annotations

from eldric.core.manifests import Manifest
from eldric.transfer.errors import SourceUnavailableError
from worker_agent.ollama_store import OllamaStore


def verify_blobs_present(store: OllamaStore, manifest: Manifest, model: str) -> None:
    """SourceUnavailableError (retried: the next run fetches what is missing) unless every blob is in the store."""
    missing = [str(b.digest) for b in manifest.blobs() if not store.blobs.has(b.digest, b.size)]
    if missing:
        raise SourceUnavailableError(f"{model}: {len(missing)} blob(s) left the store before the manifest was written "
                                     f"({', '.join(d[:19] for d in missing)}); fetching them again")

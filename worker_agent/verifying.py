"""Verification: a model becomes visible only once every byte of it is checked and in place.

Bytes are checked as they arrive: each blob is hashed while it is written and renamed into the
store only when its sha256 matches (eldric/transfer/download.py), and a file model's files are
checked against their digests as they are staged for a backend (installers/staging.py). This
module holds the last check of a pull before its manifest is written: every blob the manifest
names is in the store at its size (and a distribution's files before its catalog entry). The pull
leases its blobs (worker_agent/blob_leases.py), so our own deletes spare them; this check catches
whatever else removed one (a hand-run `ollama rm`, a lease that lapsed): a model is never listed
pointing at missing bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from eldric.core.digests import Digest
from eldric.transfer.errors import SourceUnavailableError
from worker_agent.ollama_store import OllamaStore


def verify_blobs_present(store: OllamaStore, blobs: Iterable[tuple[Digest, int]], model: str) -> None:
    """SourceUnavailableError (retried: the next run fetches what is missing) unless every (digest, size) is stored."""
    missing = [str(digest) for digest, size in blobs if not store.blobs.has(digest, size)]
    if missing:
        raise SourceUnavailableError(f"{model}: {len(missing)} blob(s) left the store before the model was listed "
                                     f"({', '.join(d[:19] for d in missing)}); fetching them again")

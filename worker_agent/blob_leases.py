"""Leases: the blobs a running job counts on, which no delete may remove until the job ends.

A pull decides which blobs it must fetch by looking at the store, and writes the manifest that
references them only at its end. A delete of another model sharing a blob used to see no
manifest naming it and remove it in between (issue 21, finding 3). So a job takes a lease on
every blob it needs *before* it looks, and holds it until its manifest (or catalog entry) is
written; every delete spares leased blobs as it spares referenced ones.

A lease is a small JSON file `.eldric-leases/<random>.json` in the store, `{"job", "digests",
"expires_at"}`, written atomically and renewed every third of `LEASE_SECONDS` while its job
runs; the job removes it when it ends. A lease whose job died without removing it (the agent
killed) lapses after `LEASE_SECONDS`, so a crash never pins blobs for good.

Taking a lease and deciding what a delete removes are serialised by one lock file
(`.eldric-leases/.lock`, flock'ed across the agent's threads and processes): either the delete
ran first (the blob is gone when the job looks, so it is fetched) or it sees the lease.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from eldric.core.atomicfile import write_atomically
from eldric.core.digests import Digest
from eldric.transfer.partials import locked

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
SUFFIX = ".json"


class BlobLease:
    """One job's lease; renewed in a daemon thread until `release`."""

    def __init__(self, leases: BlobLeases, job: str, digests: Iterable[Digest]) -> None:
        self.leases, self.job = leases, job
        self.digests = {d.hex for d in digests}
        self.path = leases.root / f"{uuid.uuid4().hex}{SUFFIX}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"blob-lease-{job[:8]}", daemon=True)

    def take(self) -> None:
        """Write the lease under the store's lease lock, then keep renewing it."""
        with self.leases.exclusive():
            self.write()
        self._thread.start()

    def add(self, digests: Iterable[Digest]) -> None:
        """Lease more blobs (a download whose digest was known only once its bytes were in)."""
        self.digests |= {d.hex for d in digests}
        self.write()

    def write(self) -> None:
        doc = {"job": self.job, "digests": sorted(self.digests),
               "expires_at": self.leases.clock() + self.leases.lease_seconds}
        write_atomically(self.path, json.dumps(doc).encode())

    def _renew_loop(self) -> None:
        while not self._stopped.wait(self.leases.lease_seconds / 3):
            try:
                self.write()
            except OSError as exc:  # a full disk: the lease lapses later; the delete's verify still guards
                log.warning("could not renew the blob lease of job %s: %s", self.job, exc)

    def release(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with self.leases.exclusive():
            self.path.unlink(missing_ok=True)


class BlobLeases:
    """The leases of one store (`root`: its `.eldric-leases` directory)."""

    def __init__(self, root: Path, lease_seconds: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.root, self.lease_seconds, self.clock = Path(root), lease_seconds, clock

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's lease lock: no lease is taken or given back meanwhile (not reentrant)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".lock"):
            yield

    @contextmanager
    def hold(self, job: str, digests: Iterable[Digest]) -> Iterator[BlobLease]:
        """Lease `digests` for `job` while the block runs (take it before looking at the store)."""
        lease = BlobLease(self, job, digests)
        lease.take()
        try:
            yield lease
        finally:
            lease.release()

    def leased(self) -> set[str]:
        """Hex digests of every live lease; lapsed leases are removed. Call under `exclusive`."""
        out: set[str] = set()
        if not self.root.is_dir():
            return out
        now = self.clock()
        for path in self.root.glob(f"*{SUFFIX}"):
            try:
                doc = json.loads(path.read_bytes())
                expires_at, digests = float(doc["expires_at"]), doc["digests"]
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError):
                continue  # unreadable: not ours to judge, and it pins nothing
            if expires_at <= now:
                log.info("blob lease of job %s lapsed (its job died?); removed", doc.get("job"))
                path.unlink(missing_ok=True)
                continue
            out.update(d for d in digests if isinstance(d, str))
        return out

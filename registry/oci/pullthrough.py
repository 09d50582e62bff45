"""The pull-through cache: a model missing here is fetched from upstream once, then served locally.

Manifests: a tag is asked upstream when it is not cached or was last resolved more than
`tag_ttl` seconds ago (so `latest` moves); a manifest by digest is immutable and asked
once. If upstream cannot be reached, a cached tag is served as it is (stale beats down).

Blobs: the first request for a missing blob starts one background download into a temp
file of the blob store, hashed while written. Every request for that blob, the first and
any concurrent one, streams from that temp file as it grows (tailing it), so the first
client does not wait for the whole download and a second never causes a second upstream
fetch. Only after the sha256 matches is the file renamed to its digest and recorded;
on a mismatch or an upstream failure it is deleted, and clients still streaming get a cut
body (their own digest check then fails, and a retry starts a fresh download). The
download goes on when a client disconnects: the bytes are wanted for the cache. Before a
byte is fetched, the size upstream gives must fit the free space less `--min-free` (with
the rest of the downloads running): else 507 STORAGE_FULL, nothing fetched (issue 21).

HEAD of a blob not held (issue 21, finding 5): a push client skips a blob HEAD answers 200
for, so 200 must mean the blob will be here. It is answered 200 only when a download of it
is running or starts now because a manifest mirrored in that repository names it (Ollama's
client pulls by manifest, HEAD for the size, then GET), and only once upstream has begun to
send it; anything else, or an upstream that does not answer within its timeout, is 404, so
a push or `eldric import` sends the blob itself. `wait_for` lets a manifest pushed meanwhile
wait for those downloads instead of failing MANIFEST_BLOB_UNKNOWN.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eldric.core.digests import Digest
from eldric.core.manifests import MANIFEST_V2
from eldric.core.request_errors import InsufficientStorageError
from eldric.transfer.diskspace import format_size
from eldric.transfer.oci_client import OciClientError
from eldric.transfer.retry import TRANSIENT_ERRORS
from registry.oci.errors import OCIError
from registry.oci.store import MIRROR, OCIStore, StoredManifest, is_digest_reference, parse_manifest
from registry.oci.upstream import Upstream

log = logging.getLogger(__name__)
CHUNK = 1 << 20
WAIT_SECONDS = 1.0  # a reader waiting for bytes wakes at least this often to notice a failure
START_SECONDS = 60.0  # a GET waits this long at most for upstream to start sending a blob


@dataclass
class Download:
    """One blob being fetched from upstream; readers follow `written`."""

    digest: Digest
    tmp: Path
    size: int = -1  # known once upstream answered
    written: int = 0
    done: bool = False
    error: str | None = None
    error_status: int = 0  # upstream's HTTP status when it refused (404: it has no such blob)
    refusal: OCIError | None = None  # the data node's own answer, before a byte was fetched (STORAGE_FULL)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def readable(self) -> int:
        """Bytes a reader may have: the last byte only once the sha256 matched, so a bad blob reaches no client whole."""
        return self.written if self.done or self.written < self.size else self.size - 1

    def wait_started(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.size >= 0 or self.error is not None, timeout)
        if self.refusal is not None:
            raise self.refusal
        if self.error is not None:
            raise OCIError("BLOB_UNKNOWN", f"blob {self.digest} could not be fetched from upstream: {self.error}",
                           {"digest": str(self.digest)}, status=404 if self.error_status == 404 else 502)
        if self.size < 0:
            raise OCIError("UPSTREAM_UNAVAILABLE", f"upstream did not start sending blob {self.digest}")


class PullThrough:
    def __init__(self, store: OCIStore, upstream: Upstream, *, tag_ttl: float, max_blob_bytes: int,
                 on_stored: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
                 space: Callable[[int], None] | None = None, head_wait: float = 5.0) -> None:
        self.store, self.upstream, self.tag_ttl = store, upstream, tag_ttl
        self.max_blob_bytes, self.on_stored, self.clock = max_blob_bytes, on_stored, clock
        # `space(n)` raises InsufficientStorageError when n more bytes would pass --min-free (the registry's
        # FreeSpace.check); `head_wait`: how long a HEAD waits for a fetch to start.
        self.space, self.head_wait = space, head_wait
        self._downloads: dict[str, Download] = {}
        self._lock = threading.Lock()
        self.upstream_fetches = 0  # blob downloads started (tests and logs)

    # -- manifests -------------------------------------------------------------------------------

    def manifest(self, repo: str, reference: str, cached: StoredManifest | None) -> StoredManifest | None:
        if cached is not None and (is_digest_reference(reference) or self._is_fresh(repo, reference)):
            return cached
        try:
            fetched = self.upstream.fetch_manifest(repo, reference)
        except OciClientError as exc:
            if cached is not None:
                log.warning("serving cached %s:%s; upstream failed: %s", repo, reference, exc)
                return cached
            raise OCIError("UPSTREAM_UNAVAILABLE", str(exc)) from None
        if fetched is None:
            return cached if cached is not None and is_digest_reference(reference) else None
        body, media_type = fetched
        digest = str(Digest.of_bytes(body))
        if is_digest_reference(reference) and digest != reference:
            raise OCIError("DIGEST_INVALID", f"upstream sent a manifest whose digest is {digest}, not {reference}",
                           status=502)
        if cached is not None and cached.digest == digest:
            self.store.mark_resolved(repo, reference)
            return cached
        try:
            media_type, refs = parse_manifest(body, media_type)
        except OCIError as exc:
            raise OCIError("MANIFEST_INVALID", f"upstream's manifest of {repo}:{reference}: {exc.message}",
                           status=502) from None
        self.store.save_manifest(repo, reference, body, media_type or MANIFEST_V2, digest, refs, MIRROR)
        log.info("mirrored manifest %s:%s (%s)", repo, reference, digest)
        return StoredManifest(repo, digest, media_type, body, MIRROR)

    def _is_fresh(self, repo: str, tag: str) -> bool:
        row = self.store.tag(repo, tag)
        return row is not None and (row["origin"] != MIRROR or self.clock() - row["resolved_at"] < self.tag_ttl)

    # -- blobs -----------------------------------------------------------------------------------

    def head_blob(self, repo: str, digest: Digest) -> int:
        """The size of a blob not held, once its fetch is under way (see the module's docstring); else BLOB_UNKNOWN."""
        unknown = OCIError("BLOB_UNKNOWN", f"blob unknown to registry: {digest}", {"digest": str(digest)})
        with self._lock:
            running = self._downloads.get(digest.hex)
        if running is None and not self.store.is_mirrored_blob(repo, digest):
            raise unknown
        download = running or self._join_or_start(repo, digest)
        try:
            download.wait_started(self.head_wait)
        except OCIError as exc:
            if exc.code == "STORAGE_FULL":
                raise
            raise unknown from None  # upstream cannot give it now: a pusher must send it
        return download.size

    def wait_for(self, digests: Iterable[str]) -> bool:
        """Wait until the downloads running of these blobs end; whether there was any."""
        with self._lock:
            running = [d for d in (self._downloads.get(Digest.parse(x).hex) for x in digests) if d is not None]
        for d in running:
            with d.cond:
                d.cond.wait_for(lambda d=d: d.done or d.error is not None)
        return bool(running)

    def stream_blob(self, repo: str, digest: Digest) -> tuple[int, Callable[[int, int], Iterator[bytes]]]:
        """(size, reader(start, length)) of a blob fetched from upstream, sharing a download in progress."""
        download = self._join_or_start(repo, digest)
        download.wait_started(START_SECONDS)
        return download.size, lambda start, length: self._follow(download, start, start + length)

    def _join_or_start(self, repo: str, digest: Digest) -> Download:
        with self._lock:
            running = self._downloads.get(digest.hex)
            if running is not None:
                return running
            f, tmp = self.store.blobs.temp_file(".mirror")
            f.close()
            download = Download(digest, tmp)
            self._downloads[digest.hex] = download
            self.upstream_fetches += 1
        threading.Thread(target=self._fetch, args=(repo, download), name=f"mirror-{digest.hex[:12]}",
                         daemon=True).start()
        return download

    def _fetch(self, repo: str, d: Download) -> None:
        """The one download of a blob (a thread): readers learn the outcome only after the cleanup behind it."""
        failure: BaseException | None = None
        try:
            self._download(repo, d)
        except OCIError as exc:  # refused here before fetching
            log.warning("not mirroring blob %s: %s", d.digest, exc.message)
            failure = exc
        except (OciClientError, OSError, *TRANSIENT_ERRORS) as exc:
            log.warning("mirroring blob %s failed: %s", d.digest, exc)
            failure = exc
        except Exception as exc:  # a bug: readers must still end
            log.exception("mirroring blob %s failed", d.digest)
            failure = exc
        with self._lock:
            self._downloads.pop(d.digest.hex, None)
        if failure is None:
            self._after_stored()
        else:
            d.tmp.unlink(missing_ok=True)
        with d.cond:
            d.done = failure is None
            if failure is not None:
                d.error = str(failure)[:500] or type(failure).__name__
                d.error_status = getattr(failure, "status", 0)
                d.refusal = failure if isinstance(failure, OCIError) else None
            d.cond.notify_all()

    def _download(self, repo: str, d: Download) -> None:
        """To the temp file, hashed while written, verified, then into the store."""
        resp = self.upstream.open_blob(repo, str(d.digest))
        if resp is None:
            raise OciClientError(f"upstream has no blob {d.digest} in {repo}", 404)
        size = _length(resp)
        if size is None or size > self.max_blob_bytes:
            resp.close()
            raise OciClientError(f"blob {d.digest} upstream has no usable length ({size})")
        try:
            self._check_space(d, size)
        except OCIError:
            resp.close()  # unread: the connection goes, and the body with it
            raise
        with d.cond:
            d.size = size
            d.cond.notify_all()
        hasher = hashlib.sha256()
        with resp, open(d.tmp, "wb") as f:
            for chunk in resp.iter_content(CHUNK):
                if d.written + len(chunk) > size:
                    raise OciClientError(f"upstream sent more than the {size} bytes of {d.digest}")
                f.write(chunk)
                f.flush()
                hasher.update(chunk)
                with d.cond:
                    d.written += len(chunk)
                    d.cond.notify_all()
        if d.written != size:
            raise OciClientError(f"upstream sent {d.written} of the {size} bytes of {d.digest}")
        if hasher.hexdigest() != d.digest.hex:
            raise OciClientError(f"digest mismatch: upstream's bytes for {d.digest} hash to sha256:{hasher.hexdigest()}")
        self.store.add_blob(d.tmp, d.digest, size, MIRROR)
        log.info("mirrored blob %s (%d bytes)", d.digest, size)

    def _check_space(self, d: Download, size: int) -> None:
        """`size` more bytes, and what the other running downloads still need, fit past --min-free; else STORAGE_FULL."""
        if self.space is None:
            return
        with self._lock:
            others = sum(max(o.size - o.written, 0) for o in self._downloads.values() if o is not d)
        try:
            self.space(size + others)
        except InsufficientStorageError as exc:
            held = f" (and {format_size(others)} of downloads running)" if others else ""
            raise OCIError("STORAGE_FULL", f"blob {d.digest} ({format_size(size)}{held}) is not fetched from "
                           f"upstream: {exc}", {"digest": str(d.digest), "size": size}) from None

    def _after_stored(self) -> None:
        """The size limit, before readers get the last byte (a failure there never fails the download)."""
        try:
            self.on_stored()
        except Exception:
            log.exception("mirror eviction failed")

    def _follow(self, d: Download, start: int, end: int) -> Iterator[bytes]:
        """The blob's bytes [start, end) as the download writes them (or from the store once it is there)."""
        try:
            f = open(d.tmp, "rb")  # noqa: SIM115  (a handle opened before the rename survives it)
        except FileNotFoundError:  # renamed into the store, or deleted after a failure, meanwhile
            with d.cond:
                d.cond.wait_for(lambda: d.done or d.error is not None)
            if not d.done:
                raise OSError(f"upstream download of {d.digest} failed: {d.error}") from None
            f = open(self.store.blobs.path(d.digest), "rb")  # noqa: SIM115
        try:
            f.seek(start)
            position = start
            while position < end:
                with d.cond:
                    d.cond.wait_for(lambda at=position: d.readable() > at or d.error is not None, WAIT_SECONDS)
                    available, error = d.readable(), d.error
                if error is not None:
                    raise OSError(f"upstream download of {d.digest} failed: {error}")  # cuts the body
                while position < min(available, end):
                    chunk = f.read(min(CHUNK, min(available, end) - position))
                    if not chunk:
                        break
                    position += len(chunk)
                    yield chunk
        finally:
            f.close()


def _length(resp) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None

"""Download one URL into a blob store: what only a URL needs, over the one download engine.

The engine (eldric.transfer.download, the agent's too) fetches parallel byte
ranges, resumes a partial download, detects stalls, hashes and renames the file
into place only once it is complete. This module adds what is particular to a URL:

- a probe: a 1-byte ranged GET tells the size and whether Range works (not HEAD:
  an S3 presigned GET URL signs the method);
- HuggingFace `resolve` URLs with a bearer token: requests drops the header on
  the redirect to their CDN (another host), so the token never leaves HF;
- S3 presigned URLs: the signature is in the query string, so the only headers
  added are Range and `Accept-Encoding: identity`, which it does not cover;
- a server that ignores Range: one stream; after a cut, the engine starts over
  from byte 0 and reads past the bytes it already has;
- a file of unknown size (no Content-Length): one stream, hashed as it arrives;
- the size cap (TooLargeError), checked before the first byte when the size is known;
- the address policy (eldric.transfer.upstreams): loopback, private, link-local and
  metadata addresses are refused on every hop unless the allow-list names them.

When nobody published the file's sha256, the engine's hasher computes it while
the bytes land and the file is committed under it: an import is never read a
second time to learn its digest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import requests

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError, cap_text
from eldric.core.redaction import redact_url, redact_urls
from eldric.core.request_errors import ImportFailedError, TooLargeError
from eldric.transfer.download import DownloadOptions, download_blob
from eldric.transfer.errors import (HostNotAllowedError, ModelNotFoundError, SourceError, SourceUnavailableError,
                                    TransferError)
from eldric.transfer.http import CONNECT_TIMEOUT, guard
from eldric.transfer.ranges import parse_content_range
from eldric.transfer.retry import TRANSIENT_ERRORS, backoff_delay, connection_error, is_transient_status
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy


def source_kind(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in ("huggingface.co", "hf.co") or host.endswith(".huggingface.co"):
        return "huggingface"
    if "x-amz-signature=" in parts.query.lower() or host.endswith(".amazonaws.com"):
        return "s3"
    return "http"


@dataclass(frozen=True)
class UrlProbe:
    """What a probe learned: the file's size (None: the server does not say), whether Range works, and
    the server's validator of this version of the file (a strong ETag, else Last-Modified; None: neither)."""

    size: int | None
    ranged: bool
    validator: str | None = None


def validator_of(headers) -> str | None:
    """`etag:<strong ETag>` or `last-modified:<date>`: what says the file is the one fetched before (RFC 9110 8.8)."""
    etag = headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return f"etag:{etag}"
    modified = headers.get("Last-Modified", "")
    return f"last-modified:{modified}" if modified else None


class UrlSource:
    """One URL: probe it, open byte ranges of it (the engine's RangeOpener).

    HTTP answers become transfer errors: SourceUnavailableError (connection
    failures, 408, 429, 5xx: worth another try), ModelNotFoundError (404),
    SourceError (any other answer that cannot be used).
    """

    def __init__(self, session: requests.Session, url: str, headers: dict[str, str] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.session, self.url, self.headers = session, url, dict(headers or {})
        self.connect_timeout = connect_timeout
        self.name = redact_url(url)

    def probe(self, read_timeout: float = 60.0) -> UrlProbe:
        with self._get("bytes=0-0", read_timeout) as resp:
            if resp.status_code == 416:  # only an empty file cannot satisfy bytes=0-0
                return UrlProbe(0, True)
            self._check(resp, 0)
            if resp.status_code == 206:
                return UrlProbe(parse_content_range(resp.headers.get("Content-Range", ""))[2], True,
                                validator_of(resp.headers))
            length = resp.headers.get("Content-Length", "")
            # An encoded body's length is not the file's (some servers compress despite `identity`).
            known = length.isdigit() and not resp.headers.get("Content-Encoding")
            return UrlProbe(int(length) if known else None, False, validator_of(resp.headers))

    def open_range(self, start: int, end: int | None, read_timeout: float) -> requests.Response:
        """A streaming response for bytes start..end; a 200 (Range ignored) too: the engine reads past what it has."""
        wanted = None if start == 0 and end is None else f"bytes={start}-{'' if end is None else end}"
        resp = self._get(wanted, read_timeout)
        try:
            self._check(resp, start)
        except BaseException:
            resp.close()
            raise
        return resp

    def _get(self, byte_range: str | None, read_timeout: float) -> requests.Response:
        headers = {**self.headers, "Accept-Encoding": "identity"}  # offsets must count the file's own bytes
        if byte_range:
            headers["Range"] = byte_range
        try:
            return self.session.get(self.url, headers=headers, stream=True,
                                    timeout=(self.connect_timeout, read_timeout))
        except TRANSIENT_ERRORS as exc:  # permanent ones (no such host, TLS mismatch) become SourceError
            raise connection_error(exc, self.url, what=f"{self.name}:") from None
        except requests.RequestException as exc:  # a bad redirect, too many of them
            raise SourceError(f"{self.name}: {_describe(exc)}") from None
        except HostNotAllowedError as exc:  # this URL or a redirect hop leads to an internal address
            raise HostNotAllowedError(f"{self.name}: {exc}") from None

    def _check(self, resp: requests.Response, start: int) -> None:
        code = resp.status_code
        if code == 206:
            try:
                first = parse_content_range(resp.headers.get("Content-Range", ""))[0]
            except ValueError as exc:
                raise SourceError(f"{self.name}: {exc}") from None
            if first != start:
                raise SourceError(f"{self.name}: asked for bytes from {start}, got bytes from {first}")
        elif code in (401, 403):
            raise SourceError(f"{self.name}: access denied (HTTP {code}); gated or private models need a token, "
                              "presigned URLs expire")
        elif code == 404:
            raise ModelNotFoundError(f"{self.name}: not found (HTTP 404)")
        elif is_transient_status(code):
            raise SourceUnavailableError(f"{self.name}: HTTP {code}")
        elif code != 200:
            raise SourceError(f"{self.name}: HTTP {code}")


def _describe(exc: BaseException) -> str:
    """An HTTP library's error, short, without the credentials and query strings (S3 signatures) of the URLs it names."""
    return cap_text(redact_urls(str(exc)), 300)


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int = 1 << 40  # the size cap: a bigger file fails with TooLargeError
    # part_attempts: tries in a row that bring no new byte, for the probe and for each range
    download: DownloadOptions = DownloadOptions(stall_seconds=60.0, part_attempts=6)
    # Which addresses the URL and its redirects may reach: public ones, and what the allow-list names.
    url_policy: AddressPolicy = PUBLIC_ONLY


def fetch(session: requests.Session, url: str, store: BlobStore, partial_dir: Path, *, key: str,
          expected: Digest | None = None, headers: dict[str, str] | None = None,
          options: FetchOptions = FetchOptions(),
          on_bytes: Callable[[int, int | None], None] = lambda done, total: None) -> tuple[Path, Digest, int]:
    """Download `url` into `store`, resuming what `partial_dir` holds under `key`; return (path, digest, size).

    on_bytes(bytes so far, total or None) reports progress. Raise ImportFailedError when
    the URL cannot be fetched (an HTTP error, no progress after the attempts, other bytes
    than `expected`, an address the policy refuses), TooLargeError above options.max_bytes.
    `session` is made an upstream one (eldric.transfer.http.guard) under options.url_policy.
    """
    source = UrlSource(guard(session, options.url_policy), url, headers)
    attempts = options.download.part_attempts
    try:
        found = _probe(source, options.download)
        if found.size is not None and found.size > options.max_bytes:
            raise TooLargeError(f"{source.name} has {found.size} bytes, over the file size limit of "
                                f"{options.max_bytes}")
        plan = options.download
        if not found.ranged and found.size:
            plan = replace(plan, parts=1, part_bytes=found.size)  # one stream from byte 0
        counter = _Counter(on_bytes, found.size, options.max_bytes, source.name)
        path = download_blob(source.open_range, expected, found.size, store, partial_dir, plan,
                             on_bytes=counter.add, key=key)
    except SourceUnavailableError as exc:
        raise ImportFailedError(f"{source.name}: giving up after {attempts} attempts: {exc}") from None
    except (TransferError, DigestMismatchError) as exc:
        raise ImportFailedError(f"{source.name}: {exc}" if source.name not in str(exc) else str(exc)) from None
    return path, Digest.parse(path.name), path.stat().st_size


def _probe(source: UrlSource, options: DownloadOptions) -> UrlProbe:
    for attempt in range(1, options.part_attempts + 1):
        try:
            return source.probe(options.stall_seconds)
        except SourceUnavailableError:
            if attempt == options.part_attempts:
                raise
            time.sleep(backoff_delay(attempt - 1, base=options.retry_backoff_seconds, cap=5.0))
    raise AssertionError("unreachable")


class _Counter:
    """Turns the engine's per-thread byte counts into on_bytes(bytes so far, total); enforces the cap."""

    def __init__(self, on_bytes: Callable[[int, int | None], None], total: int | None, limit: int, name: str) -> None:
        self.on_bytes, self.total, self.limit, self.name = on_bytes, total, limit, name
        self.done = 0
        self._lock = threading.Lock()  # the engine calls from several download threads

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.done > self.limit:  # only a stream of unknown size can get here
                raise TooLargeError(f"{self.name} is larger than the file size limit of {self.limit}")
            self.on_bytes(self.done, self.total)

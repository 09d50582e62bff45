"""Download one URL to a local file, resuming with HTTP Range, hashing as it goes.

Works with HuggingFace `resolve` URLs (a bearer token; the redirect to their CDN
drops it, as requests does across hosts), S3 presigned URLs (the signature is in
the query string, so no header may be added that it does not cover) and plain
HTTP. A dropped connection or a 5xx is retried with `Range: bytes=<have>-`; a
server that ignores Range (200 instead of 206) makes the download start over,
which is still correct. The running sha256 follows the bytes on disk, so a
finished download needs no second read.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from eldric.core.digests import Digest, sha256_of_file
from eldric.core.model_errors import ImportFailedError, TooLargeError
from eldric.transfer.retry import TRANSIENT_ERRORS, backoff_delay, is_transient_status

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")


def is_http_url(url: object) -> bool:
    """An absolute http(s) URL with a host and a valid port (urlsplit raises on `[::1` or port 99999)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def redact(url: str) -> str:
    """The URL without credentials or query string (S3 signatures), for logs and job records."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(malformed URL)"
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def source_kind(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in ("huggingface.co", "hf.co") or host.endswith(".huggingface.co"):
        return "huggingface"
    if "x-amz-signature=" in parts.query.lower() or host.endswith(".amazonaws.com"):
        return "s3"
    return "http"


class _Retry(Exception):
    """A transient failure: try again from the bytes already on disk."""


@dataclass
class Partial:
    """A download in progress: the file and the sha256 of its current bytes."""

    path: Path
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    @classmethod
    def open(cls, path: Path) -> Partial:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return cls(path)
        with open(path, "rb") as f:
            hasher = sha256_of_file(f)
        return cls(path, hasher, path.stat().st_size)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.hasher, self.size = hashlib.sha256(), 0


@dataclass(frozen=True)
class FetchOptions:
    attempts: int = 6
    backoff: float = 0.5
    stall_seconds: float = 60.0
    max_bytes: int = 1 << 40


def fetch(session: requests.Session, url: str, partial: Partial, *, headers: dict[str, str] | None = None,
          options: FetchOptions = FetchOptions(), on_bytes: Callable[[int, int | None], None] = lambda n, t: None,
          sleep: Callable[[float], None] = time.sleep) -> tuple[Digest, int]:
    """Complete `partial` from `url`; return (digest, size). on_bytes(size so far, total or None)."""
    for attempt in range(1, options.attempts + 1):
        try:
            _fetch_once(session, url, partial, headers or {}, options, on_bytes)
            return Digest(partial.hasher.hexdigest()), partial.size
        except _Retry as exc:
            if attempt == options.attempts:
                raise ImportFailedError(f"{redact(url)}: giving up after {attempt} attempts: {exc}") from None
            log.info("download of %s interrupted at byte %d (%s); retrying", redact(url), partial.size, exc)
            sleep(backoff_delay(attempt - 1, base=options.backoff, cap=10.0))
    raise AssertionError("unreachable")


def _fetch_once(session: requests.Session, url: str, partial: Partial, headers: dict[str, str],
                options: FetchOptions, on_bytes: Callable[[int, int | None], None]) -> None:
    sent = {**headers, "Accept-Encoding": "identity"}  # byte offsets must mean the file's bytes
    if partial.size:
        sent["Range"] = f"bytes={partial.size}-"
    try:
        with session.get(url, headers=sent, stream=True, timeout=(10, options.stall_seconds)) as resp:
            total = _start_position(resp, url, partial)
            if total is not None and total > options.max_bytes:
                raise TooLargeError(f"{redact(url)} has {total} bytes, over the file size limit of "
                                    f"{options.max_bytes}")
            if total is not None and partial.size == total:
                return
            on_bytes(partial.size, total)
            _stream_body(resp, partial, options.max_bytes, total, on_bytes)
    except (*TRANSIENT_ERRORS, OSError) as exc:
        raise _Retry(str(exc)) from None
    if total is not None and partial.size != total:
        raise _Retry(f"connection closed at byte {partial.size} of {total}")


def _stream_body(resp: requests.Response, partial: Partial, max_bytes: int, total: int | None,
                 on_bytes: Callable[[int, int | None], None]) -> None:
    with open(partial.path, "ab") as out:
        # read1: whatever has arrived, so a cut connection loses none of the bytes received before it
        while chunk := resp.raw.read1(CHUNK):
            if partial.size + len(chunk) > max_bytes:
                raise TooLargeError(f"{redact(resp.url)} is larger than the file size limit of {max_bytes}")
            out.write(chunk)
            partial.hasher.update(chunk)
            partial.size += len(chunk)
            on_bytes(partial.size, total)


def _start_position(resp: requests.Response, url: str, partial: Partial) -> int | None:
    """Line `partial` up with what the server sends; return the file's total size if known."""
    code = resp.status_code
    if code == 416 and partial.size:
        match = _UNSATISFIED.match(resp.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == partial.size:
            return partial.size  # we already have every byte
        partial.restart()
        raise _Retry("server refused the resume range; starting over")
    if code in (401, 403):
        raise ImportFailedError(f"{redact(url)}: access denied (HTTP {code}); gated or private models need a token, "
                                "presigned URLs expire")
    if is_transient_status(code):
        raise _Retry(f"HTTP {code} from {redact(url)}")
    if code >= 400 or code not in (200, 206):
        raise ImportFailedError(f"{redact(url)}: HTTP {code}")
    if code == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == partial.size:
            return None if match.group(3) == "*" else int(match.group(3))
        partial.restart()
        raise _Retry("server answered a different range than asked; starting over")
    if partial.size:  # 200: the server ignored Range and sends everything
        log.info("%s does not support Range; downloading from the start", redact(url))
        partial.restart()
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() and "Content-Encoding" not in resp.headers else None

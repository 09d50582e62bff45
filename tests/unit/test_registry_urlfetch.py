"""URL downloads for imports, against a hand-written fake HTTP session: resume, restart, give up."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import urllib3

from eldric.core.model_errors import ImportFailedError, TooLargeError
from eldric.transfer.urlfetch import FetchOptions, Partial, fetch, redact, source_kind

DATA = bytes(range(256)) * 40  # 10240 bytes


class FakeResponse:
    def __init__(self, status: int, body: bytes, headers: dict[str, str], drop_after: int | None) -> None:
        self.status_code, self.body, self.headers, self.drop_after = status, body, headers, drop_after
        self.url = "http://files.example/m.gguf"
        self.raw = self
        self.sent = 0

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def read1(self, n: int) -> bytes:
        """At most 1000 bytes a call, like a socket; a dropped connection raises after its last byte."""
        end = min(self.sent + 1000, len(self.body))
        if self.drop_after is not None:
            if self.sent >= self.drop_after:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            end = min(end, self.drop_after)
        piece = self.body[self.sent:end]
        self.sent = end
        return piece


class FakeServer:
    """Serves DATA; `ranges` decides whether Range is honoured; `drops` cuts the first answers short."""

    def __init__(self, *, ranges: bool = True, drops: list[int] | None = None, status: int = 200) -> None:
        self.ranges, self.drops, self.status = ranges, list(drops or []), status
        self.seen: list[dict] = []

    def get(self, url: str, headers: dict, stream: bool, timeout) -> FakeResponse:
        self.seen.append(dict(headers))
        drop = self.drops.pop(0) if self.drops else None
        if self.status != 200:
            return FakeResponse(self.status, b"", {}, None)
        match = re.match(r"bytes=(\d+)-$", headers.get("Range", ""))
        if match and self.ranges:
            start = int(match.group(1))
            if start >= len(DATA):
                return FakeResponse(416, b"", {"Content-Range": f"bytes */{len(DATA)}"}, None)
            body = DATA[start:]
            return FakeResponse(206, body, {"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}",
                                            "Content-Length": str(len(body))}, drop)
        return FakeResponse(200, DATA, {"Content-Length": str(len(DATA))}, drop)


def run(server: FakeServer, tmp_path: Path, **options) -> tuple[str, int, Path]:
    partial = Partial.open(tmp_path / "f.part")
    digest, size = fetch(server, "http://files.example/m.gguf", partial, headers={"Authorization": "Bearer t"},
                         options=FetchOptions(backoff=0, **options), sleep=lambda s: None)
    return str(digest), size, partial.path


def test_dropped_connection_resumes_with_range(tmp_path: Path) -> None:
    server = FakeServer(drops=[3000, 2000])
    digest, size, path = run(server, tmp_path)
    assert (digest, size) == ("sha256:" + hashlib.sha256(DATA).hexdigest(), len(DATA))
    assert path.read_bytes() == DATA
    assert [h.get("Range") for h in server.seen] == [None, "bytes=3000-", "bytes=5000-"]
    assert all(h["Authorization"] == "Bearer t" and h["Accept-Encoding"] == "identity" for h in server.seen)


def test_server_without_range_support_starts_over(tmp_path: Path) -> None:
    server = FakeServer(ranges=False, drops=[4000])
    digest, _size, path = run(server, tmp_path)
    assert path.read_bytes() == DATA and digest == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert server.seen[1].get("Range") == "bytes=4000-"  # asked, got a 200, restarted cleanly


def test_a_partial_left_by_a_previous_run_is_continued(tmp_path: Path) -> None:
    (tmp_path / "f.part").write_bytes(DATA[:7000])
    server = FakeServer()
    digest, size, _ = run(server, tmp_path)
    assert server.seen[0]["Range"] == "bytes=7000-" and size == len(DATA)
    assert digest == "sha256:" + hashlib.sha256(DATA).hexdigest()


def test_already_complete_partial_gets_416_and_is_done(tmp_path: Path) -> None:
    (tmp_path / "f.part").write_bytes(DATA)
    digest, size, _ = run(FakeServer(), tmp_path)
    assert size == len(DATA) and digest == "sha256:" + hashlib.sha256(DATA).hexdigest()


def test_gives_up_after_the_attempts(tmp_path: Path) -> None:
    with pytest.raises(ImportFailedError, match="giving up after 3 attempts"):
        run(FakeServer(drops=[100, 100, 100]), tmp_path, attempts=3)


@pytest.mark.parametrize("status, why", [(401, "access denied"), (403, "token"), (404, "HTTP 404")])
def test_client_errors_fail_at_once(tmp_path: Path, status: int, why: str) -> None:
    server = FakeServer(status=status)
    with pytest.raises(ImportFailedError, match=why):
        run(server, tmp_path)
    assert len(server.seen) == 1


def test_server_errors_are_retried(tmp_path: Path) -> None:
    server = FakeServer(status=503)
    with pytest.raises(ImportFailedError, match="HTTP 503"):
        run(server, tmp_path, attempts=2)
    assert len(server.seen) == 2


def test_size_limit(tmp_path: Path) -> None:
    with pytest.raises(TooLargeError):
        run(FakeServer(), tmp_path, max_bytes=1000)


@pytest.mark.parametrize("url, kind", [
    ("https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/main/config.json", "huggingface"),
    ("https://bucket.s3.eu-west-1.amazonaws.com/m.gguf?X-Amz-Signature=abc", "s3"),
    ("https://minio.local/m.gguf?X-Amz-Signature=abc&X-Amz-Date=1", "s3"),
    ("http://files.local/m.gguf", "http"),
])
def test_source_kind(url: str, kind: str) -> None:
    assert source_kind(url) == kind


def test_redact_drops_credentials_and_signatures() -> None:
    assert redact("https://user:pw@minio.local:9000/b/m.gguf?X-Amz-Signature=s3cret") == \
        "https://minio.local:9000/b/m.gguf"


@pytest.mark.parametrize("url, ok", [
    ("https://huggingface.co/org/m/resolve/main/m.gguf", True),
    ("http://127.0.0.1:8080/x.gguf?X-Amz-Signature=abc", True),
    ("http://[::1/x", False),
    ("http://host:99999/x", False),
    ("ftp://host/x", False),
    ("/etc/passwd", False),
    (None, False),
])
def test_is_http_url(url, ok):
    from eldric.transfer.urlfetch import is_http_url
    assert is_http_url(url) is ok


def test_redact_survives_malformed_urls():
    from eldric.transfer.urlfetch import redact
    assert redact("http://[::1/x") == "(malformed URL)"
    assert redact("https://u:p@h:8443/a/b?sig=1") == "https://h:8443/a/b"

"""URL downloads over the download engine, against a hand-written fake HTTP session: probe, parallel
ranges, resume, servers without Range or without a size, give up, size cap."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest
import requests
import urllib3

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.request_errors import ImportFailedError, TooLargeError
from eldric.transfer.download import DownloadOptions
from eldric.transfer.urlfetch import FetchOptions, UrlSource, fetch, source_kind

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA = "sha256:" + hashlib.sha256(DATA).hexdigest()
URL = "http://files.example/m.gguf"
# Five ranges of 2048 bytes, four connections from the start, no waiting between tries.
ENGINE = DownloadOptions(parts=4, start_connections=4, part_bytes=2048, chunk_bytes=500, part_attempts=3,
                         retry_backoff_seconds=0, save_every_seconds=0.01)


class FakeRaw:
    """`response.raw`: urllib3's read(amt); a dropped connection raises after its last byte."""

    def __init__(self, body: bytes, drop_after: int | None) -> None:
        self.body, self.drop_after, self.sent = body, drop_after, 0

    def read(self, amt: int, decode_content: bool | None = None) -> bytes:
        end = min(self.sent + amt, len(self.body))
        if self.drop_after is not None:
            if self.sent >= self.drop_after:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            end = min(end, self.drop_after)
        piece = self.body[self.sent:end]
        self.sent = end
        return piece


class FakeResponse:
    def __init__(self, status: int, body: bytes, headers: dict[str, str], drop_after: int | None = None) -> None:
        self.status_code, self.headers = status, headers
        self.raw = FakeRaw(body, drop_after)

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        return None


class FakeServer:
    """A `requests.Session` serving DATA. `ranges`: honour Range; `sized`: send Content-Length;
    `drops`: {first byte of a request: bytes to send before the connection breaks}, once each
    (every time if `sticky`)."""

    def __init__(self, *, ranges: bool = True, sized: bool = True, drops: dict[int, int] | None = None,
                 sticky: bool = False, status: int = 200, data: bytes = DATA, content_range: str | None = None) -> None:
        self.ranges, self.sized, self.drops, self.status = ranges, sized, dict(drops or {}), status
        self.sticky = sticky
        self.data, self.content_range = data, content_range
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        # What fetch() sets up on a session (eldric.transfer.http.guard); no socket is opened here.
        self.hooks: dict[str, list] = {"response": []}
        self.max_redirects, self.trust_env, self.adapters = 30, True, {}

    def mount(self, prefix: str, adapter: object) -> None:
        self.adapters[prefix] = adapter

    @property
    def ranges_asked(self) -> list[str | None]:
        return [h.get("Range") for h in self.seen]

    def get(self, url: str, headers: dict, stream: bool, timeout) -> FakeResponse:
        assert url == URL and stream
        with self._lock:
            self.seen.append(dict(headers))
        if self.status != 200:
            return FakeResponse(self.status, b"", {})
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", ""))
        start, end, status = 0, len(self.data) - 1, 200
        if match and self.ranges:
            start = int(match.group(1))
            if start >= len(self.data):
                return FakeResponse(416, b"", {"Content-Range": f"bytes */{len(self.data)}"})
            end = min(int(match.group(2) or end), end)
            status = 206
        with self._lock:
            if headers.get("Range") == "bytes=0-0":
                drop = None  # the probe is never cut
            else:
                drop = self.drops.get(start) if self.sticky else self.drops.pop(start, None)
        body = self.data[start:end + 1]
        sent = {"Content-Length": str(len(body))} if self.sized else {}
        if status == 206:
            sent["Content-Range"] = self.content_range or f"bytes {start}-{end}/{len(self.data)}"
        return FakeResponse(status, body, sent, drop)


def run(server: FakeServer, tmp_path: Path, *, expected: str | None = None, max_bytes: int = 1 << 40,
        engine: DownloadOptions = ENGINE, progress: list | None = None) -> tuple[str, int, Path]:
    def on_bytes(done: int, total: int | None) -> None:
        if progress is not None:
            progress.append((done, total))
    path, digest, size = fetch(server, URL, BlobStore(tmp_path / "done"), tmp_path / "partial", key="0",
                               expected=Digest.parse(expected) if expected else None,
                               headers={"Authorization": "Bearer t"},
                               options=FetchOptions(max_bytes=max_bytes, download=engine), on_bytes=on_bytes)
    return str(digest), size, path


def leftovers(tmp_path: Path) -> set[str]:
    partial = tmp_path / "partial"
    return {p.name for p in partial.iterdir() if not p.name.endswith(".lock")} if partial.exists() else set()


def test_ranges_in_parallel_and_a_dropped_one_resumes_at_the_byte_it_stopped(tmp_path: Path) -> None:
    server = FakeServer(drops={4096: 1000})
    progress: list = []
    digest, size, path = run(server, tmp_path, progress=progress)
    assert (digest, size) == (SHA, len(DATA))
    assert path == tmp_path / "done" / SHA.replace(":", "-") and path.read_bytes() == DATA
    asked = server.ranges_asked
    assert asked[0] == "bytes=0-0"  # the probe
    assert sorted(asked[1:]) == sorted(["bytes=0-2047", "bytes=2048-4095", "bytes=4096-6143", "bytes=5096-6143",
                                        "bytes=6144-8191", "bytes=8192-10239"])
    assert all(h["Authorization"] == "Bearer t" and h["Accept-Encoding"] == "identity" for h in server.seen)
    assert progress[-1] == (len(DATA), len(DATA)) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert leftovers(tmp_path) == set()


def test_server_without_range_support_is_one_stream_that_starts_over(tmp_path: Path) -> None:
    server = FakeServer(ranges=False, drops={0: 4000})
    progress: list = []
    digest, _size, path = run(server, tmp_path, progress=progress)
    assert path.read_bytes() == DATA and digest == SHA
    # asked for the rest, got everything again (200), read past the 4000 bytes it had
    assert server.ranges_asked == ["bytes=0-0", "bytes=0-10239", "bytes=4000-10239"]
    assert progress[-1] == (len(DATA), len(DATA))


def test_an_interrupted_download_is_continued_by_the_next_run(tmp_path: Path) -> None:
    with pytest.raises(ImportFailedError, match="giving up after 3 attempts"):
        run(FakeServer(drops={2048: 700, 2748: 0}, sticky=True), tmp_path, engine=DownloadOptions(
            parts=1, part_bytes=2048, part_attempts=3, retry_backoff_seconds=0, chunk_bytes=500))
    state = json.loads((tmp_path / "partial" / "url-0.json").read_text())
    assert state["parts"][:2] == [[0, 2048, 2048], [2048, 2048, 700]]

    server = FakeServer()
    progress: list = []
    digest, size, _ = run(server, tmp_path, progress=progress)
    assert (digest, size) == (SHA, len(DATA))
    assert "bytes=0-2047" not in server.ranges_asked and "bytes=2748-4095" in server.ranges_asked
    assert progress[0][0] == 2048 + 700, "resumed bytes count towards the progress"
    assert progress[-1] == (len(DATA), len(DATA))


def test_unknown_size_is_one_stream_hashed_as_it_arrives(tmp_path: Path) -> None:
    server = FakeServer(ranges=False, sized=False, drops={0: 3000})
    progress: list = []
    digest, size, path = run(server, tmp_path, progress=progress)
    assert (digest, size) == (SHA, len(DATA)) and path.read_bytes() == DATA
    assert server.ranges_asked == ["bytes=0-0", None, "bytes=3000-"]
    assert progress[-1] == (len(DATA), None)


def test_unknown_size_over_the_cap_stops_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TooLargeError, match="larger than the file size limit of 5000"):
        run(FakeServer(ranges=False, sized=False), tmp_path, max_bytes=5000)
    assert leftovers(tmp_path) == set()
    assert not (tmp_path / "done").exists() or not list((tmp_path / "done").iterdir())


def test_known_size_over_the_cap_fails_before_the_download(tmp_path: Path) -> None:
    server = FakeServer()
    with pytest.raises(TooLargeError, match="10240 bytes, over the file size limit of 1000"):
        run(server, tmp_path, max_bytes=1000)
    assert server.ranges_asked == ["bytes=0-0"]


def test_a_wrong_digest_fails_and_stores_nothing(tmp_path: Path) -> None:
    with pytest.raises(ImportFailedError, match="expected sha256:1111"):
        run(FakeServer(), tmp_path, expected="sha256:" + "1" * 64)
    assert leftovers(tmp_path) == set()
    assert not list((tmp_path / "done").glob("sha256-*"))


def test_the_expected_digest_is_checked(tmp_path: Path) -> None:
    digest, _, path = run(FakeServer(), tmp_path, expected=SHA)
    assert digest == SHA and path.read_bytes() == DATA


def test_an_empty_file(tmp_path: Path) -> None:
    digest, size, path = run(FakeServer(data=b""), tmp_path)
    assert (digest, size) == ("sha256:" + hashlib.sha256(b"").hexdigest(), 0) and path.read_bytes() == b""


def test_gives_up_after_the_attempts(tmp_path: Path) -> None:
    server = FakeServer(status=503)
    with pytest.raises(ImportFailedError, match=r"giving up after 3 attempts: .*HTTP 503"):
        run(server, tmp_path)
    assert len(server.seen) == 3


@pytest.mark.parametrize("status, why", [(401, "access denied"), (403, "token"), (404, "HTTP 404"),
                                         (410, "HTTP 410")])
def test_client_errors_fail_at_once(tmp_path: Path, status: int, why: str) -> None:
    server = FakeServer(status=status)
    with pytest.raises(ImportFailedError, match=why):
        run(server, tmp_path)
    assert len(server.seen) == 1


def test_a_range_other_than_asked_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportFailedError, match="asked for bytes from 0, got bytes from 5"):
        run(FakeServer(content_range="bytes 5-5/10240"), tmp_path)


def test_url_source_probe() -> None:
    assert UrlSource(FakeServer(), URL).probe().size == len(DATA)
    assert UrlSource(FakeServer(ranges=False), URL).probe().ranged is False
    assert UrlSource(FakeServer(ranges=False, sized=False), URL).probe().size is None


@pytest.mark.parametrize("url, kind", [
    ("https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/main/config.json", "huggingface"),
    ("https://bucket.s3.eu-west-1.amazonaws.com/m.gguf?X-Amz-Signature=abc", "s3"),
    ("https://minio.local/m.gguf?X-Amz-Signature=abc&X-Amz-Date=1", "s3"),
    ("http://files.local/m.gguf", "http"),
])
def test_source_kind(url: str, kind: str) -> None:
    assert source_kind(url) == kind


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
    from eldric.transfer.upstreams import is_http_url
    assert is_http_url(url) is ok


def test_a_connection_error_keeps_the_urls_signature_out_of_the_error(tmp_path: Path) -> None:
    class Refusing(FakeServer):
        def get(self, url: str, headers: dict, stream: bool, timeout) -> FakeResponse:
            raise requests.ConnectionError("HTTPSConnectionPool(host='bucket.s3.example', port=443): Max retries "
                                           "exceeded with url: /m.gguf?X-Amz-Signature=s3cr3t&X-Amz-Date=1 (Caused "
                                           "by NewConnectionError('Failed to establish a new connection'))")
    with pytest.raises(ImportFailedError) as info:
        run(Refusing(), tmp_path)
    assert "s3cr3t" not in str(info.value) and "cannot reach files.example: the connection failed" in str(info.value)

"""One shared, byte-counting uplink on loopback: a site's internet link in front of a local registry.

`UplinkProxy` forwards GET/HEAD (with their Range, Accept and Authorization headers) to an
upstream registry and caps the rate of **all** its connections together at `bytes_per_second`,
as one uplink would; `tests/support/throttle.py` caps each connection on its own instead.
It counts the body bytes it sent, in total and per request path, so a fan-out bench or test can
tell how many copies of a blob crossed the uplink.

The cap is one token bucket shared by every connection, kept as a virtual clock (GCRA): a
connection reserves the next slot for each chunk before sending it, so backlogged connections
are served in turn (first come, first served, one chunk each) and the rate over any window of
length t is at most `bytes_per_second · t + burst`. Chunks are 1 MiB so that ~20 MiB/s costs a
few dozen wake-ups a second, not thousands.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

CHUNK = 1 << 20
_FORWARD_HEADERS = ("range", "accept", "authorization")
_PASS_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Docker-Content-Digest",
                 "Docker-Distribution-Api-Version", "ETag", "WWW-Authenticate", "Location")


class SharedBucket:
    """A token bucket shared by threads: `acquire(n)` returns once n bytes may be sent."""

    def __init__(self, bytes_per_second: float, burst: int = CHUNK) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        self.rate, self.burst = float(bytes_per_second), burst
        self._tat = 0.0  # theoretical arrival time: when the bucket is next empty
        self._lock = threading.Lock()

    def reserve(self, n: int, now: float) -> float:
        """Book n bytes; returns the monotonic time at which they may be sent."""
        with self._lock:
            self._tat = max(self._tat, now) + n / self.rate
            return self._tat - self.burst / self.rate

    def acquire(self, n: int) -> None:
        now = time.monotonic()
        wait = self.reserve(n, now) - now
        if wait > 0:
            time.sleep(wait)


class UplinkProxy:
    """Forwards GET/HEAD to `upstream` through one shared uplink of `bytes_per_second`.

    `total_bytes`, `bytes_by_path()` and `requests` (method, path, Range) describe what crossed it
    since the last `reset()`.
    """

    def __init__(self, upstream: str, bytes_per_second: float, *, burst: int = CHUNK) -> None:
        self.upstream = upstream.rstrip("/")
        self.bucket = SharedBucket(bytes_per_second, burst)
        self.chunk = CHUNK  # body bytes per write (and per count): smaller for finer rate measurements
        self.requests: list[tuple[str, str, str | None]] = []
        self._total = 0
        self._by_path: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                proxy._forward(self, send_body=False)

            def do_GET(self) -> None:
                proxy._forward(self, send_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, name="uplink-proxy", daemon=True).start()

    @property
    def rate(self) -> float:
        return self.bucket.rate

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def bytes_by_path(self) -> dict[str, int]:
        """Body bytes sent per request path (query string dropped)."""
        with self._lock:
            return dict(self._by_path)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._total = 0
            self._by_path.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> UplinkProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self) -> requests.Session:
        """One upstream session per handler thread: keep-alive without sharing a pool across threads."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.trust_env = False  # loopback only
        return s

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self._total += n
            self._by_path[path] += n

    def _forward(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        rng = handler.headers.get("Range")
        with self._lock:
            self.requests.append((handler.command, path, rng))
        headers = {k: v for k, v in handler.headers.items() if k.lower() in _FORWARD_HEADERS}
        try:
            up = self._session().request(handler.command, self.upstream + handler.path, headers=headers,
                                         stream=True, allow_redirects=True, timeout=30)
        except requests.RequestException as exc:
            handler.send_error(502, f"upstream: {exc}")
            return
        try:
            handler.send_response(up.status_code)
            for name in _PASS_HEADERS:
                if name in up.headers:
                    handler.send_header(name, up.headers[name])
            if "Content-Length" not in up.headers:
                handler.send_header("Connection", "close")  # the body's end is the connection's end
                handler.close_connection = True
            handler.end_headers()
            if send_body:
                self._send_body(handler, up, path)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client went away mid-body
        finally:
            up.close()

    def _send_body(self, handler: BaseHTTPRequestHandler, up: requests.Response, path: str) -> None:
        for chunk in up.iter_content(self.chunk):
            self.bucket.acquire(len(chunk))
            handler.wfile.write(chunk)
            self._count(path, len(chunk))

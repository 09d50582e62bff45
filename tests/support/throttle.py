"""A rate-limiting HTTP proxy on loopback: makes a fast local registry slow enough to crash mid-download."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

_PASS_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Docker-Content-Digest", "ETag")


class ThrottlingProxy:
    """Forwards GET/HEAD to `upstream`, sending at most `bytes_per_second` per connection.

    Records every request's path and Range header and the bytes it served, so tests
    can prove a resumed download asked only for what was missing.
    """

    def __init__(self, upstream: str, bytes_per_second: int) -> None:
        self.upstream, self.rate = upstream.rstrip("/"), bytes_per_second
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_served = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._forward(send_body=False)

            def do_GET(self) -> None:
                self._forward(send_body=True)

            def _forward(self, send_body: bool) -> None:
                rng = self.headers.get("Range")
                with proxy._lock:
                    proxy.requests.append((self.path, rng))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "accept", "authorization")}
                s = requests.Session()
                s.trust_env = False
                up = s.request(self.command, proxy.upstream + self.path, headers=headers, stream=True,
                               allow_redirects=True, timeout=30)
                self.send_response(up.status_code)
                for name in _PASS_HEADERS:
                    if name in up.headers:
                        self.send_header(name, up.headers[name])
                self.end_headers()
                if not send_body:
                    return
                try:
                    for chunk in up.iter_content(32 * 1024):
                        self.wfile.write(chunk)
                        with proxy._lock:
                            proxy.bytes_served += len(chunk)
                        time.sleep(len(chunk) / proxy.rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    up.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_served = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

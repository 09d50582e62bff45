"""A threaded loopback HTTP/1.0 server whose every answer a test writes: hostile upstreams, stand-ins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[BaseHTTPRequestHandler, str], None]


class ScriptedServer:
    """Serves `answer(handler, path)` for each request of `methods` on `host`:<free port>; `url` says where."""

    def __init__(self, host: str, answer: Answer, methods: tuple[str, ...] = ("GET",)) -> None:
        def handle(self: BaseHTTPRequestHandler) -> None:
            try:
                answer(self, self.path)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what a bounded reader does

        handler = type("Handler", (BaseHTTPRequestHandler,), {
            "log_message": lambda self, *args: None, **{f"do_{m}": handle for m in methods}})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

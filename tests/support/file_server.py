"""A plain HTTP file server on loopback, with or without Range support, that logs what it was asked."""

from __future__ import annotations

import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(SimpleHTTPRequestHandler):
    ranges = True
    required_token: str | None = None
    log: list[tuple[str, str | None]]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append((self.path, self.headers.get("Range")))
        if self.required_token and self.headers.get("Authorization") != f"Bearer {self.required_token}":
            self.send_error(401, "token required")
            return
        path = Path(self.translate_path(self.path.split("?", 1)[0]))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range", "")) if self.ranges else None
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if self.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class FileServer:
    """Serves `root` on 127.0.0.1:<free port>; `ranges=False` answers every GET with the whole file."""

    def __init__(self, root: Path, *, ranges: bool = True, token: str | None = None) -> None:
        self.log: list[tuple[str, str | None]] = []
        handler = type("Handler", (_Handler,), {"ranges": ranges, "required_token": token, "log": self.log})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

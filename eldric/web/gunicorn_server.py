"""Run a Flask app under gunicorn (gthread) from inside our own command, as the controller runs in production.

One worker process with a pool of threads: the registry keeps per-process state (its
import threads, janitor and SQLite connections), so it scales by threads, and the app
is built inside the worker (no preload) so those threads live where the requests are.
Files go out with `sendfile(2)` through gunicorn's `wsgi.file_wrapper`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flask import Flask
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from eldric.web.problems import error_body

MAX_REQUEST_LINE = 8190  # gunicorn's largest bound (default 4094): query strings of long descriptions fit


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answers (414 request line too long, 431, 400 bad request line...) in our error format.

    gunicorn writes them before the app sees the request, as HTML by default; clients and the
    OpenAPI document expect `{"code", "status", "message"}` JSON from every answer.
    """
    try:
        body = json.dumps(error_body(status_int, mesg or reason)).encode()
    except ValueError:  # a status http.HTTPStatus does not know
        body = json.dumps({"code": status_int, "status": reason, "message": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)


class _Embedded(BaseApplication):
    def __init__(self, build: Callable[[], Flask], options: dict) -> None:
        self.build, self.options = build, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.build()


def serve_with_gunicorn(build: Callable[[], Flask], *, host: str = "127.0.0.1", port: int = 0, threads: int = 32,
                        timeout: int = 300, name: str = "eldric", listen_fd: int | None = None) -> None:
    """Serve the app `build()` returns until SIGTERM/SIGINT; blocks (gunicorn's arbiter owns this process).

    `listen_fd`: serve a socket the parent already bound and listens on (`fd://N`),
    so the parent knows the port (even a free one it picked) before this process is up.
    """
    gunicorn_util.write_error = write_json_error  # this process serves only our app: every answer in one format
    _Embedded(build, {
        "bind": f"fd://{listen_fd}" if listen_fd is not None else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"),
        "worker_class": "gthread", "workers": 1, "threads": threads,
        # gthread answers the arbiter between requests, so a long download never looks like a hung worker.
        "timeout": timeout, "graceful_timeout": 30, "keepalive": 5, "proc_name": name,
        "accesslog": None, "control_socket_disable": True, "limit_request_line": MAX_REQUEST_LINE,
    }).run()

"""Run a Flask app under gunicorn (gthread) from inside our own command, as the controller runs in production.

One worker process with a pool of threads: the registry keeps per-process state (its
import threads, janitor and SQLite connections), so it scales by threads, and the app
is built inside the worker (no preload) so those threads live where the requests are.
Files go out with `sendfile(2)` through gunicorn's `wsgi.file_wrapper`.

The worker class is gthread guarded against slow clients (`GuardedThreadWorker`, the rules in
`eldric/web/client_limits.py`): a pool thread is given a connection only once its request head is
whole, and `/healthz` has two threads of its own, so it answers while the pool is busy.
"""

from __future__ import annotations

import json
import selectors
import time
from collections.abc import Callable
from concurrent import futures
from functools import partial

from flask import Flask
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import ThreadWorker

from eldric.web.client_limits import BodyClock, ClientLimits, WaitingHeads, is_head_complete, is_not_http
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


HEALTH_THREADS = 2
_HEALTH_LINES = (b"GET /healthz ", b"GET /healthz?", b"HEAD /healthz ", b"HEAD /healthz?")


class _PacedUnreader(SocketUnreader):
    """The socket reader of one connection: each read of a request body ends by the time its BodyClock says."""

    def __init__(self, sock, limits: ClientLimits) -> None:
        super().__init__(sock)
        self.limits = limits
        self.clock = BodyClock(limits, time.monotonic())

    def start_request(self) -> None:
        self.clock = BodyClock(self.limits, time.monotonic())

    def chunk(self, size_hint=None):
        left = self.clock.seconds_left(time.monotonic())
        if left <= 0:
            raise self.clock.error()
        before = self.sock.gettimeout()  # gunicorn's own drain of an unread body sets a shorter one
        self.sock.settimeout(left if before is None else min(left, before))
        try:
            data = super().chunk(size_hint)
        except TimeoutError:
            raise self.clock.error() from None
        finally:
            self.sock.settimeout(before)  # responses (sendfile) go out on a blocking socket as before
        self.clock.add(len(data), time.monotonic())
        return data


class GuardedThreadWorker(ThreadWorker):
    """gthread against slow clients: heads collected by the event loop, a bound per address, paced bodies, a health lane.

    Every path on which gthread hands a connection to a thread (accepted, kept alive and readable
    again, bytes read ahead) goes through `enqueue_req`; here it first waits in the event loop, without
    a thread, until its head is whole. TLS connections (not used by our services) are served as gthread does.
    """

    limits = ClientLimits()  # a subclass per service carries its own (guarded_worker)

    def init_process(self) -> None:
        self.heads = WaitingHeads(self.limits.heads_per_address)
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="health")
        cfg = self.cfg
        # Past gunicorn's own head limits the thread's parser answers 431/414 from what is buffered.
        self.max_head = max(64 << 10, cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4)
        super().init_process()  # runs the worker's loop

    def enqueue_req(self, conn) -> None:
        if self.cfg.is_ssl or getattr(conn, "head_ready", False):
            conn.head_ready = False
            pool = self.health_pool if getattr(conn, "is_health", False) else self.tpool
            fs = pool.submit(self.handle, conn)
            fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
            return
        conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser is not None else b"")
        conn.sock.setblocking(False)
        address = conn.client[0] if isinstance(conn.client, tuple) else conn.client
        for old in self.heads.add(conn, address, time.monotonic()):
            self._drop(old)
        if is_head_complete(conn.head) or is_not_http(conn.head):
            self._dispatch(conn)
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn, _sock) -> None:
        if conn.head is None:  # closed (or dispatched) earlier in this turn of the loop
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        searched = len(conn.head)
        conn.head += data
        if is_head_complete(conn.head, searched) or len(conn.head) > self.max_head or is_not_http(conn.head):
            self.poller.unregister(conn.sock)
            self._dispatch(conn)

    def _dispatch(self, conn) -> None:
        self.heads.remove(conn)
        conn.sock.setblocking(True)
        conn.init()  # the parser of a new connection (plain HTTP/1.1: no TLS handshake, no read here)
        if not isinstance(conn.parser.unreader, _PacedUnreader):
            conn.parser.unreader = _PacedUnreader(conn.sock, self.limits)
        conn.parser.unreader.start_request()
        conn.parser.unreader.unread(bytes(conn.head))
        conn.is_health = bytes(conn.head[:16]).lstrip(b"\r\n").startswith(_HEALTH_LINES)
        conn.head, conn.head_ready, conn.data_ready = None, True, True
        self.enqueue_req(conn)

    def _drop(self, conn) -> None:
        conn.head = None
        self.heads.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass  # not in the poller
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Called every turn of the loop: also close connections whose head is late (all of them when stopping)."""
        super().murder_pending()
        late = self.heads.waited_since(time.monotonic() - self.limits.head_seconds) if self.alive else self.heads.take_all()
        for conn in late:
            self._drop(conn)


def guarded_worker(limits: ClientLimits) -> type[GuardedThreadWorker]:
    """The worker class to give gunicorn (`worker_class`), with this service's limits."""
    return type("GuardedThreadWorker", (GuardedThreadWorker,), {"limits": limits})


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
                        timeout: int = 300, name: str = "eldric", listen_fd: int | None = None,
                        limits: ClientLimits = ClientLimits()) -> None:
    """Serve the app `build()` returns until SIGTERM/SIGINT; blocks (gunicorn's arbiter owns this process).

    `listen_fd`: serve a socket the parent already bound and listens on (`fd://N`),
    so the parent knows the port (even a free one it picked) before this process is up.
    `limits`: what a slow client may cost (eldric/web/client_limits.py).
    """
    gunicorn_util.write_error = write_json_error  # this process serves only our app: every answer in one format
    _Embedded(build, {
        "bind": f"fd://{listen_fd}" if listen_fd is not None else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"),
        "worker_class": guarded_worker(limits), "workers": 1, "threads": threads,
        # gthread answers the arbiter between requests, so a long download never looks like a hung worker.
        "timeout": timeout, "graceful_timeout": 30, "keepalive": 5, "proc_name": name,
        "accesslog": None, "control_socket_disable": True, "limit_request_line": MAX_REQUEST_LINE,
    }).run()

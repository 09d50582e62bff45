"""Slow clients for tests and benches: slowloris connections and timed requests (issue 21, finding 4)."""

from __future__ import annotations

import threading
import time
import socket

from testbed.processes import session


class Slowloris:
    """`count` connections to 127.0.0.1:port, each sending a request line, then one header line every `every` s.

    The head never ends. A connection the server closes is opened again (as an attacker would); `cut` counts them.
    """

    def __init__(self, port: int, count: int, every: float) -> None:
        self.port, self.count, self.every = port, count, every
        self.socks: list[socket.socket | None] = [None] * count
        self.cut = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: victim\r\n")
            return s
        except OSError:
            return None

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for i, s in enumerate(self.socks):
                if s is not None:
                    try:
                        s.sendall(f"X-Slow-{n}: {'a' * 8}\r\n".encode())
                        continue
                    except OSError:
                        s.close()
                        self.cut += 1
                self.socks[i] = self._open()
            n += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Slowloris:
        self.socks = [self._open() for _ in range(self.count)]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            if s is not None:
                s.close()


def timed_get(url: str, timeout: float = 2.0, **kw) -> tuple[int, float, bytes]:
    """(status, seconds, body) of one GET on a fresh connection; status 0 when it timed out or failed."""
    started = time.monotonic()
    try:
        r = session().get(url, timeout=timeout, **kw)
    except OSError:
        return 0, time.monotonic() - started, b""
    return r.status_code, time.monotonic() - started, r.content

"""Clients of one job's event stream for bench/fleet.py: each a thread reading the raw stream, noting how it ended."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass


@dataclass
class StreamResult:
    status: int | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    last_event: str | None = None
    tail: bytes = b""
    error: str | None = None

    @property
    def failure(self) -> str | None:
        if self.status != 200:
            return f"status {self.status} ({self.error})" if self.status else f"no answer ({self.kind})"
        if self.error:
            return f"cut ({self.kind})"
        if self.last_event != "done":
            reason = self.tail.rsplit(b"data: ", 1)[-1].strip().decode(errors="replace")[:80]
            return f"ended with {self.last_event} {reason}"
        return None

    @property
    def kind(self) -> str:
        return (self.error or "").split("(")[0]


class Streams:
    """`count` clients of one job's event stream, each in a thread reading raw bytes (chunked decoding by http.client)."""

    def __init__(self, port: int, job_id: str, count: int, max_seconds: float) -> None:
        self.path = f"/api/v1/models/pull-jobs/{job_id}/events?max_seconds={max_seconds:.0f}"
        self.port = port
        self.results = [StreamResult() for _ in range(count)]
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._follow, args=(r,), daemon=True) for r in self.results]
        for t in self.threads:
            t.start()

    @property
    def open_now(self) -> int:
        return sum(1 for r in self.results if r.opened_at is not None and r.closed_at is None)

    def opened_before(self, at: float) -> int:
        return sum(1 for r in self.results if r.opened_at is not None and r.opened_at <= at)

    @property
    def finished(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def _follow(self, result: StreamResult) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        with self._lock:
            self._conns.append(conn)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            result.status = resp.status
            if resp.status != 200:
                result.error = str(json.loads(resp.read(4096) or b"{}").get("message", ""))[:90]
                return
            edge = tail = b""
            while chunk := resp.read1(65536):
                seen = edge + chunk  # an event line may straddle two reads
                if result.opened_at is None and b"event: snapshot" in seen:
                    result.opened_at = time.time()
                at = seen.rfind(b"event: ")
                if at >= 0 and b"\n" in seen[at:]:
                    result.last_event = seen[at + 7:seen.index(b"\n", at)].decode(errors="replace")
                edge, tail = seen[-64:], (tail + chunk)[-512:]
            result.tail = tail
        except Exception as exc:  # a cut stream: IncompleteRead, reset, timeout
            result.error = repr(exc)[:200]
        finally:
            result.closed_at = time.time()
            conn.close()

    def close(self) -> None:
        """Cut what is still open (after the timeout): those count as not held."""
        with self._lock:
            for conn in self._conns:
                if conn.sock is not None:
                    try:
                        conn.sock.shutdown(2)
                    except OSError:
                        pass
        for t in self.threads:
            t.join(10)

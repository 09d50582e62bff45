"""What a client may cost an HTTP server of ours before it is cut off (issue 21, finding 4: slowloris).

gunicorn's gthread worker hands a connection to a pool thread as soon as its first byte arrives, and
the thread then blocks until the request head is whole: 48 connections sending one header line every
5 s held every thread of an agent and of the data node. The guarded worker
(`eldric.web.gunicorn_server.GuardedThreadWorker`) applies these rules instead:

- a head is collected by the worker's event loop, not by a thread, and must be whole within
  `head_seconds` of the connection starting to wait for it (accepted, or kept alive and sending again);
- at most `heads_per_address` connections from one client address wait for their head at once: one
  more closes the one of them that has waited longest. A head that arrives in one packet (every real
  client's) waits microseconds, so an attacker's connections are the ones that age and go;
- a body read must receive something every `body_idle_seconds` and keep, from the start of the body,
  `body_idle_seconds` ahead of `body_min_rate` (mod_reqtimeout's rule: each byte buys time), so a body
  holds a thread at most `body_idle_seconds + size / body_min_rate`.

Connections being served do not count against the per-address bound, so a peer fetching many ranges
at once, or a load balancer's pooled connections, are never refused for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from pydantic import Field
from werkzeug.exceptions import RequestTimeout

from eldric.core.settings import EnvSettings, Size

HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class ClientLimits:
    head_seconds: float = 10.0
    heads_per_address: int = 32
    body_idle_seconds: float = 30.0
    body_min_rate: int = 1024  # bytes/s


class HttpLimitsSettings(EnvSettings):
    """ELDRIC_HTTP_*: the slow-client limits of a service's HTTP server (the registry, the agent, the controller's gunicorn)."""

    http_head_seconds: float = Field(ClientLimits.head_seconds, gt=0, allow_inf_nan=False,
                                     description="a request head must arrive whole within this many seconds")
    http_heads_per_address: int = Field(ClientLimits.heads_per_address, ge=1,
                                        description="connections from one address waiting for their request head at once; "
                                                    "one more closes the one waiting longest")
    http_body_idle_seconds: float = Field(ClientLimits.body_idle_seconds, gt=0, allow_inf_nan=False,
                                          description="a request body that receives nothing this long ends the request (408)")
    http_body_min_rate: Size = Field(ClientLimits.body_min_rate,
                                     description="slowest request body in bytes/s (K/M suffixes), after its first idle period")

    def client_limits(self) -> ClientLimits:
        return ClientLimits(self.http_head_seconds, self.http_heads_per_address, self.http_body_idle_seconds,
                            self.http_body_min_rate)


class SlowBodyError(TimeoutError, RequestTimeout):
    """A request body slower than the limits: an OSError to upload code (the client is gone), a 408 to views."""


def is_head_complete(buf: bytes | bytearray, start: int = 0) -> bool:
    """Whether `buf` holds a whole request head; `start`: bytes before it were already searched."""
    return buf.find(HEAD_END, max(0, start - len(HEAD_END) + 1)) >= 0


def is_not_http(buf: bytes | bytearray) -> bool:
    """Whether `buf` starts with a byte no HTTP/1 request line starts with (a TLS ClientHello's 0x16, binary).

    Such a client gets gunicorn's 400 at once instead of waiting ELDRIC_HTTP_HEAD_SECONDS for a head
    that never comes: an https client pointed at a plain-http service then reads that answer as
    "wrong version number" and its hint says the service speaks plain http (issue 21, finding 4).
    """
    first = bytes(buf[:1])
    return bool(first) and not (first in b"\r\n" or 0x21 <= first[0] <= 0x7E)


class BodyClock:
    """When the next read of one request's body must have returned, from the bytes received so far."""

    def __init__(self, limits: ClientLimits, now: float) -> None:
        self.limits, self.started, self.last, self.received = limits, now, now, 0

    def seconds_left(self, now: float) -> float:
        idle = self.limits.body_idle_seconds
        by_rate = self.started + idle + self.received / self.limits.body_min_rate if self.limits.body_min_rate else float("inf")
        return min(self.last + idle, by_rate) - now

    def add(self, n: int, now: float) -> None:
        if n:
            self.received += n
            self.last = now

    def error(self) -> SlowBodyError:
        return SlowBodyError(f"the request body arrived slower than {self.limits.body_min_rate} bytes/s or stopped for "
                             f"{self.limits.body_idle_seconds:g} s ({self.received} bytes received)")


class WaitingHeads:
    """Connections waiting for their request head, oldest first, counted per client address."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._since: OrderedDict[object, tuple[Hashable, float]] = OrderedDict()  # conn -> (address, since)
        self._by_address: dict[Hashable, list[object]] = {}

    def __len__(self) -> int:
        return len(self._since)

    def add(self, conn: object, address: Hashable, now: float) -> list[object]:
        """Start `conn`'s wait; returns the connections of the same address to close (the longest waiting)."""
        self._since[conn] = (address, now)
        queue = self._by_address.setdefault(address, [])
        queue.append(conn)
        evicted = queue[:-self.per_address] if len(queue) > self.per_address else []
        for old in evicted:
            self.remove(old)
        return evicted

    def remove(self, conn: object) -> None:
        entry = self._since.pop(conn, None)
        if entry is not None:
            queue = self._by_address[entry[0]]
            queue.remove(conn)
            if not queue:
                del self._by_address[entry[0]]

    def waited_since(self, cutoff: float) -> list[object]:
        """Connections waiting since before `cutoff`, removed from the wait."""
        old = []
        for conn, (_, since) in self._since.items():
            if since >= cutoff:
                break
            old.append(conn)
        for conn in old:
            self.remove(conn)
        return old

    def take_all(self) -> list[object]:
        conns = list(self._since)
        for conn in conns:
            self.remove(conn)
        return conns

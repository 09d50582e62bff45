"""Bandwidth caps: a token bucket shared by the threads of one process.

A download (ELDRIC_MAX_DOWNLOAD_RATE) and the peer blob server
(ELDRIC_MAX_PEER_UPLOAD_RATE) call `take(n)` for every chunk they move; the call
sleeps until the bytes fit the rate. The bucket holds at most `burst_seconds` (0.1 s)
of rate, so the rate over any window of a few seconds stays within a few percent of
the cap (the promise is 5 % over 10 s), however many threads take from it. The
sockets of a capped download get small receive buffers (eldric.transfer.http.pace_receive),
so the link does not carry a burst the reader has not taken yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst_seconds: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("a rate cap must be positive")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()

    def take(self, n: int) -> None:
        """Wait until `n` bytes may pass. Takes may exceed the bucket: they go into debt, later ones wait it out."""
        if n <= 0:
            return
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


class NoLimit:
    """The bucket of an uncapped rate: takes never wait."""

    rate = 0.0

    def take(self, n: int) -> None:
        pass


def bucket(rate: float | None) -> TokenBucket | NoLimit:
    """A bucket for `rate` bytes/s; 0 or None means no cap."""
    return TokenBucket(rate) if rate else NoLimit()

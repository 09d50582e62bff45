"""A stand-in for the controller's Celery app in unit tests: records what `send_task` sends.

Like kombu's Redis publish batch, a batch sends its messages together when it ends, or none of
them (BatchPublishError) when one of their queues is `unreachable`; outside a batch a message to an
unreachable queue raises OperationalError. `down` refuses the connection itself.
"""

from __future__ import annotations

import contextlib

from kombu.exceptions import BatchPublishError, OperationalError


class FakeCelery:
    def __init__(self, unreachable: set[str] = frozenset(), down: bool = False) -> None:
        self.unreachable, self.down = set(unreachable), down
        self.sent: list[dict] = []  # {"name", "args", "queue", **options}, in the order they went out
        self.batches: list[int] = []  # messages per batch that went out
        self.singles: list[dict] = []  # messages sent one at a time (outside a batch)
        self._buffer: list[dict] | None = None

    @property
    def queues(self) -> list[str]:
        return [m["queue"] for m in self.sent]

    @contextlib.contextmanager
    def producer_or_acquire(self):
        if self.down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        yield self

    @contextlib.contextmanager
    def batch(self, max_size: int):
        self._buffer = []
        try:
            yield self
            assert len(self._buffer) * 2 <= max_size  # never flushed halfway
            if any(m["queue"] in self.unreachable for m in self._buffer):
                raise BatchPublishError("Redis publish batch failed; delivery is uncertain")
            self.sent += self._buffer
            self.batches.append(len(self._buffer))
        finally:
            self._buffer = None

    def send_task(self, name: str, args=None, queue: str | None = None, producer=None, **kw):
        assert producer is self  # one connection for all
        message = {"name": name, "args": args, "queue": queue, **kw}
        if self._buffer is not None:
            self._buffer.append(message)
        elif queue in self.unreachable:
            raise OperationalError("Error 32 Broken pipe")
        else:
            self.singles.append(message)
            self.sent.append(message)

"""One job's live progress in one controller process, prepared once for every stream that follows it.

At fleet size a job has 900 workers writing four times a second, and hundreds of operators'
streams may follow it. Work per stream must not grow with the workers: the feed (fed by the
event hub's one pub/sub connection) keeps the newest record per worker, and seals them into a
*batch* (the `progress` event's text, built once) every flush interval: 0.25 s, or longer
when more workers changed than `RECORD_BUDGET` records a second allow, so a job's event rate
stays bounded however big it is. Streams keep a cursor into the last `KEEP` batches and write
their prebuilt text; a stream further behind is told so (`end {"reason": "behind"}`) and
reconnects to a fresh snapshot.

The reads of the job are shared too (single flight): the snapshot a stream starts with (a read
started after its subscription, so no write falls in between), the periodic re-read that
brings the readers' derived states (offline, deadline and stale failures) into the batches, and
the final read when a record says the job ended (its `job_state`), whose `done` text every
stream sends.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from eldric.cluster.jobs import state as jobstate

FLUSH_SECONDS = 0.25
RECORD_BUDGET = 250  # records a second per job, at most, in progress events
KEEP = 64  # batches a stream may lag behind before it is ended


def format_event(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _mark(record: dict) -> tuple[float, object]:
    return float(record.get("updated_at") or 0), record.get("state")


def newer(record: dict, known: dict[str, tuple]) -> bool:
    """Whether `record` changes what is known of its worker (older pub/sub echoes do not)."""
    seen = known.get(record.get("worker"))
    mark = _mark(record)
    return seen is None or mark[0] > seen[0] or (mark[0] == seen[0] and mark[1] != seen[1])


@dataclass(frozen=True)
class Batch:
    seq: int
    opened_at: float  # when its first record arrived
    records: tuple[dict, ...]
    text: str


@dataclass(frozen=True)
class _Read:
    """A read of the job: when it started, its view, and that view's event text (built once)."""

    started: float
    view: dict | None
    text: str


class SharedRead:
    """One read of a job at a time, kept for the streams that can use it.

    A stream that finds no usable read waits for the one in flight, then reads itself only if
    that one is still not usable; streams that arrived meanwhile share that next read, so reads
    never pile up however many streams arrive. A failed read is not kept (its caller sees the error).
    """

    def __init__(self, event: str, clock: Callable[[], float]) -> None:
        self.event, self.clock = event, clock
        self.last: _Read | None = None
        self._reading = threading.Lock()

    def get(self, usable: Callable[[_Read], bool], read: Callable[[], dict | None]) -> _Read:
        last = self.last
        if last is not None and usable(last):
            return last
        with self._reading:
            last = self.last
            if last is not None and usable(last):
                return last
            started = self.clock()
            view = read()
            self.last = _Read(started, view, format_event(self.event, view) if view is not None else "")
            return self.last

    def forget(self, read: _Read) -> None:
        if self.last is read:
            self.last = None


class JobFeed:
    def __init__(self, job_id: str, *, flush: float = FLUSH_SECONDS, budget: int = RECORD_BUDGET, keep: int = KEEP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id, self.flush, self.budget, self.clock = job_id, flush, budget, clock
        self._cond = threading.Condition()
        self._pending: dict[str, dict] = {}
        self._opened_at = 0.0
        self._batches: deque[Batch] = deque(maxlen=keep)
        self.seq = 0
        self._known: dict[str, tuple] = {}
        self.broken = False
        self.final_seen = False  # a record said the job ended: the next read is the final one
        self._snapshot = SharedRead("snapshot", clock)
        self._final = SharedRead("done", clock)
        self._last_check = clock()
        self._checking = False

    # --- fed by the hub thread ------------------------------------------------------------------

    def put(self, record: dict) -> None:
        with self._cond:
            self._add(record)
            if record.get("job_state") in jobstate.JOB_FINAL:
                self.final_seen = True
                self._seal()  # the end is worth sending now
                self._cond.notify_all()

    def _add(self, record: dict) -> None:
        if not newer(record, self._known):
            return
        self._known[record["worker"]] = _mark(record)
        if not self._pending:
            self._opened_at = self.clock()
        self._pending.pop(record["worker"], None)  # keep write order: the newest last
        self._pending[record["worker"]] = record

    def seal_due(self) -> None:
        """Seal the pending records into a batch once they waited a flush interval (longer for many)."""
        with self._cond:
            if self._pending and self.clock() - self._opened_at >= max(self.flush, len(self._pending) / self.budget):
                self._seal()
                self._cond.notify_all()

    def _seal(self) -> None:
        if not self._pending:
            return
        records = tuple(self._pending.values())
        self._pending = {}
        self.seq += 1
        self._batches.append(Batch(self.seq, self._opened_at, records, format_event("progress", {"workers": list(records)})))

    def mark_broken(self) -> None:
        with self._cond:
            self.broken = True
            self._cond.notify_all()

    # --- read by the streams --------------------------------------------------------------------

    def wait(self, cursor: int, timeout: float) -> list[Batch] | None:
        """Batches after `cursor` (waiting up to `timeout` for one); None when the stream fell too far behind."""
        with self._cond:
            if self.seq <= cursor and not self.broken and not self._final_ready():
                self._cond.wait(timeout)
            if self.seq <= cursor:
                return []
            if not self._batches or self._batches[0].seq > cursor + 1:
                return None
            return [b for b in self._batches if b.seq > cursor]

    def _final_ready(self) -> bool:
        return self._final.last is not None

    def snapshot(self, after: float, read: Callable[[], dict | None]) -> _Read:
        """A read of the job that started at or after `after` (monotonic): shared by streams opening together."""
        return self._snapshot.get(lambda r: r.started >= after, read)

    def final(self, read: Callable[[], dict | None]) -> _Read:
        """The read after a record said the job ended: one for every stream of this process."""
        read_once = self._final.get(lambda r: True, read)
        with self._cond:
            self._cond.notify_all()  # streams waiting for batches send `done` now
        return read_once

    def not_final_yet(self, read: _Read) -> None:
        """The final read showed a job still running (a record's job_state ran ahead of the derived view)."""
        with self._cond:
            self._final.forget(read)
            self.final_seen = False

    def recheck_due(self, every: float) -> bool:
        """True for one caller once `every` seconds passed since the last re-read; it must call `rechecked`."""
        with self._cond:
            if self._checking or self.clock() - self._last_check < every:
                return False
            self._checking = True
            return True

    def rechecked(self, view: dict | None) -> None:
        """Feed a re-read: derived states (offline, deadline or stale failures) go into the next batch."""
        with self._cond:
            self._checking = False
            self._last_check = self.clock()
            if view is None:
                return
            for w in view["workers"]:
                if self._known.get(w["worker"], (0, None))[1] != w.get("state"):
                    self._known.pop(w["worker"], None)
                    self._add(w)
            if view["state"] in jobstate.JOB_FINAL:
                self.final_seen = True
            if self._pending:
                self._seal()
            self._cond.notify_all()

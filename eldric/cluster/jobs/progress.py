"""One worker's progress on its part of a job, written through the job store's one write path."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import STOPS_WORK, JobEndedError, write_record
from eldric.core.errors import cap_text

log = logging.getLogger(__name__)


class Progress:
    """One worker's part of a job, reported through `write_record` at most every `min_interval` seconds.

    State changes are always written. Once the store refuses a write (the part was ended
    elsewhere: deadline, reaper, cancel), `ended_elsewhere` is set and later writes are
    skipped; with `stop_when_ended`, `add_bytes` then raises JobEndedError, so a download
    stops within one progress interval of a cancel or skip. `client=None` keeps the record local; `on_write` sees every write either way;
    with `tolerate_redis_errors` a Redis failure is logged instead of raised (the registry's
    imports and the agents' pulls must not fail because Redis blinked), and the periodic
    writes pause for `quiet_after_error` seconds: the writer's thread (a download's) then
    waits for a Redis that does not answer at most once per pause, not on every write.
    """

    def __init__(self, client: redis.Redis | None, job_id: str, worker_id: str, *, min_interval: float = 0.25,
                 clock: Callable[[], float] = time.time, on_write: Callable[[dict], None] = lambda record: None,
                 tolerate_redis_errors: bool = False, quiet_after_error: float = 10.0,
                 stop_when_ended: bool = False, before_finish: Callable[[], None] | None = None) -> None:
        self.client, self.job_id, self.worker_id = client, job_id, worker_id
        # Run before the completed record is written: the agent publishes its inventory there, so a client
        # that sees the part completed (Ollama's pull stream ends `success`) finds the model in /api/tags.
        self.before_finish = before_finish
        self.stop_when_ended = stop_when_ended
        self.min_interval, self.clock, self.on_write = min_interval, clock, on_write
        self.tolerate_redis_errors, self.quiet_after_error = tolerate_redis_errors, quiet_after_error
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last_done = 0
        self._quiet_until = 0.0
        self.ended_elsewhere: str | None = None
        self.record: dict = self._load() or jobstate.new_record(clock())

    def _load(self) -> dict | None:
        if self.client is None:
            return None
        try:
            raw = self.client.hget(keys.job_workers(self.job_id), self.worker_id)
        except redis.RedisError:
            if not self.tolerate_redis_errors:
                raise
            return None
        return json.loads(raw) if raw else None

    def update(self, *, force: bool = False, **fields: object) -> None:
        """Merge `fields` into the record; write if the state changed or enough time passed."""
        with self._lock:
            changed = fields.get("state", self.record["state"]) != self.record["state"]
            self.record.update(fields)
            self._maybe_write(force or changed)

    def start(self, total: int = 0, source: str | None = None, status: str | None = None) -> None:
        fields = {"status": status} if status else {}
        self.update(force=True, state=jobstate.PULLING, started_at=self.record.get("started_at") or self.clock(),
                    total=total, completed=0, percent=0.0, error=None, source=source, resumed_bytes=0, **fields)

    def add_bytes(self, n: int) -> None:
        """Count `n` more bytes; with `stop_when_ended`, raise JobEndedError once the part was ended elsewhere."""
        with self._lock:
            self.record["completed"] = int(self.record.get("completed") or 0) + n
            self._maybe_write(False)
        self.check_ended()

    def add_resumed(self, n: int) -> None:
        """`n` bytes of a resumed partial download: done (`completed`), but not moved now (`resumed_bytes`)."""
        with self._lock:
            self.record["resumed_bytes"] = int(self.record.get("resumed_bytes") or 0) + n
        self.add_bytes(n)

    def moved(self) -> int:
        """Bytes counted so far that crossed the network: `completed` less what was found on disk."""
        with self._lock:
            return jobstate.network_bytes({**self.record, "state": jobstate.PULLING, "transferred": None})

    def check_ended(self) -> None:
        if self.stop_when_ended and self.ended_elsewhere in STOPS_WORK:
            raise JobEndedError(f"this worker's part of job {self.job_id} was {self.ended_elsewhere} elsewhere")

    def finish(self, **fields: object) -> None:
        if self.before_finish is not None:
            try:
                self.before_finish()
            except Exception as exc:  # noqa: BLE001 - the record still ends completed; the inventory follows later
                log.warning("job %s: could not run the step before completing: %s", self.job_id, exc)
        total = int(fields.pop("total", self.record.get("total") or 0))
        final = {"status": "success", "finished_at": self.clock(), "layer": None, "error": None, **fields}
        self.update(force=True, state=jobstate.COMPLETED, completed=total, total=total, **final)

    def fail(self, reason: str) -> None:
        reason = cap_text(reason)  # a worker's error is a few KiB at most, whatever an upstream sent
        self.update(force=True, state=jobstate.FAILED, status=reason, error=reason,
                    finished_at=self.clock(), layer=None)

    def retrying(self, reason: str) -> None:
        self.update(force=True, state=jobstate.RETRYING, status=cap_text(reason), error=None)

    def flush(self) -> None:
        with self._lock:
            self._maybe_write(True)

    def detach(self, reason: str) -> None:
        """Stop writing (the job is gone, or another runner owns it); no write is in flight on return."""
        with self._lock:
            self.ended_elsewhere = reason

    def _maybe_write(self, force: bool) -> None:
        now = self.clock()
        if self.ended_elsewhere or (not force and (now - self._last_write < self.min_interval
                                                   or now < self._quiet_until)):
            return
        rec = self.record
        done = jobstate.network_bytes(rec)  # the rate is the network's: bytes found on disk arrive at once
        if rec.get("state") in jobstate.ACTIVE and self._last_write:
            rec["rate"] = round(max(0, done - self._last_done) / max(1e-3, now - self._last_write), 1)
        else:
            rec.pop("rate", None)
        self._last_write, self._last_done = now, done
        rec["percent"] = jobstate.percent(int(rec.get("completed") or 0), int(rec.get("total") or 0))
        rec["updated_at"] = now
        self.on_write(rec)
        if self.client is None:
            return
        try:
            written = write_record(self.client, self.job_id, self.worker_id, rec)
        except redis.RedisError as exc:
            if not self.tolerate_redis_errors:
                raise
            self._quiet_until = self.clock() + self.quiet_after_error
            log.warning("could not report progress of job %s to Redis: %s; next try in %.0f s",
                        self.job_id, exc, self.quiet_after_error)
            return
        if not written.accepted:
            self.ended_elsewhere = written.state
            log.warning("job %s: %s's part already ended (%s); this report was not stored",
                        self.job_id, self.worker_id, written.state)

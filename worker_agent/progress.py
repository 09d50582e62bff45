"""Throttled progress reporting of one worker's part of a job into Redis.

Writes at most one record per `min_interval` (plus every state change), so
hundreds of workers pulling at once cost Redis a few writes per second each.
Each write also publishes on the job's channel for live views.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import redis

from eldric.cluster import jobstate
from eldric.cluster import keys


class Progress:
    def __init__(self, client: redis.Redis, job_id: str, worker_id: str, *,
                 min_interval: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        self.client, self.job_id, self.worker_id = client, job_id, worker_id
        self.min_interval, self.clock = min_interval, clock
        self._lock = threading.Lock()
        self._last_write = 0.0
        self.record: dict = self._load() or jobstate.new_record(clock())

    def _load(self) -> dict | None:
        raw = self.client.hget(keys.job_workers(self.job_id), self.worker_id)
        return json.loads(raw) if raw else None

    def update(self, *, force: bool = False, **fields) -> None:
        """Merge `fields` into the record; write if the state changed or enough time passed."""
        with self._lock:
            changed = fields.get("state", self.record["state"]) != self.record["state"]
            self.record.update(fields)
            self._maybe_write(force or changed)

    def start(self, total: int = 0, source: str | None = None) -> None:
        now = self.clock()
        self.update(force=True, state=jobstate.PULLING, started_at=self.record.get("started_at") or now,
                    total=total, completed=0, percent=0.0, error=None, source=source)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.record["completed"] = int(self.record.get("completed") or 0) + n
            self._maybe_write(False)

    def finish(self, **fields) -> None:
        total = int(fields.pop("total", self.record.get("total") or 0))
        final = {"status": "success", "finished_at": self.clock(), "layer": None, "error": None, **fields}
        self.update(force=True, state=jobstate.COMPLETED, completed=total, total=total, **final)

    def fail(self, reason: str) -> None:
        self.update(force=True, state=jobstate.FAILED, status=reason, error=reason,
                    finished_at=self.clock(), layer=None)

    def flush(self) -> None:
        with self._lock:
            self._maybe_write(True)

    def _maybe_write(self, force: bool) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        rec = self.record
        rec["percent"] = jobstate.percent(int(rec.get("completed") or 0), int(rec.get("total") or 0))
        rec["updated_at"] = now
        payload = json.dumps(rec)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.job_workers(self.job_id), self.worker_id, payload)
        pipe.publish(keys.job_events(self.job_id), json.dumps({"worker": self.worker_id, **rec}))
        pipe.execute()


def mark_failed(client: redis.Redis, job_id: str, worker_id: str, reason: str) -> None:
    Progress(client, job_id, worker_id).fail(reason)


def mark_retrying(client: redis.Redis, job_id: str, worker_id: str, reason: str) -> None:
    Progress(client, job_id, worker_id).update(force=True, state=jobstate.RETRYING, status=reason, error=None)

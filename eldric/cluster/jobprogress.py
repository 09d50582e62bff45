"""The registry's part of a cluster job, reported in Redis the way agents report theirs.

A URL import is a job like a pull (controller.jobs creates it with targets
["registry"]); the registry writes its per-worker progress record under
eldric.cluster.keys.job_workers(job_id) in eldric.cluster.jobstate's record shape, and keeps
eldric.cluster.keys.worker_alive("registry") fresh so readers do not take it for an
offline worker. Redis trouble is logged, never raised: progress is a report, and
the import itself must not fail because Redis blinked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from eldric.cluster import jobstate
from eldric.cluster import keys

log = logging.getLogger(__name__)

WORKER_ID = "registry"


class JobProgress:
    """A throttled per-worker record; `client=None` keeps it local (on_write still sees it)."""

    def __init__(self, client: redis.Redis | None, job_id: str, worker_id: str = WORKER_ID, *,
                 min_interval: float = 0.5, clock: Callable[[], float] = time.time,
                 on_write: Callable[[dict], None] = lambda record: None) -> None:
        self.client, self.job_id, self.worker_id = client, job_id, worker_id
        self.on_write = on_write
        self.min_interval, self.clock = min_interval, clock
        self.record = jobstate.new_record(clock())
        self._last_write = 0.0
        self._lock = threading.Lock()

    def update(self, *, force: bool = False, **fields: object) -> None:
        with self._lock:
            changed = "state" in fields and fields["state"] != self.record["state"]
            self.record.update(fields)
            now = self.clock()
            if force or changed or now - self._last_write >= self.min_interval:
                self._last_write = now
                self._write(now)

    def start(self, source: str) -> None:
        self.update(state=jobstate.PULLING, started_at=self.record.get("started_at") or self.clock(),
                    source=source, status="starting the import", error=None)

    def finish(self, status: str) -> None:
        total = int(self.record.get("total") or 0)
        self.update(state=jobstate.COMPLETED, status=status, completed=total, finished_at=self.clock(),
                    layer=None, error=None)

    def fail(self, reason: str) -> None:
        self.update(state=jobstate.FAILED, status=reason, error=reason, finished_at=self.clock(), layer=None)

    def _write(self, now: float) -> None:
        rec = self.record
        rec["percent"] = jobstate.percent(int(rec.get("completed") or 0), int(rec.get("total") or 0))
        rec["updated_at"] = now
        self.on_write(rec)
        if self.client is None:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(keys.job_workers(self.job_id), self.worker_id, json.dumps(rec))
            pipe.publish(keys.job_events(self.job_id), json.dumps({"worker": self.worker_id, **rec}))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not report progress of job %s to Redis: %s", self.job_id, exc)


class Heartbeat(threading.Thread):
    """Keeps `worker_alive(worker_id)` set while the registry runs (a TTL key, as agents do)."""

    def __init__(self, client: redis.Redis, worker_id: str = WORKER_ID, ttl: float = 30.0) -> None:
        super().__init__(name="registry-heartbeat", daemon=True)
        self.client, self.worker_id, self.ttl = client, worker_id, ttl
        self.stopped = threading.Event()

    def beat(self) -> None:
        try:
            self.client.set(keys.worker_alive(self.worker_id), time.time(), ex=max(1, int(self.ttl)))
        except redis.RedisError as exc:
            log.warning("registry heartbeat to Redis failed: %s", exc)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.ttl / 3)

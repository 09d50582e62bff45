"""Keeps the registry's online mark fresh, so readers do not take its import jobs for an offline worker."""

from __future__ import annotations

import logging
import threading

import redis

from eldric.cluster import workers
from eldric.cluster.jobs.store import REGISTRY_WORKER_ID

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Keeps the online mark of `worker_id` set while the registry runs (a TTL key, as agents do)."""

    def __init__(self, client: redis.Redis, worker_id: str = REGISTRY_WORKER_ID, ttl: float = 30.0) -> None:
        super().__init__(name="registry-heartbeat", daemon=True)
        self.client, self.worker_id, self.ttl = client, worker_id, ttl
        self.stopped = threading.Event()

    def beat(self) -> None:
        try:
            workers.mark_online(self.client, self.worker_id, self.ttl)
        except redis.RedisError as exc:
            log.warning("registry heartbeat to Redis failed: %s", exc)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.ttl / 3)

"""Keeps the registry's `worker_alive` key fresh, so readers do not take its import jobs for an offline worker."""

from __future__ import annotations

import logging
import threading
import time

import redis

from eldric.cluster import keys
from eldric.cluster.jobstore import REGISTRY_WORKER_ID

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Keeps `worker_alive(worker_id)` set while the registry runs (a TTL key, as agents do)."""

    def __init__(self, client: redis.Redis, worker_id: str = REGISTRY_WORKER_ID, ttl: float = 30.0) -> None:
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

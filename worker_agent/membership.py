"""The agent's heartbeat: keeps its online mark fresh and registers again when Redis lost its record."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import redis

from eldric.cluster import workers

log = logging.getLogger(__name__)


def beat(client: redis.Redis, worker_id: str, data_dir: Path, ttl: float, info: dict | None = None) -> bool:
    """Refresh the online mark; re-register from `info` when Redis lost the record (a restart
    without persistence). Returns True when it had to re-register."""
    if not workers.heartbeat(client, worker_id, ttl, {"free_disk": free_disk(data_dir)}) and info is not None:
        workers.register(client, info, ttl)
        return True
    return False


def free_disk(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


class Heartbeat(threading.Thread):
    """Refreshes the online mark every `interval`; survives Redis outages by retrying."""

    def __init__(self, client: redis.Redis, worker_id: str, data_dir: Path, interval: float,
                 info: dict | None = None, on_reregister=None) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.worker_id, self.data_dir, self.interval = client, worker_id, data_dir, interval
        self.info, self.on_reregister = info, on_reregister
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if beat(self.client, self.worker_id, self.data_dir, ttl=self.interval * 3, info=self.info):
                    log.warning("Redis had lost this worker's record (restarted?); registered again")
                    if self.on_reregister:
                        self.on_reregister()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()

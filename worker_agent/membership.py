"""The agent's heartbeat: keeps its online mark fresh, refreshes what the worker reports about itself
(its capacity facts: labels, disk, GPUs) and registers again when Redis lost its record."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import redis

from eldric.cluster import workers
from eldric.cluster.capacity import Gpu, record_fields

log = logging.getLogger(__name__)


Facts = Callable[[], dict]


def beat(client: redis.Redis, worker_id: str, data_dir: Path, ttl: float, info: dict | None = None,
         facts: Facts | None = None) -> bool:
    """Refresh the online mark and the record fields `facts()` gives (default: the free disk of
    `data_dir`); re-register from `info` with them when Redis lost the record (a restart without
    persistence). Returns True when it had to re-register."""
    fresh = facts() if facts is not None else {"free_disk": free_disk(data_dir)}
    if not workers.heartbeat(client, worker_id, ttl, fresh) and info is not None:
        workers.register(client, {**info, **fresh}, ttl)
        return True
    return False


def free_disk(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def store_disk(path: Path) -> tuple[int | None, int | None]:
    """(free, total) bytes of the filesystem holding `path` (its nearest existing parent while the
    store is not created yet); (None, None) when it cannot be read: unknown, not full."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                usage = shutil.disk_usage(candidate)
            except OSError:
                return None, None
            return usage.free, usage.total
    return None, None


def capacity_facts(store_dir: Path, labels: dict[str, str], gpus: Callable[[], list[Gpu]]) -> dict:
    """The record fields of the worker's labels, its model store's disk and its GPUs (eldric.cluster.capacity)."""
    free, total = store_disk(store_dir)
    try:
        found = gpus()
    except Exception as exc:  # noqa: BLE001 - a probe should not raise; if one does, the heartbeat still beats
        log.warning("reading GPUs failed: %s", exc)
        found = []
    return record_fields(labels, free, total, found)


class Heartbeat(threading.Thread):
    """Refreshes the online mark every `interval`; survives Redis outages by retrying."""

    def __init__(self, client: redis.Redis, worker_id: str, data_dir: Path, interval: float,
                 info: dict | None = None, on_reregister=None, facts: Facts | None = None) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.worker_id, self.data_dir, self.interval = client, worker_id, data_dir, interval
        self.info, self.on_reregister, self.facts = info, on_reregister, facts
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if beat(self.client, self.worker_id, self.data_dir, ttl=self.interval * 3, info=self.info,
                         facts=self.facts):
                    log.warning("Redis had lost this worker's record (restarted?); registered again")
                    if self.on_reregister:
                        self.on_reregister()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()

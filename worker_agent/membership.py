"""The agent's place in the cluster: registration, heartbeat, inventory in Redis."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import redis

from eldric.cluster import keys

log = logging.getLogger(__name__)


def register(client: redis.Redis, info: dict, ttl: float) -> None:
    """Write the worker's record and mark it online (a TTL key the heartbeat refreshes)."""
    now = time.time()
    record = {**info, "backends": json.dumps(list(info.get("backends", []))),
              "registered_at": now, "last_seen": now}
    pipe = client.pipeline()
    pipe.sadd(keys.WORKERS, info["id"])
    pipe.hset(keys.worker(info["id"]), mapping={k: str(v) for k, v in record.items()})
    pipe.set(keys.worker_alive(info["id"]), now, ex=max(1, int(ttl)))
    pipe.execute()


def beat(client: redis.Redis, worker_id: str, data_dir: Path, ttl: float, info: dict | None = None) -> bool:
    """Refresh the online mark; re-register from `info` when Redis lost the record (a restart
    without persistence). Returns True when it had to re-register."""
    now = time.time()
    pipe = client.pipeline()
    # Registered means in the set with the fields register() writes: after Redis restarted empty,
    # an inventory report (publish_inventory's `inventory_at`) may recreate a bare hash first.
    pipe.sismember(keys.WORKERS, worker_id)
    pipe.hexists(keys.worker(worker_id), "registered_at")
    pipe.hset(keys.worker(worker_id), mapping={"last_seen": now, "free_disk": free_disk(data_dir)})
    pipe.set(keys.worker_alive(worker_id), now, ex=max(1, int(ttl)))
    in_set, has_record = pipe.execute()[:2]
    if not (in_set and has_record) and info is not None:
        register(client, info, ttl)
        return True
    return False


def free_disk(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def go_offline(client: redis.Redis, worker_id: str) -> None:
    client.delete(keys.worker_alive(worker_id))


def publish_inventory(client: redis.Redis, worker_id: str, models: list[dict]) -> None:
    """Replace the worker's inventory with `models` in one transaction."""
    pipe = client.pipeline()
    pipe.delete(keys.worker_models(worker_id))
    if models:
        pipe.hset(keys.worker_models(worker_id), mapping={m["name"]: json.dumps(m) for m in models})
    pipe.hset(keys.worker(worker_id), "inventory_at", time.time())
    pipe.execute()


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

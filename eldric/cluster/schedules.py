"""The Celery beat schedule (`eldric beat`), read once from ELDRIC_* variables.

Beat only enqueues: every entry goes to the shared `maintenance` queue, which every
agent consumes, so exactly one live agent runs each message. Task arguments carry
the settings the work needs (stale timeout, deadline), so the agents need no extra
configuration. RedBeat keeps the schedule in Redis and holds a lock there: when two
beats run, one schedules and the other waits to take over.
"""

from __future__ import annotations

import redis
from pydantic import Field
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.keys import REDBEAT_PREFIX
from eldric.cluster.queues import (
    MAINTENANCE_QUEUE,
    TASK_CLEAN_PARTIALS_ALL,
    TASK_EVICT_ALL,
    TASK_GC_SWEEP_ALL,
    TASK_INVENTORY_SYNC_ALL,
    TASK_MIRROR_CHECK_UPDATES,
    TASK_PINS_CHECK_UPDATES,
    TASK_PINS_RECONCILE,
    TASK_REAP_STALE_JOBS,
    TASK_SWEEP_DEBRIS_ALL,
)
from eldric.cluster.redisconn import redbeat_settings, redis_client
from eldric.cluster.shared_settings import RedisSettings
from eldric.core.settings import Size

RETRY_SECONDS = 0.5  # pause between RedBeat's attempts to reach Redis again


class ScheduleSettings(RedisSettings):
    """Every beat setting; 0 disables a scheduled job."""

    log_level: str = Field("INFO", description="log level of beat")
    inventory_sync_seconds: float = Field(300.0, ge=0, description="every worker re-reports its local models this often")
    reap_seconds: float = Field(30.0, ge=0, description="how often unfinished jobs of silent workers are failed")
    pin_reconcile_seconds: float = Field(60.0, ge=0, description="how often pinned models are pulled where missing (replicas: until N serve)")
    pin_update_seconds: float = Field(3600.0, ge=0, description="how often auto-update pins ask the registry where their tag points")
    pin_retry_seconds: float = Field(600.0, ge=0, description="after a failed pin pull on a worker, wait this long before the next")
    stale_worker_seconds: float = Field(120.0, ge=0, description="a worker offline and silent this long mid-pull is failed (as the controller)")
    offline_grace_seconds: float = Field(300.0, ge=0, description="a worker offline when a job starts, or this long during it, is skipped (as the controller)")
    placement_reserve_bytes: Size = Field(1 << 30, description="free disk a pin's placement leaves on every worker (as the controller)")
    job_deadline_seconds: float = Field(6 * 3600.0, ge=0, description="deadline of the pull jobs scheduled work starts (as the controller)")
    lock_seconds: float = Field(30.0, ge=3, validation_alias="ELDRIC_BEAT_LOCK_SECONDS",
                                description="a second beat takes over this long after the scheduling one died")
    partial_clean_seconds: float = Field(3600.0, ge=0, description="how often every worker deletes partial downloads of ended jobs and stale ones")
    partial_max_age_seconds: float = Field(86400.0, gt=0, description="partial downloads, lock and temp files untouched this long are deleted")
    debris_sweep_seconds: float = Field(3600.0, ge=0, description="how often every inference and cloud worker looks for backend files no model of it owns")
    eviction_seconds: float = Field(60.0, ge=0, description="how often every inference and cloud worker evicts LRU models above its high disk watermark")
    gc_sweep_seconds: float = Field(3600.0, ge=0, description="how often every worker sweeps its garbage and removes what outlived its grace")
    mirror_update_seconds: float = Field(3600.0, ge=0, description="how often the data node's mirror asks upstream whether its cached tags moved")
    registry_url: str = Field("http://127.0.0.1:8892", description="the data node's registry, whose mirror the update check asks (as the controller)")

    @property
    def loop_seconds(self) -> float:
        """Longest beat sleep: well inside the lock timeout, since each tick renews the lock."""
        return max(1.0, min(5.0, self.lock_seconds / 3))


def beat_schedule(s: ScheduleSettings) -> dict[str, dict]:
    """Celery `beat_schedule`: name -> task, period, JSON-primitive args, queue."""
    entries = {
        "inventory-sync": (TASK_INVENTORY_SYNC_ALL, s.inventory_sync_seconds, []),
        "reap-stale-jobs": (TASK_REAP_STALE_JOBS, s.reap_seconds, [s.stale_worker_seconds, s.offline_grace_seconds]),
        "pins-reconcile": (TASK_PINS_RECONCILE, s.pin_reconcile_seconds,
                           [s.job_deadline_seconds, s.pin_retry_seconds, s.offline_grace_seconds,
                            s.placement_reserve_bytes]),
        "pins-check-updates": (TASK_PINS_CHECK_UPDATES, s.pin_update_seconds,
                               [s.job_deadline_seconds, s.pin_retry_seconds]),
        "clean-partials": (TASK_CLEAN_PARTIALS_ALL, s.partial_clean_seconds, [s.partial_max_age_seconds]),
        "sweep-debris": (TASK_SWEEP_DEBRIS_ALL, s.debris_sweep_seconds, []),
        "evict": (TASK_EVICT_ALL, s.eviction_seconds, []),
        "gc-sweep": (TASK_GC_SWEEP_ALL, s.gc_sweep_seconds, [s.partial_max_age_seconds]),
        "mirror-check-updates": (TASK_MIRROR_CHECK_UPDATES, s.mirror_update_seconds, [s.registry_url]),
    }
    return {
        name: {"task": task, "schedule": float(period), "args": args,
               # A message nobody took within one period is dropped: the next one replaces it.
               "options": {"queue": MAINTENANCE_QUEUE, "expires": float(period)}}
        for name, (task, period, args) in entries.items() if period > 0
    }


def beat_config(redis_url: str, s: ScheduleSettings) -> dict:
    """Everything `eldric beat` sets on its Celery app."""
    return {
        **celery_config(redis_url),
        "beat_schedule": beat_schedule(s),
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": s.loop_seconds,
        **redbeat_settings(redis_url),
        "redbeat_key_prefix": REDBEAT_PREFIX,
        "redbeat_lock_timeout": int(s.lock_seconds),
    }


def redbeat_client(redis_url: str, s: ScheduleSettings) -> redis.Redis:
    """RedBeat's Redis client, given to it in place of its own (`eldric beat` sets `app.redbeat_redis`).

    RedBeat extends its lock on every tick through this client and beat exits on the first
    error, so a Redis failover (seconds while the sentinels elect a new master) or a restart would
    stop the schedule until a supervisor starts beat again. This client retries a lost connection
    for about the lock time (ELDRIC_BEAT_LOCK_SECONDS): longer, and a standby beat takes over anyway.
    redis-py retries the connect (where a failover shows as MasterNotFoundError, a ConnectionError) and the
    command alike; a constant pause makes the budget a time, not a count.
    """
    retry = Retry(ConstantBackoff(RETRY_SECONDS), retries=max(3, int(s.lock_seconds / RETRY_SECONDS)))
    return redis_client(redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2, retry=retry)

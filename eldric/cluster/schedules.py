"""The Celery beat schedule (`eldric beat`), read once from ELDRIC_* variables.

Beat only enqueues: every entry goes to the shared `maintenance` queue, which every
agent consumes, so exactly one live agent runs each message. Task arguments carry
the settings the work needs (stale timeout, deadline), so the agents need no extra
configuration. RedBeat keeps the schedule in Redis and holds a lock there: when two
beats run, one schedules and the other waits to take over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.keys import PREFIX
from eldric.cluster.queues import (
    MAINTENANCE_QUEUE,
    TASK_INVENTORY_SYNC_ALL,
    TASK_PINS_CHECK_UPDATES,
    TASK_PINS_RECONCILE,
    TASK_REAP_STALE_JOBS,
)

REDBEAT_PREFIX = f"{PREFIX}:redbeat:"  # RedBeat's keys: <prefix>:schedule, <prefix>:lock, <prefix><entry>


def _setting(env: str, meaning: str) -> dict:
    return {"env": env, "help": meaning}


@dataclass(frozen=True)
class ScheduleSettings:
    """Every beat setting; 0 disables a scheduled job."""
    inventory_sync_seconds: float = field(default=300.0, metadata=_setting(
        "ELDRIC_INVENTORY_SYNC_SECONDS", "every worker re-reports its local models this often"))
    reap_seconds: float = field(default=30.0, metadata=_setting(
        "ELDRIC_REAP_SECONDS", "how often unfinished jobs of silent workers are failed"))
    pin_reconcile_seconds: float = field(default=60.0, metadata=_setting(
        "ELDRIC_PIN_RECONCILE_SECONDS", "how often pinned models are pulled to eligible workers lacking them"))
    pin_update_seconds: float = field(default=3600.0, metadata=_setting(
        "ELDRIC_PIN_UPDATE_SECONDS", "how often auto-update pins ask the registry where their tag points"))
    pin_retry_seconds: float = field(default=600.0, metadata=_setting(
        "ELDRIC_PIN_RETRY_SECONDS", "after a failed pin pull on a worker, wait this long before the next"))
    stale_worker_seconds: float = field(default=120.0, metadata=_setting(
        "ELDRIC_STALE_WORKER_SECONDS", "a worker offline and silent this long mid-pull is failed (as the controller)"))
    job_deadline_seconds: float = field(default=6 * 3600.0, metadata=_setting(
        "ELDRIC_JOB_DEADLINE_SECONDS", "deadline of the pull jobs scheduled work starts (as the controller)"))
    lock_seconds: float = field(default=30.0, metadata=_setting(
        "ELDRIC_BEAT_LOCK_SECONDS", "a second beat takes over this long after the scheduling one died"))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScheduleSettings:
        env = dict(os.environ if env is None else env)
        values: dict[str, float] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw in (None, ""):
                continue
            try:
                values[f.name] = float(raw)
            except ValueError:
                raise ValueError(f"{f.metadata['env']} must be a number of seconds, got {raw!r}") from None
            if values[f.name] < 0:
                raise ValueError(f"{f.metadata['env']} must not be negative, got {raw!r}")
        settings = cls(**values)
        if settings.lock_seconds < 3:
            raise ValueError("ELDRIC_BEAT_LOCK_SECONDS must be at least 3")
        return settings

    @property
    def loop_seconds(self) -> float:
        """Longest beat sleep: well inside the lock timeout, since each tick renews the lock."""
        return max(1.0, min(5.0, self.lock_seconds / 3))


def beat_schedule(s: ScheduleSettings) -> dict[str, dict]:
    """Celery `beat_schedule`: name -> task, period, JSON-primitive args, queue."""
    entries = {
        "inventory-sync": (TASK_INVENTORY_SYNC_ALL, s.inventory_sync_seconds, []),
        "reap-stale-jobs": (TASK_REAP_STALE_JOBS, s.reap_seconds, [s.stale_worker_seconds]),
        "pins-reconcile": (TASK_PINS_RECONCILE, s.pin_reconcile_seconds, [s.job_deadline_seconds, s.pin_retry_seconds]),
        "pins-check-updates": (TASK_PINS_CHECK_UPDATES, s.pin_update_seconds,
                               [s.job_deadline_seconds, s.pin_retry_seconds]),
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
        "redbeat_redis_url": redis_url,
        "redbeat_redis_options": {},
        "redbeat_key_prefix": REDBEAT_PREFIX,
        "redbeat_lock_timeout": int(s.lock_seconds),
    }

"""Every controller setting: its default, its environment variable, its meaning.

Precedence: these defaults, then ELDRIC_* environment variables, then the mapping
passed to create_app (tests).
"""

from __future__ import annotations

import os

# name: (default, meaning)
SETTINGS: dict[str, tuple[object, str]] = {
    "REDIS_URL": ("redis://127.0.0.1:6379/0", "Redis: Celery broker and all cluster state"),
    "API_TOKEN": ("", "when set, every /api/v1 call needs `Authorization: Bearer <token>`"),
    "CLUSTER_SECRET": ("", "shared secret of controller and agents (agent-to-agent and agent-to-controller calls)"),
    "JOB_DEADLINE_SECONDS": (6 * 3600, "a worker that has not finished its part by then is failed"),
    "STALE_WORKER_SECONDS": (120, "a worker silent this long mid-pull, and offline, is failed"),
    "JOB_RETENTION_SECONDS": (7 * 24 * 3600, "finished jobs older than this are forgotten"),
    "JOB_HISTORY_MAX": (1000, "at most this many jobs are kept"),
    "WORKER_FORGET_SECONDS": (7 * 24 * 3600, "a worker offline this long leaves the worker list"),
    "REGISTRY_URL": ("http://127.0.0.1:8892", "the data worker's model registry"),
}


def from_env(env: dict[str, str] | None = None) -> dict[str, object]:
    env = dict(os.environ if env is None else env)
    out: dict[str, object] = {}
    for name, (default, _meaning) in SETTINGS.items():
        raw = env.get(f"ELDRIC_{name}")
        if raw in (None, ""):
            out[name] = default
        elif isinstance(default, int):
            try:
                out[name] = int(raw)
            except ValueError:
                raise ValueError(f"ELDRIC_{name} must be an integer, got {raw!r}") from None
        else:
            out[name] = raw
    return out

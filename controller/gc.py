"""Garbage collection across the cluster: what every worker's last GC sweep found, and a sweep asked for now.

The agents find and remove (worker_agent/gc_sweep.py, beat's `gc-sweep`); the controller only reads their
records (eldric/cluster/gc.py) and fans a sweep with removal out (eldric/cluster/maintenance.request_gc_sweep),
so `eldric gc` needs no agent address and works the same with one worker or a thousand.
"""

from __future__ import annotations

import time

import redis
from celery import Celery

from eldric.cluster import gc, maintenance, workers
from eldric.cluster.dispatch import job_sender


def report(client: redis.Redis) -> dict:
    """Every registered worker's last sweep and its finds; totals over the cluster."""
    ids = workers.registered_ids(client)
    online = workers.online_flags(client, ids)
    per_worker = [{**r, "online": online.get(r["worker"], False)} for r in gc.report(client, ids)]
    return {"workers": per_worker, "finds": sum(len(w["finds"]) for w in per_worker),
            "bytes": sum(w["bytes"] for w in per_worker), "removed_bytes_total": sum(gc.bytes_totals(client).values())}


def sweep_now(client: redis.Redis, producer: Celery, *, remove: bool) -> dict:
    """Ask every online worker to sweep now (`remove`: and remove what outlived its grace); the ids asked."""
    requested_at = time.time()
    asked = maintenance.request_gc_sweep(client, job_sender(producer), remove=remove)
    return {"asked": sorted(asked), "remove": remove, "requested_at": requested_at}

"""Worker types, Celery queue names and task names: the contract between controller and agents.

Fan-out: every agent consumes two queues, its type queue `type.<type>` (work any
one node of that type may do) and its own direct queue `worker.<id>` (work for
exactly that node). A cluster-wide pull sends one task per eligible worker to
each worker's direct queue, so every node gets it exactly once; messages for a
node that is offline wait in its queue until it returns.
"""

from __future__ import annotations

import re

WORKER_PORTS = {
    "inference": 8890,
    "cloud": 8889,
    "data": 8892,
    "science": 8897,
    "training": 8898,
    "media": 8894,
    "comm": 8895,
}
WORKER_TYPES = tuple(WORKER_PORTS)
# Only these serve inference, so only these ever receive model pull/distribute work.
MODEL_SERVING_TYPES = frozenset({"inference", "cloud"})

TASK_PULL = "models.pull"
TASK_DISTRIBUTE = "models.distribute"
TASK_DELETE = "models.delete"
TASK_COPY = "models.copy"  # Ollama's /api/copy: a store model gets a second name on every worker holding it
TASK_INVENTORY_SYNC = "inventory.sync"
# The task that carries out each kind of per-worker job (used to resume after a restart).
TASK_FOR_JOB_KIND = {"pull": TASK_PULL, "distribute": TASK_DISTRIBUTE, "delete": TASK_DELETE, "copy": TASK_COPY}

# Scheduled work (beat enqueues; see eldric/cluster/schedules.py). Every agent also consumes the
# shared maintenance queue, so any one live agent runs each message.
MAINTENANCE_QUEUE = "maintenance"
TASK_INVENTORY_SYNC_ALL = "inventory.sync_all"
TASK_REAP_STALE_JOBS = "maintenance.reap_stale_jobs"
TASK_PINS_RECONCILE = "pins.reconcile"
TASK_PINS_CHECK_UPDATES = "pins.check_updates"
TASK_CLEAN_PARTIALS_ALL = "maintenance.clean_partials_all"  # fans TASK_CLEAN_PARTIALS out to every online worker
TASK_CLEAN_PARTIALS = "maintenance.clean_partials"
TASK_SWEEP_DEBRIS_ALL = "maintenance.sweep_debris_all"  # fans TASK_SWEEP_DEBRIS out to every online inference/cloud worker
TASK_SWEEP_DEBRIS = "maintenance.sweep_debris"
TASK_GC_SWEEP_ALL = "maintenance.gc_sweep_all"  # fans TASK_GC_SWEEP out to every online worker
TASK_GC_SWEEP = "maintenance.gc_sweep"
TASK_EVICT_ALL = "maintenance.evict_all"  # fans TASK_EVICT out to every online inference/cloud worker
TASK_EVICT = "maintenance.evict"  # above the high disk watermark: evict LRU models (worker_agent/eviction.py)
TASK_MIRROR_CHECK_UPDATES = "mirror.check_updates"  # the data node's mirror asks upstream where its tags point

_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def is_valid_worker_id(worker_id: str) -> bool:
    return isinstance(worker_id, str) and bool(_WORKER_ID.fullmatch(worker_id))


def is_model_serving(worker_type: str) -> bool:
    return worker_type in MODEL_SERVING_TYPES


def type_queue(worker_type: str) -> str:
    if worker_type not in WORKER_PORTS:
        raise ValueError(f"unknown worker type {worker_type!r}")
    return f"type.{worker_type}"


def worker_queue(worker_id: str) -> str:
    if not is_valid_worker_id(worker_id):
        raise ValueError(f"invalid worker id {worker_id!r}")
    return f"worker.{worker_id}"


def queues_for(worker_type: str, worker_id: str) -> list[str]:
    """The queues one agent consumes."""
    return [type_queue(worker_type), worker_queue(worker_id)]

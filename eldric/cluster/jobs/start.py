"""Starting a job: the one place a job comes to be (the controller's pulls, deletes, distributions and
imports, pins, catch-ups).

A job is recorded first (a pending record per target, in one transaction), its secrets apart from
it, then its task is sent to every target through the caller's `Send` (Celery for agents:
eldric/cluster/dispatch.py; an HTTP call for the data node's importer). A target the sender could
not reach is failed at once with the sender's reason (the one broker-failure rule): no part waits
for a message that was never queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import redis

from eldric.cluster import keys
from eldric.cluster.jobs.store import create_job, fail_worker

log = logging.getLogger(__name__)

# (task name, task arguments, target worker ids) -> {worker id: why it could not be reached}
Send = Callable[[str, list, list[str]], Mapping[str, str]]

BROKER_UNAVAILABLE = "could not enqueue the task: broker unavailable"

# A pull job's `source` when its model lives in the cluster's registry (the data node's /v2/: created or pushed
# through Ollama's API): agents fetch it from their ELDRIC_REGISTRY_URL with the cluster secret, whatever their
# ELDRIC_OLLAMA_REGISTRY says. Retries, catch-ups and pins keep the job's source, so they fetch it there too.
CLUSTER_REGISTRY = "cluster"


def start_job(client: redis.Redis, send: Send, *, kind: str, task: str, model: str, targets: list[str], source: str,
              deadline_seconds: float, options: dict | None = None, secrets: dict | None = None,
              now: float | None = None, reasons: Mapping[str, str] | None = None,
              skipped: Mapping[str, str] | None = None) -> str:
    """Record the job, keep its secrets apart from it, send `task(job_id, model)` to every target; return its id.

    `reasons` and `skipped`: placement's choice (store.create_job); the skipped workers get no task."""
    job_id = create_job(client, kind=kind, model=model, targets=targets, source=source,
                        deadline_seconds=deadline_seconds, options=options, now=now, reasons=reasons, skipped=skipped)
    if secrets:  # read by agents only: never in job views, task arguments or logs
        client.hset(keys.job_secrets(job_id), mapping=secrets)
        client.expire(keys.job_secrets(job_id), int(deadline_seconds) + 3600)
    for wid, reason in send(task, [job_id, model], targets).items():
        log.warning("job %s: %s", job_id, reason, extra={"job_id": job_id, "worker_id": wid})
        fail_worker(client, job_id, wid, reason)
    return job_id

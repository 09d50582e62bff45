"""Ollama's `POST /api/copy {source, destination}` across the cluster: every online worker whose store holds
`source` gets `destination` too, as one job (kind `copy`, task models.copy; the agent's part is
worker_agent/copying.py). Ollama answers 200 with an empty body, 404 when the source is unknown, 400 on a
malformed name; the controller adds 409 for what it will not alias and 503 when every holder is offline.

What is refused, and why:
- a file model (a registry, URL or peer distribution in a worker's catalog): its name is its reference in the
  data node's registry, which pins, update checks and distributions to new workers go back to; an alias would
  name nothing there. Distribute it again under the other name instead.
- a copy no holder can make now (every holder offline) is 503: Ollama answers a copy once it is made, and
  nothing would list the destination until a holder returned.

Offline holders are targets too, as in a delete: a holder back within the offline grace runs its queued
task; one away longer ends `skipped` and beat's catch-up (eldric/cluster/jobs/catchups.py) copies when it
returns. So a copy is not lost for a worker that was offline when it ran.
"""

from __future__ import annotations

import redis
from celery import Celery

from controller.pull_jobs import JobLimits, enqueue_job, parse_model
from eldric.cluster import workers
from eldric.cluster.queues import TASK_COPY
from eldric.core.request_errors import BadRequestError, ConflictError, NotFoundError, UnavailableError


def start_copy(client: redis.Redis, producer: Celery, *, source: str, destination: str, limits: JobLimits) -> str:
    """Validate, start the copy job on every holder of `source` (offline ones caught up); its id."""
    src, dst = _name(source, "source"), _name(destination, "destination")
    holders = workers.holders(client, src.short)
    if not holders:
        raise NotFoundError(f"model '{src.short}' not found", field="source")
    records = workers.held(client, holders, [src.short])
    files = sorted(wid for wid, held in records.items() if (held.get(src.short) or {}).get("source"))
    if files:
        kind = records[files[0]][src.short]["source"]
        raise ConflictError(f"'{src.short}' is a file model ({kind} distribution on {', '.join(files)}): copy aliases "
                            "Ollama-store models only; distribute it again under the name "
                            f"'{dst.short}' instead")
    if not any(workers.online_flags(client, holders).values()):
        raise UnavailableError(f"every worker holding '{src.short}' is offline: {', '.join(holders)}")
    return enqueue_job(client, producer, kind="copy", task=TASK_COPY, model=dst.short, targets=holders,
                       source="local", limits=limits, options={"source": src.short})


def _name(value: object, field: str):
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{field} is required", field=field)
    try:
        return parse_model(value)
    except BadRequestError as exc:
        raise BadRequestError(f"{field}: {exc}", field=field) from None

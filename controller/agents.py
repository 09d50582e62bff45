"""Calls from the controller to worker agents' HTTP servers (authenticated by the cluster secret)."""

from __future__ import annotations

import redis
import requests

from controller.models import workers_with
from controller.workers import get_worker
from eldric.core.request_errors import NotFoundError, UnavailableError
from eldric.core.names import ModelName
from eldric.transfer.http import http_session


def show_model(client: redis.Redis, name: ModelName, secret: str, timeout: float = 10.0) -> dict:
    """Ask an online worker that has the model for Ollama's `show` answer."""
    holders = workers_with(client, name.short)
    if not holders:
        raise NotFoundError(f"model '{name.short}' not found on any worker")
    errors = []
    with http_session(token=secret) as session:  # agents are inside the cluster: no egress proxy
        for wid in holders:
            worker = get_worker(client, wid)
            if not worker or not worker["online"] or not worker["address"]:
                continue
            try:
                resp = session.get(f"{worker['address']}/api/show", params={"model": name.short}, timeout=timeout)
            except requests.RequestException as exc:
                errors.append(f"{wid}: {exc}")
                continue
            if resp.ok:
                return {**resp.json(), "worker": wid}
            errors.append(f"{wid}: {resp.status_code}")
    if errors and all(e.endswith(": 404") for e in errors):  # the inventory was stale: nobody has it
        raise NotFoundError(f"model '{name.short}' not found on any worker")
    raise UnavailableError(f"no online worker could describe '{name.short}'" + (f" ({'; '.join(errors)})" if errors else ""))


def eviction_plan(client: redis.Redis, worker_id: str, secret: str, timeout: float = 15.0) -> dict:
    """The worker's own answer to what eviction would remove now and why (worker_agent/eviction.py): only the
    agent knows its disk, what its backends have loaded and which blobs its running jobs lease."""
    worker = get_worker(client, worker_id)
    if worker is None:
        raise NotFoundError(f"no worker {worker_id!r}")
    if not worker["online"] or not worker["address"]:
        raise UnavailableError(f"worker {worker_id} is offline: only its agent can tell what eviction would remove")
    with http_session(token=secret) as session:  # agents are inside the cluster: no egress proxy
        try:
            resp = session.get(f"{worker['address']}/api/eviction-plan", timeout=timeout)
        except requests.RequestException as exc:
            raise UnavailableError(f"worker {worker_id} did not answer: {exc}") from None
    if not resp.ok:
        raise UnavailableError(f"worker {worker_id} answered {resp.status_code} for its eviction plan")
    return resp.json()

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

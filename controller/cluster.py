"""Cluster membership as the controller sees it: workers, online state, eligibility."""

from __future__ import annotations

import json
import time

import redis

from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving


def _worker_view(record: dict, alive: bool, models: int) -> dict:
    def num(key: str) -> float:
        try:
            return float(record.get(key) or 0)
        except ValueError:
            return 0.0
    try:
        backends = json.loads(record.get("backends") or "[]")
        backend_details = json.loads(record.get("backend_details") or "{}")
    except ValueError:
        backends, backend_details = [], {}
    return {
        "id": record.get("id"),
        "type": record.get("type"),
        "address": record.get("address"),
        "backends": backends,
        "backend_details": backend_details,
        "free_disk": int(num("free_disk")),
        "online": alive,
        "last_seen": num("last_seen"),
        "registered_at": num("registered_at"),
        "hostname": record.get("hostname"),
        "models": models,
    }


def list_workers(client: redis.Redis, *, forget_after: float | None = None, now: float | None = None) -> list[dict]:
    """Every registered worker, sorted by id; long-gone ones are dropped from the set."""
    now = time.time() if now is None else now
    ids = sorted(client.smembers(keys.WORKERS))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.hgetall(keys.worker(wid))
        pipe.exists(keys.worker_alive(wid))
        pipe.hlen(keys.worker_models(wid))
    results = pipe.execute()
    out = []
    for i, wid in enumerate(ids):
        record, alive, models = results[3 * i: 3 * i + 3]
        if not record:
            client.srem(keys.WORKERS, wid)
            continue
        view = _worker_view(record, bool(alive), int(models))
        if forget_after and not alive and now - view["last_seen"] > forget_after:
            client.srem(keys.WORKERS, wid)
            continue
        out.append(view)
    return out


def get_worker(client: redis.Redis, worker_id: str) -> dict | None:
    record = client.hgetall(keys.worker(worker_id))
    if not record:
        return None
    return _worker_view(record, bool(client.exists(keys.worker_alive(worker_id))),
                        int(client.hlen(keys.worker_models(worker_id))))


def worker_models(client: redis.Redis, worker_id: str) -> list[dict]:
    return sorted((json.loads(v) for v in client.hgetall(keys.worker_models(worker_id)).values()),
                  key=lambda m: m.get("name", ""))


def is_alive(client: redis.Redis, worker_id: str) -> bool:
    return bool(client.exists(keys.worker_alive(worker_id)))


def select_targets(workers: list[dict], requested: list[str] | None) -> tuple[list[dict], list[str], list[str]]:
    """(eligible workers, requested ids that may not take model work, unknown requested ids).

    With no explicit list, every registered inference/cloud worker is a target — the
    offline ones too, so they are shown (and served when they return), never dropped.
    """
    by_id = {w["id"]: w for w in workers}
    if requested is None:
        return [w for w in workers if is_model_serving(w["type"] or "")], [], []
    unknown = [wid for wid in dict.fromkeys(requested) if wid not in by_id]
    refused = [wid for wid in requested if wid in by_id and not is_model_serving(by_id[wid]["type"] or "")]
    chosen = [by_id[wid] for wid in dict.fromkeys(requested) if wid in by_id and wid not in refused]
    return chosen, refused, unknown

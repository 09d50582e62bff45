"""The cluster-wide model view, built from every agent's inventory in Redis."""

from __future__ import annotations

import json

import redis

from controller import cluster
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving


def _inventories(client: redis.Redis, worker_ids: list[str]) -> dict[str, dict[str, dict]]:
    pipe = client.pipeline(transaction=False)
    for wid in worker_ids:
        pipe.hgetall(keys.worker_models(wid))
    out: dict[str, dict[str, dict]] = {}
    for wid, raw in zip(worker_ids, pipe.execute(), strict=False):
        out[wid] = {name: json.loads(value) for name, value in raw.items()}
    return out


def cluster_models(client: redis.Redis, *, forget_after: float | None = None) -> tuple[list[dict], int]:
    """Every model on any worker: size, digest, format, the workers that have it, coverage percent.

    Coverage counts the model-serving workers (inference, cloud); a model whose
    workers disagree on the digest lists each digest it was seen with.
    """
    workers = cluster.list_workers(client, forget_after=forget_after)
    serving = [w for w in workers if is_model_serving(w["type"] or "")]
    inventories = _inventories(client, [w["id"] for w in serving])
    models: dict[str, dict] = {}
    for wid in sorted(inventories):
        for name, record in inventories[wid].items():
            entry = models.setdefault(name, {
                "name": name, "size": record.get("size", 0), "digest": record.get("digest"),
                "format": record.get("format"), "details": record.get("details") or {},
                "modified_at": record.get("modified_at"), "workers": [], "digests": {},
            })
            entry["workers"].append(wid)
            entry["digests"].setdefault(record.get("digest"), []).append(wid)
            entry["modified_at"] = max(entry["modified_at"] or 0, record.get("modified_at") or 0)
    total = len(serving)
    out = []
    for name in sorted(models):
        entry = models[name]
        entry["coverage"] = round(100.0 * len(entry["workers"]) / total, 1) if total else 0.0
        entry["missing"] = [w["id"] for w in serving if w["id"] not in entry["workers"]]
        entry["consistent"] = len(entry["digests"]) == 1
        out.append(entry)
    return out, total


def workers_with(client: redis.Redis, model: str) -> list[str]:
    ids = sorted(client.smembers(keys.WORKERS))
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.hexists(keys.worker_models(wid), model)
    return [wid for wid, has in zip(ids, pipe.execute(), strict=False) if has]


def models_of(client: redis.Redis, worker_id: str) -> set[str]:
    return set(client.hkeys(keys.worker_models(worker_id)))

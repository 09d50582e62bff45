"""The cluster-wide model view, built from every agent's inventory in Redis.

At fleet size (issue 13: 1,000 workers x 100 models) the cost was reading and parsing every
inventory on every request (90,000 JSON records, about 1 s here) and finding each model's
missing workers by a list scan per worker (workers^2 x models). Now: one pipelined pass reads each
worker's record with its `inventory_at` stamp and model count; an inventory is read and parsed again
only when they changed (`InventoryCache`, one per controller process). `publish_inventory` is the one
write path of `eldric:worker:<id>:models`, and it replaces the hash and stamps `inventory_at` in
one transaction, so an unchanged (stamp, count) means an unchanged inventory. Missing workers come
from a set, and only for the models on the requested page.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import redis

from controller import cluster
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving


# One model on one worker, as the view needs it: (digest, modified_at, (size, format, details)).
# The facts tuple, names and digests are shared between workers that report equal values, so the
# cache of 1,000 x 100 inventories stays small.
Held = tuple


class InventoryCache:
    """Compact inventories by worker id, each with the (inventory_at, model count) it was read at.

    `source` is the Redis client it was filled from: a cache is only valid for that database.
    """

    def __init__(self, source: object = None) -> None:
        self.source = source
        self._entries: dict[str, tuple[tuple[str, int], dict[str, Held]]] = {}
        self.shared: dict = {}
        self._shared_after_prune = 0
        self._lock = threading.Lock()

    def get(self, worker_id: str, stamp: tuple[str, int]) -> dict[str, Held] | None:
        with self._lock:
            entry = self._entries.get(worker_id)
        return entry[1] if entry is not None and entry[0] == stamp else None

    def put(self, worker_id: str, stamp: tuple[str, int], inventory: dict[str, Held]) -> None:
        with self._lock:
            self._entries[worker_id] = (stamp, inventory)

    def keep_only(self, worker_ids: set[str]) -> None:
        """Forget workers no longer registered; drop shared values no inventory holds any more
        (when the table has doubled since it was last pruned: the cost stays amortised)."""
        with self._lock:
            for wid in [w for w in self._entries if w not in worker_ids]:
                del self._entries[wid]
            if len(self.shared) <= 2 * self._shared_after_prune + 1000:
                return
            shared: dict = {}
            for _stamp, inventory in self._entries.values():
                for name, (digest, _modified, facts) in inventory.items():
                    shared[name] = name
                    shared[digest] = digest
                    shared[("facts", name, facts[0], facts[1])] = facts
            self.shared, self._shared_after_prune = shared, len(shared)


def _compact(raw: dict[str, str], shared: dict) -> dict[str, Held]:
    """A worker's models hash as Held tuples, reusing equal values already in `shared`."""
    out: dict[str, Held] = {}
    for name, value in raw.items():
        record = json.loads(value)
        size, fmt, details = record.get("size", 0), record.get("format"), record.get("details") or {}
        key = ("facts", name, size, fmt) if isinstance(size, int | float | str | None) else None
        facts = shared.get(key) if key else None
        if facts is None or facts[2] != details:
            facts = (size, fmt, details)
            if key:
                shared[key] = facts
        digest = record.get("digest")
        if isinstance(digest, str):
            digest = shared.setdefault(digest, digest)
        out[shared.setdefault(name, name)] = (digest, record.get("modified_at"), facts)
    return out


@dataclass(frozen=True)
class ModelQuery:
    """Which models a request wants: a name substring `q` (any case), coverage below a percent, a page."""

    q: str | None = None
    coverage_below: float | None = None
    limit: int | None = None
    offset: int = 0

    def matches(self, entry: dict) -> bool:
        if self.q and self.q.lower() not in entry["name"].lower():
            return False
        return self.coverage_below is None or entry["coverage"] < self.coverage_below


def _inventories(client: redis.Redis, stamps: dict[str, tuple[str | None, int]],
                 cache: InventoryCache | None) -> dict[str, dict[str, Held]]:
    """Each worker's inventory: from `cache` when its (inventory_at, model count) is unchanged, else
    read in one pipeline. A hash with no stamp (not written by publish_inventory) is always read."""
    out: dict[str, dict[str, Held]] = {}
    stale = []
    for wid, stamp in stamps.items():
        hit = cache.get(wid, stamp) if cache is not None and stamp[0] is not None else None
        if hit is None:
            stale.append(wid)
        else:
            out[wid] = hit
    if stale:
        pipe = client.pipeline(transaction=False)
        for wid in stale:
            pipe.hgetall(keys.worker_models(wid))
        shared = cache.shared if cache is not None else {}
        for wid, raw in zip(stale, pipe.execute(), strict=True):
            out[wid] = _compact(raw, shared)
            # Changed since the stamp was read: kept for this answer, not cached under that stamp.
            if cache is not None and stamps[wid][0] is not None and len(raw) == stamps[wid][1]:
                cache.put(wid, stamps[wid], out[wid])
    if cache is not None:
        cache.keep_only(set(stamps))
    return out


def _aggregate(inventories: dict[str, dict[str, Held]]) -> dict[str, dict]:
    """Per model: its first worker's (by id) facts, newest modified_at, holders, holders by digest."""
    models: dict[str, dict] = {}
    for wid in sorted(inventories):
        for name, (digest, modified_at, facts) in inventories[wid].items():
            entry = models.get(name)
            if entry is None:
                size, fmt, details = facts
                entry = models[name] = {"name": name, "size": size, "digest": digest, "format": fmt,
                                        "details": details, "modified_at": modified_at, "workers": [],
                                        "digests": {}}
            entry["workers"].append(wid)
            holders = entry["digests"].get(digest)
            if holders is None:
                entry["digests"][digest] = [wid]
            else:
                holders.append(wid)
            entry["modified_at"] = max(entry["modified_at"] or 0, modified_at or 0)
    return models


def query_models(client: redis.Redis, query: ModelQuery, *, forget_after: float | None = None,
                 cache: InventoryCache | None = None) -> tuple[list[dict], int, int]:
    """(the page of models matching `query`, how many match, eligible workers); see cluster_models."""
    rows = cluster.worker_rows(client, forget_after=forget_after)
    stamps = {view["id"]: (stamp, view["models"]) for view, stamp in rows if is_model_serving(view["type"] or "")}
    serving = list(stamps)
    models = _aggregate(_inventories(client, stamps, cache))
    total = len(serving)
    matching = []
    for name in sorted(models):
        entry = models[name]
        entry["coverage"] = round(100.0 * len(entry["workers"]) / total, 1) if total else 0.0
        entry["consistent"] = len(entry["digests"]) == 1
        if query.matches(entry):
            matching.append(entry)
    end = None if query.limit is None else query.offset + query.limit
    page = matching[query.offset:end]
    for entry in page:
        have = set(entry["workers"])
        entry["missing"] = [wid for wid in serving if wid not in have]
    return page, len(matching), total


def cluster_models(client: redis.Redis, *, forget_after: float | None = None,
                   cache: InventoryCache | None = None) -> tuple[list[dict], int]:
    """Every model on any worker: size, digest, format, the workers that have it, coverage percent.

    Coverage counts the model-serving workers (inference, cloud); a model whose
    workers disagree on the digest lists each digest it was seen with.
    """
    page, _matching, eligible = query_models(client, ModelQuery(), forget_after=forget_after, cache=cache)
    return page, eligible


def workers_with(client: redis.Redis, model: str) -> list[str]:
    ids = sorted(client.smembers(keys.WORKERS))
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.hexists(keys.worker_models(wid), model)
    return [wid for wid, has in zip(ids, pipe.execute(), strict=False) if has]


def models_of(client: redis.Redis, worker_id: str) -> set[str]:
    return set(client.hkeys(keys.worker_models(worker_id)))

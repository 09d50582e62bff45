"""The cluster-wide model view, built from every agent's inventory in Redis.

At fleet size (issue 13: 1,000 workers x 100 models) the cost was reading and parsing every
inventory on every request (90,000 JSON records, about 1 s here) and finding each model's
missing workers by a list scan per worker (workers^2 x models). Now: one pass reads each worker's
record with its `inventory_at` stamp and model count; an inventory is read and parsed again only
when they changed (`InventoryCache`, one per controller process). `publish_inventory` is the one
write path of `eldric:worker:<id>:models`, and it replaces the hash and stamps `inventory_at` in
one transaction, so an unchanged (stamp, count) means an unchanged inventory.

The per-model aggregate (holders, holders by digest, the first holder's facts, the newest
modified_at) lives in the cache too and is maintained incrementally: a worker whose inventory
changed has its old compact inventory compared with the new one, and only the models that differ
are rebuilt. Rebuilding every model from 900 inventories on each request cost 90 of 160 ms, and
during a pull each completion rewrites one inventory, so a cache of inventories alone does not
help. A changed inventory is read whole (publish_inventory rewrites it whole) but only its records
whose JSON changed are parsed again (`_compact`): at 1,000 workers a pull ends on about 150 workers
a second, each rewriting 100 records for one new model. Missing workers come from a set, only for
the models on the requested page, and are kept until the model's holders or the list of
model-serving workers change. The cache holds about 23 MB at 1,000 x 100.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import redis

from controller.workers import serving_stamps
from eldric.cluster import workers


# One model on one worker, as the view needs it: (digest, modified_at, (size, format, details), served),
# `served` False when the worker holds it but none of its backends serves it (its record's `backends` is
# empty; a record without `backends`, from an agent before they were listed, counts as served).
# The facts tuple, names and digests are shared between workers that report equal values, so the
# cache of 1,000 x 100 inventories stays small.
Held = tuple
NOT_SERVED = "stored, not served"  # a model some worker holds in its store, but no backend of any holder serves
Stamp = tuple  # (inventory_at, model count) an inventory was read at; None: never served from the cache
# A worker's compact inventory: model -> Held, and model -> fingerprint of the JSON record it was parsed from.
Compact = tuple[dict[str, Held], dict[str, bytes]]
NOTHING: Compact = ({}, {})


class InventoryCache:
    """Compact inventories by worker id, each with the stamp it was read at, and the per-model
    aggregate of exactly those inventories.

    `source` is the Redis client it was filled from: a cache is only valid for that database.
    """

    def __init__(self, source: object = None) -> None:
        self.source = source
        self._entries: dict[str, tuple[Stamp | None, Compact]] = {}
        self.shared: dict = {}
        self._shared_after_prune = 0
        self.lock = threading.Lock()
        self._holders: dict[str, dict[str, Held]] = {}  # model -> worker id -> what it holds
        self._views: dict[str, dict] = {}  # model -> its aggregate entry, rebuilt when dirty
        self._dirty: set[str] = set()
        self._names: list[str] | None = []  # sorted model names; None when models came or went
        self._serving: tuple[str, ...] = ()
        self._serving_version = 0
        self._missing: dict[str, tuple[int, list[str], list[str]]] = {}  # model -> (version, workers, missing)

    def get(self, worker_id: str, stamp: Stamp) -> Compact | None:
        with self.lock:
            entry = self._entries.get(worker_id)
        return entry[1] if entry is not None and entry[0] == stamp else None

    def previous(self, worker_id: str) -> Compact:
        """The worker's last compact inventory, whatever its stamp (empty when there is none); under `lock`."""
        entry = self._entries.get(worker_id)
        return NOTHING if entry is None else entry[1]

    def snapshot(self, inventories: dict[str, tuple[Stamp | None, Compact]], serving: list[str],
                 query: ModelQuery) -> tuple[list[dict], int]:
        """Make the aggregate that of exactly `inventories` (worker id -> (stamp, inventory)) and answer
        `query` from it: (the page, how many models match). Entries are fresh dicts; their lists are shared."""
        with self.lock:
            self._apply(inventories)
            self._rebuild_dirty()
            if tuple(serving) != self._serving:
                self._serving, self._serving_version = tuple(serving), self._serving_version + 1
            if self._names is None:
                self._names = sorted(self._views)
            total = len(serving)
            matching = []
            for name in self._names:
                entry = dict(self._views[name])
                entry["coverage"] = round(100.0 * len(entry["workers"]) / total, 1) if total else 0.0
                entry["consistent"] = len(entry["digests"]) == 1
                if query.matches(entry):
                    matching.append(entry)
            end = None if query.limit is None else query.offset + query.limit
            page = matching[query.offset:end]
            for entry in page:
                entry["missing"] = self._missing_of(entry["name"], entry["workers"])
            self._prune_shared()
        return page, len(matching)

    def _apply(self, inventories: dict[str, tuple[Stamp | None, Compact]]) -> None:
        for wid in [w for w in self._entries if w not in inventories]:
            self._replace(wid, self._entries.pop(wid)[1][0], {})
        for wid, (stamp, compact) in inventories.items():
            old = self._entries.get(wid)
            if old is None or old[1] is not compact:
                self._replace(wid, {} if old is None else old[1][0], compact[0])
            self._entries[wid] = (stamp, compact)

    def _replace(self, wid: str, old: dict[str, Held], new: dict[str, Held]) -> None:
        """Subtract the worker's old inventory from the aggregate and add the new one, model by model."""
        names = new.keys() if old.keys() == new.keys() else old.keys() | new.keys()
        for name in names:
            before, after = old.get(name), new.get(name)
            if before is after or before == after:
                continue
            holders = self._holders.get(name)
            if after is None:
                del holders[wid]
            else:
                if holders is None:
                    holders = self._holders[name] = {}
                holders[wid] = after
            self._dirty.add(name)

    def _rebuild_dirty(self) -> None:
        for name in self._dirty:
            holders = self._holders.get(name)
            if holders:
                if name not in self._views:
                    self._names = None
                self._views[name] = _model_entry(name, holders)
            else:
                self._holders.pop(name, None)
                if self._views.pop(name, None) is not None:
                    self._names = None
                self._missing.pop(name, None)
        self._dirty.clear()

    def _missing_of(self, name: str, workers: list[str]) -> list[str]:
        """The model-serving workers lacking the model, in the serving list's order (kept until either changes)."""
        kept = self._missing.get(name)
        if kept is not None and kept[0] == self._serving_version and kept[1] is workers:
            return kept[2]
        have = set(workers)
        missing = [wid for wid in self._serving if wid not in have]
        self._missing[name] = (self._serving_version, workers, missing)
        return missing

    def _prune_shared(self) -> None:
        """Drop shared values no inventory holds any more (when the table has doubled since it was
        last pruned: the cost stays amortised)."""
        if len(self.shared) <= 2 * self._shared_after_prune + 1000:
            return
        shared: dict = {}
        for _stamp, (inventory, _prints) in self._entries.values():
            for name, (digest, _modified, facts, _served) in inventory.items():
                shared[name] = name
                shared[digest] = digest
                shared[("facts", name, facts[0], facts[1])] = facts
        self.shared, self._shared_after_prune = shared, len(shared)


def _model_entry(name: str, holders: dict[str, Held]) -> dict:
    """One model's aggregate: its first holder's (by id) facts and digest, the newest modified_at, the
    holders a backend serves it on (`workers`, what coverage counts) and those that only store it, both
    sorted by id, and every holder by digest (digests in order of first appearance)."""
    held = sorted(holders)
    digest, modified_at, (size, fmt, details), _served = holders[held[0]]
    newest = modified_at
    digests: dict = {}
    workers, stored = [], []
    for wid in held:
        held_digest, held_modified, _facts, served = holders[wid]
        (workers if served else stored).append(wid)
        newest = max(newest or 0, held_modified or 0)
        group = digests.get(held_digest)
        if group is None:
            digests[held_digest] = [wid]
        else:
            group.append(wid)
    return {"name": name, "size": size, "digest": digest, "format": fmt, "details": details,
            "modified_at": newest, "workers": workers, "stored_not_served": stored, "digests": digests,
            "status": "served" if workers else NOT_SERVED}


def _fingerprint(value: str | bytes) -> bytes:
    return hashlib.blake2b(value.encode() if isinstance(value, str) else value, digest_size=16).digest()


def _compact(raw: dict[str, str], shared: dict, previous: Compact = NOTHING) -> Compact:
    """A worker's models hash as Held tuples, reusing equal values already in `shared`.

    A record whose JSON has the fingerprint it had at the worker's `previous` read keeps its Held
    tuple unparsed: a pull that ends rewrites the worker's whole hash for one new model, and at
    1,000 workers 150 of them end each second (issue 13). The fingerprint is a 128-bit BLAKE2b of
    the record, 16 bytes kept per record instead of the record itself (about 400).
    """
    before, before_prints = previous
    out: dict[str, Held] = {}
    prints: dict[str, bytes] = {}
    for raw_name, value in raw.items():
        fingerprint = _fingerprint(value)
        name = shared.setdefault(raw_name, raw_name)
        prints[name] = fingerprint
        if before_prints.get(name) == fingerprint:
            out[name] = before[name]
            continue
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
        backends = record.get("backends")
        out[name] = (digest, record.get("modified_at"), facts, bool(backends) if isinstance(backends, list) else True)
    return out, prints


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
                 cache: InventoryCache) -> dict[str, tuple[Stamp | None, Compact]]:
    """Each worker's (stamp, inventory): from `cache` when its (inventory_at, model count) is unchanged,
    else read in one pipeline. A hash with no stamp (not written by publish_inventory), or one that
    changed since its stamp was read, is kept with no stamp: it is read again next time."""
    out: dict[str, tuple[Stamp | None, Compact]] = {}
    stale = []
    for wid, stamp in stamps.items():
        hit = cache.get(wid, stamp) if stamp[0] is not None else None
        if hit is None:
            stale.append(wid)
        else:
            out[wid] = (stamp, hit)
    if stale:
        replies = workers.raw_inventories(client, stale)
        with cache.lock:  # the shared-values table is pruned under this lock
            compacted = [(wid, raw, _compact(raw, cache.shared, cache.previous(wid)))
                         for wid, raw in zip(stale, replies, strict=True)]
        for wid, raw, compact in compacted:
            cacheable = stamps[wid][0] is not None and len(raw) == stamps[wid][1]
            out[wid] = (stamps[wid] if cacheable else None, compact)
    return out


def query_models(client: redis.Redis, query: ModelQuery, *, forget_after: float | None = None,
                 cache: InventoryCache | None = None) -> tuple[list[dict], int, int]:
    """(the page of models matching `query`, how many match, eligible workers); see cluster_models."""
    cache = InventoryCache() if cache is None else cache
    stamps = serving_stamps(client, forget_after=forget_after)
    serving = list(stamps)
    page, matching = cache.snapshot(_inventories(client, stamps, cache), serving, query)
    return page, matching, len(serving)


def cluster_models(client: redis.Redis, *, forget_after: float | None = None,
                   cache: InventoryCache | None = None) -> tuple[list[dict], int]:
    """Every model on any worker: size, digest, format, the workers a backend serves it on, coverage percent.

    Coverage counts the model-serving workers (inference, cloud) where at least one backend serves
    the model; holders that only store it are listed apart (`stored_not_served`). A model whose
    workers disagree on the digest lists each digest it was seen with.
    """
    page, _matching, eligible = query_models(client, ModelQuery(), forget_after=forget_after, cache=cache)
    return page, eligible


def workers_with(client: redis.Redis, model: str) -> list[str]:
    return workers.holders(client, model)


def models_of(client: redis.Redis, worker_id: str) -> set[str]:
    return workers.inventory_names(client, worker_id)

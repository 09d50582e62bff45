"""Garbage collection's records in Redis: what each worker's last GC sweep found, and the bytes sweeps removed.

The agent's sweep (worker_agent/gc_sweep.py) writes them; the controller reads them for `GET /api/v1/gc`
(`eldric gc --dry-run`) and `/metrics` (`eldric_gc_bytes_total`). A find is kept from sweep to sweep by its
id, so its `first_seen` survives until it is removed or stops being garbage (a manifest or catalog entry
that references it again): the grace period counts from the first sweep that saw it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from eldric.cluster import keys

BLOB, PARTIAL, DEBRIS = "blob", "partial", "debris"
KINDS = (BLOB, PARTIAL, DEBRIS)
GRACE_SECONDS = 3600.0  # ELDRIC_GC_GRACE_SECONDS' default


@dataclass(frozen=True)
class Find:
    """One piece of garbage on a worker."""

    id: str  # stable across sweeps: "<kind>:<digest, download name or path>"
    kind: str  # blob (no manifest, catalog entry, backend file or lease references it), partial, debris
    path: str
    bytes: int
    first_seen: float
    removable_at: float  # first_seen + the grace period: a sweep with removal takes it from then on
    digest: str | None = None
    note: str | None = None  # why it is not removed even when due (debris an operator placed by hand)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_finds(client: redis.Redis, worker_id: str) -> dict[str, Find]:
    out = {}
    for fid, raw in client.hgetall(keys.worker_gc(worker_id)).items():
        try:
            out[fid] = Find(**json.loads(raw))
        except (TypeError, ValueError):
            continue  # a record of another version: the next sweep rewrites it
    return out


def publish(client: redis.Redis, worker_id: str, finds: list[Find], *, swept_at: float, grace: float,
            removed: list[Find]) -> None:
    """Replace the worker's finds with this sweep's (those removed are gone); count the removed bytes."""
    freed = sum(f.bytes for f in removed)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker_gc(worker_id))
        if finds:
            pipe.hset(keys.worker_gc(worker_id), mapping={f.id: json.dumps(f.to_json()) for f in finds})
        pipe.hset(keys.worker_gc_sweep(worker_id), mapping={
            "swept_at": swept_at, "grace": grace, "removed": len(removed), "removed_bytes": freed})
        if freed:
            pipe.hincrby(keys.GC_BYTES, worker_id, freed)
        pipe.execute()


def report(client: redis.Redis, worker_ids: list[str]) -> list[dict]:
    """Per worker: its last sweep (None: never swept) and what that sweep found, oldest find first."""
    pipe = client.pipeline(transaction=False)
    for wid in worker_ids:
        pipe.hgetall(keys.worker_gc_sweep(wid))
        pipe.hgetall(keys.worker_gc(wid))
    answers = pipe.execute()
    out = []
    for i, wid in enumerate(worker_ids):
        sweep, raw_finds = answers[2 * i], answers[2 * i + 1]
        finds = []
        for raw in raw_finds.values():
            try:
                finds.append(Find(**json.loads(raw)).to_json())
            except (TypeError, ValueError):
                continue
        finds.sort(key=lambda f: (f["first_seen"], f["id"]))
        out.append({"worker": wid, "swept_at": _num(sweep.get("swept_at")), "grace": _num(sweep.get("grace")),
                    "removed": int(sweep.get("removed") or 0), "removed_bytes": int(sweep.get("removed_bytes") or 0),
                    "finds": finds, "bytes": sum(f["bytes"] for f in finds)})
    return out


def bytes_totals(client: redis.Redis) -> dict[str, int]:
    """Worker id -> bytes its GC sweeps removed, ever."""
    return {wid: int(n) for wid, n in client.hgetall(keys.GC_BYTES).items()}


def _num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None

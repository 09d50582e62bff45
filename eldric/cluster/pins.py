"""Desired state: models pinned to the whole cluster or to listed workers.

The controller writes pins (`controller/pins.py`); the agents' scheduled work
(`worker_agent/maintenance.py`) reads them and starts pulls for eligible workers
that lack a pinned model, or, with auto-update on, hold an older digest than the
one the upstream tag now points at.

Redis keys (to be listed with the others in `eldric/cluster/keys.py`):

| key | type | holds |
| --- | --- | --- |
| `eldric:pins` | hash | model name (short form) -> JSON pin record |
| `eldric:pin:<model>:attempts` | hash | worker id -> JSON {job_id, at}: the last pull started for the pin |
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import redis

from eldric.cluster import jobstate
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving

PINS = f"{keys.PREFIX}:pins"

PRESENT = "present"
MISSING = "missing"
OUTDATED = "outdated"
PULLING = "pulling"


def pin_attempts(model: str) -> str:
    """HASH worker id -> JSON {job_id, at}: the last pull started for this pin on that worker."""
    return f"{keys.PREFIX}:pin:{model}:attempts"


@dataclass(frozen=True)
class Pin:
    model: str
    workers: tuple[str, ...] | None = None  # None: every inference/cloud worker, now and later
    auto_update: bool = False
    created_at: float = 0.0
    upstream_digest: str | None = None  # what the tag pointed at on the last update check
    checked_at: float | None = None
    check_error: str | None = None
    source: str = "ollama"  # or "registry": reconciled by distribute jobs from the data worker's registry
    source_options: dict | None = None  # registry: registry_model_id, registry_url, format

    def to_json(self) -> str:
        data = asdict(self)
        data["workers"] = list(self.workers) if self.workers is not None else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str) -> Pin:
        data = json.loads(raw)
        workers = data.get("workers")
        return cls(model=data["model"], workers=tuple(workers) if workers is not None else None,
                   auto_update=bool(data.get("auto_update")), created_at=float(data.get("created_at") or 0),
                   upstream_digest=data.get("upstream_digest"), checked_at=data.get("checked_at"),
                   check_error=data.get("check_error"), source=data.get("source") or "ollama",
                   source_options=data.get("source_options"))

    def applies_to(self, worker: WorkerFacts) -> bool:
        """Eligible: serves models, and is listed (or the pin is cluster-wide)."""
        return is_model_serving(worker.type) and (self.workers is None or worker.id in self.workers)

    @property
    def wanted_digest(self) -> str | None:
        """The manifest digest workers must hold; None when any version will do."""
        return self.upstream_digest if self.auto_update else None


@dataclass(frozen=True)
class WorkerFacts:
    """What reconciliation needs to know about one registered worker."""
    id: str
    type: str
    online: bool
    models: dict[str, dict] = field(default_factory=dict)  # inventory: name -> record (digest, size, ...)
    busy_models: frozenset[str] = frozenset()  # models of the worker's unfinished jobs
    failed_at: dict[str, float] = field(default_factory=dict)  # pin model -> when its last pin pull failed


def model_status(pin: Pin, worker: WorkerFacts) -> str:
    """present, missing, outdated (auto-update pin, other digest) or pulling (a job is on it)."""
    if pin.model in worker.busy_models:
        return PULLING
    held = worker.models.get(pin.model)
    if held is None:
        return MISSING
    wanted = pin.wanted_digest
    if wanted and held.get("digest") != wanted:
        return OUTDATED
    return PRESENT


def workers_to_pull(pin: Pin, workers: list[WorkerFacts], *, now: float, retry_after: float) -> list[str]:
    """Online eligible workers lacking the pinned model (or its wanted digest), not already pulling it,
    and not within `retry_after` seconds of a failed pin pull."""
    chosen = []
    for w in workers:
        if not (w.online and pin.applies_to(w)):
            continue
        if model_status(pin, w) not in (MISSING, OUTDATED):
            continue
        failed = w.failed_at.get(pin.model)
        if failed is not None and now - failed < retry_after:
            continue
        chosen.append(w.id)
    return chosen


def coverage(pin: Pin, workers: list[WorkerFacts]) -> dict[str, list[str]]:
    """Eligible workers grouped by the pinned model's status on them."""
    out: dict[str, list[str]] = {PRESENT: [], MISSING: [], OUTDATED: [], PULLING: []}
    for w in workers:
        if pin.applies_to(w):
            out[model_status(pin, w)].append(w.id)
    return out


# --- Redis ---------------------------------------------------------------------------------

def save_pin(client: redis.Redis, pin: Pin) -> None:
    client.hset(PINS, pin.model, pin.to_json())


def get_pin(client: redis.Redis, model: str) -> Pin | None:
    raw = client.hget(PINS, model)
    return Pin.from_json(raw) if raw else None


def list_pins(client: redis.Redis) -> list[Pin]:
    return sorted((Pin.from_json(raw) for raw in client.hvals(PINS)), key=lambda p: p.model)


def delete_pin(client: redis.Redis, model: str) -> bool:
    pipe = client.pipeline()
    pipe.hdel(PINS, model)
    pipe.delete(pin_attempts(model))
    removed, _ = pipe.execute()
    return bool(removed)


def record_check(client: redis.Redis, model: str, *, digest: str | None, error: str | None,
                 now: float | None = None) -> Pin | None:
    """Store an update check's outcome on the pin (unless it was removed meanwhile)."""
    now = time.time() if now is None else now
    with client.pipeline() as pipe:
        try:
            pipe.watch(PINS)
            raw = pipe.hget(PINS, model)
            if not raw:
                return None
            pin = Pin.from_json(raw)
            changes = {"checked_at": now, "check_error": error}
            if digest:
                changes["upstream_digest"] = digest
            updated = Pin(**{**asdict(pin), **changes, "workers": pin.workers})
            pipe.multi()
            pipe.hset(PINS, model, updated.to_json())
            pipe.execute()
            return updated
        except redis.WatchError:
            return get_pin(client, model)


def record_attempt(client: redis.Redis, model: str, job_id: str, worker_ids: list[str],
                   now: float | None = None) -> None:
    now = time.time() if now is None else now
    if worker_ids:
        client.hset(pin_attempts(model),
                    mapping={wid: json.dumps({"job_id": job_id, "at": now}) for wid in worker_ids})


def load_worker_facts(client: redis.Redis, pinned: list[str]) -> list[WorkerFacts]:
    """Every registered worker with its inventory of the pinned models and its busy models."""
    ids = sorted(client.smembers(keys.WORKERS))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.hget(keys.worker(wid), "type")
        pipe.exists(keys.worker_alive(wid))
        pipe.smembers(keys.worker_jobs(wid))
        if pinned:
            pipe.hmget(keys.worker_models(wid), pinned)
    rows = pipe.execute()
    width = 4 if pinned else 3
    per_worker = [([*rows[width * i:width * i + width], []])[:4] for i in range(len(ids))]
    job_models = _unfinished_job_models(client, [(wid, j) for wid, row in zip(ids, per_worker, strict=False) for j in row[2]])
    attempts = _failed_attempts(client, pinned)
    out = []
    for wid, (wtype, alive, jobs, held) in zip(ids, per_worker, strict=False):
        if wtype is None:
            continue
        models = {m: json.loads(raw) for m, raw in zip(pinned, held or [], strict=False) if raw}
        busy = frozenset(m for j in jobs if (m := job_models.get((wid, j))))
        failed = {m: at for m, per in attempts.items() if (at := per.get(wid)) is not None}
        out.append(WorkerFacts(id=wid, type=wtype, online=bool(alive), models=models,
                               busy_models=busy, failed_at=failed))
    return out


def _unfinished_job_models(client: redis.Redis, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(worker, job) -> model, for the jobs whose part on that worker has not finished."""
    if not pairs:
        return {}
    pipe = client.pipeline(transaction=False)
    for wid, job_id in pairs:
        pipe.hget(keys.job(job_id), "model")
        pipe.hget(keys.job_workers(job_id), wid)
    rows = pipe.execute()
    out = {}
    for i, pair in enumerate(pairs):
        model, raw = rows[2 * i], rows[2 * i + 1]
        if model and raw and not jobstate.is_terminal(json.loads(raw).get("state", "")):
            out[pair] = model
    return out


def _failed_attempts(client: redis.Redis, pinned: list[str]) -> dict[str, dict[str, float]]:
    """pin model -> worker -> finished_at of its last pin pull, for those that failed."""
    if not pinned:
        return {}
    pipe = client.pipeline(transaction=False)
    for model in pinned:
        pipe.hgetall(pin_attempts(model))
    last = [(model, wid, json.loads(raw)) for model, per in zip(pinned, pipe.execute(), strict=False) for wid, raw in per.items()]
    if not last:
        return {}
    pipe = client.pipeline(transaction=False)
    for _, wid, attempt in last:
        pipe.hget(keys.job_workers(attempt["job_id"]), wid)
    out: dict[str, dict[str, float]] = {}
    for (model, wid, attempt), raw in zip(last, pipe.execute(), strict=False):
        record = json.loads(raw) if raw else None
        if record and record.get("state") == jobstate.FAILED:
            out.setdefault(model, {})[wid] = float(record.get("finished_at") or attempt["at"])
    return out

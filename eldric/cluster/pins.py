"""Desired state: models pinned to the whole cluster, to listed workers, or to N of them.

The controller writes pins (`controller/pins.py`); the scheduled work the agents host
(`reconcile_pins`, `check_pin_updates`, run by beat's `pins.*` entries) reads them and starts pulls
for eligible workers that lack a pinned model, or, with auto-update on, hold an older digest than
the one the upstream tag now points at.

A pin with `replicas: N` (issue 25) wants N *serving* copies among its eligible workers (type,
listed workers, `selector`), not one on each: a copy counts while its worker is online or offline
for less than the offline grace, and a pull in flight counts too, so one reconcile never places a
model twice. When fewer than N count, `eldric.cluster.placement.place` chooses the new workers
(holders first, then room); a worker that comes back with an extra copy is left alone, and
`needed_replicas` tells eviction which of a worker's copies are among the N a pin needs.

Redis keys (built in `eldric/cluster/keys.py`):

| key | type | holds |
| --- | --- | --- |
| `eldric:pins` | hash | model name (short form) -> JSON pin record |
| `eldric:pin:<model>:attempts` | hash | worker id -> JSON {job_id, at}: the last pull started for the pin |
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis

from eldric.cluster import keys, workers
from eldric.cluster.capacity import facts_of
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.start import Send, start_job
from eldric.cluster.placement import place
from eldric.cluster.queues import TASK_DISTRIBUTE, TASK_PULL, is_model_serving
from eldric.core.errors import EldricError
from eldric.core.names import ModelName

log = logging.getLogger(__name__)
PINS = keys.PINS

PRESENT = "present"
MISSING = "missing"
OUTDATED = "outdated"
PULLING = "pulling"


@dataclass(frozen=True)
class Pin:
    model: str
    workers: tuple[str, ...] | None = None  # None: every inference/cloud worker, now and later
    auto_update: bool = False
    created_at: float = 0.0
    upstream_digest: str | None = None  # what the tag pointed at on the last update check
    checked_at: float | None = None
    check_error: str | None = None
    # or "registry": reconciled by distribute jobs from the data worker's registry; or "cluster" (CLUSTER_REGISTRY):
    # pulls from the data node's /v2/, where models created or pushed through the Ollama API live
    source: str = "ollama"
    source_options: dict | None = None  # registry: registry_model_id, registry_url, format
    replicas: int | None = None  # None: every eligible worker; N: N serving copies wherever placement puts them
    selector: dict[str, str] = field(default_factory=dict)  # worker labels (and "type") an eligible worker has
    spread: str | None = None  # a label ("zone"): at most ceil(N / its values) copies share one value
    gpu: bool = False  # served from a GPU: placed only where one GPU's free memory holds the model

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
                   source_options=data.get("source_options"), replicas=data.get("replicas"),
                   selector=dict(data.get("selector") or {}), spread=data.get("spread"),
                   gpu=bool(data.get("gpu")))

    def applies_to(self, worker: WorkerFacts) -> bool:
        """Eligible: serves models, is listed (or the pin is cluster-wide) and matches the selector."""
        return (is_model_serving(worker.type) and (self.workers is None or worker.id in self.workers)
                and matches_selector(self.selector, worker))

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
    record: dict = field(default_factory=dict)  # the worker's record, labels and gpus parsed (capacity.facts_of)
    model_count: int = 0  # entries in its whole inventory (placement prefers the fewest)
    labels: dict[str, str] = field(default_factory=dict)
    disk_free: int | None = None


def matches_selector(selector: dict[str, str], worker: WorkerFacts) -> bool:
    """Every selector entry holds: `type` against the worker's type, anything else against its labels
    (placement's rule, which refuses others; pins need it also to tell which existing copies count)."""
    return all((worker.type if k == "type" else worker.labels.get(k)) == v for k, v in selector.items())


def model_status(pin: Pin, worker: WorkerFacts) -> str:
    """present, missing, outdated (auto-update pin, other digest) or pulling (a job is on it).

    Present means served (issue 22): a model the worker only stores, no backend of its serving it, is
    missing, so the pin's pull installs it into the backends (the blobs are on the node already)."""
    if pin.model in worker.busy_models:
        return PULLING
    held = worker.models.get(pin.model)
    if held is None or held.get("backends") == []:  # stored but served by no backend: a pull installs it
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


def is_counted_copy(pin: Pin, worker: WorkerFacts, *, now: float, offline_grace: float, in_flight: bool = True) -> bool:
    """A copy a replica pin counts: served (present or outdated) on an eligible worker that is online or
    offline for no longer than `offline_grace`, or (`in_flight`) a pull of it on an eligible online worker."""
    if not pin.applies_to(worker):
        return False
    status = model_status(pin, worker)
    if status == PULLING:
        return in_flight and worker.online
    if status not in (PRESENT, OUTDATED):
        return False
    last_seen = workers.number(worker.record.get("last_seen")) or None
    return worker.online or (last_seen is not None and now - last_seen <= offline_grace)


def counted_copies(pin: Pin, facts: list[WorkerFacts], *, now: float, offline_grace: float,
                   in_flight: bool = True) -> list[str]:
    """The workers whose copy counts, those a pin keeps first: online before offline, then most free disk,
    then id. So the copy beyond N is the one on the fullest disk, the one eviction asks about."""
    found = [w for w in facts if is_counted_copy(pin, w, now=now, offline_grace=offline_grace, in_flight=in_flight)]
    found.sort(key=lambda w: (not w.online, -(w.disk_free or 0), w.id))
    return [w.id for w in found]


def place_replicas(pin: Pin, facts: list[WorkerFacts], counted: list[str], *, now: float, retry_after: float,
                   reserve: int, taken: dict[str, list[int]] | None = None,
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The new workers (id, placement reason) a replica pin needs to reach N `counted` copies, and the
    rejected ones (id, why); nothing when N already count, however many more there are.

    `taken`: worker id -> [bytes, models] this reconcile already placed there (updated here), so the
    pins of one run share the room instead of all going to the same roomiest workers."""
    assert pin.replicas is not None
    missing = pin.replicas - len(counted)
    if missing <= 0:
        return [], []
    taken = {} if taken is None else taken
    is_counted = set(counted)
    # The online counted copies go in too (they hold it), so spread sees the zones they already fill.
    views = [_placement_view(pin, w, taken.get(w.id)) for w in facts if w.online and pin.applies_to(w)
             and (w.id in is_counted or now - w.failed_at.get(pin.model, -math.inf) >= retry_after)]
    offline_counted = len(counted) - sum(1 for v in views if v["id"] in is_counted)
    size = _model_size(pin, facts)
    result = place(views, model=pin.model, size=size, replicas=pin.replicas - offline_counted,
                   selector=pin.selector, spread=pin.spread, reserve=reserve, needs_gpu=pin.gpu)
    chosen = [(wid, why) for wid, why in result.chosen if wid not in is_counted][:missing]
    for wid, _ in chosen:
        used = taken.setdefault(wid, [0, 0])
        used[0], used[1] = used[0] + size, used[1] + 1
    return chosen, list(result.rejected)


def _placement_view(pin: Pin, w: WorkerFacts, taken: list[int] | None) -> dict:
    """The worker as placement reads it, less what this reconcile placed there already; a stored or
    in-flight copy of the model makes it a holder, and the worker's other models on their way count
    as models it has (so an earlier run's pulls, before their bytes land, are not all doubled up)."""
    holds = pin.model in w.models or pin.model in w.busy_models
    used, placed = taken or (0, 0)
    arriving = len(w.busy_models - w.models.keys() - {pin.model})
    view = {**w.record, "id": w.id, "type": w.type, "online": w.online,
            "models": w.model_count + placed + arriving, "holds": holds}
    if w.disk_free is not None:
        view["free_disk"] = w.disk_free - used
    return view


def _model_size(pin: Pin, facts: list[WorkerFacts]) -> int:
    """The pinned model's size as any inventory records it (0 when nobody holds it yet)."""
    return max((int(w.models[pin.model].get("size") or 0) for w in facts if pin.model in w.models), default=0)


def needed_replicas(client: redis.Redis, worker_id: str, *, now: float | None = None) -> set[str]:
    """The models on `worker_id` a pin needs there: pinned to every eligible worker it is one of, or a copy
    among the first N a replica pin counts. Only online copies count here (eviction must not lean on a
    copy whose worker is away, nor on a pull that may still fail), so this keeps at least as much as
    reconciliation would."""
    now = time.time() if now is None else now
    found = list_pins(client)
    facts = load_worker_facts(client, [p.model for p in found])
    me = next((w for w in facts if w.id == worker_id), None)
    if me is None:
        return set()
    needed = set()
    for pin in found:
        if not pin.applies_to(me):
            continue
        if pin.replicas is None or worker_id in counted_copies(pin, facts, now=now, offline_grace=0, in_flight=False)[:pin.replicas]:
            needed.add(pin.model)
    return needed


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
    pipe.delete(keys.pin_attempts(model))
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
        client.hset(keys.pin_attempts(model),
                    mapping={wid: json.dumps({"job_id": job_id, "at": now}) for wid in worker_ids})


def load_worker_facts(client: redis.Redis, pinned: list[str]) -> list[WorkerFacts]:
    """Every registered worker with its inventory of the pinned models and its busy models."""
    ids = workers.registered_ids(client)
    if not ids:
        return []
    records, counts = _records(client, ids)
    online, jobs = workers.online_flags(client, ids), workers.job_ids(client, ids)
    held = workers.held(client, ids, pinned)
    job_models = _unfinished_job_models(client, [(wid, j) for wid in ids for j in jobs[wid]])
    attempts = _failed_attempts(client, pinned)
    out = []
    for wid in ids:
        if not records[wid].get("type"):
            continue
        busy = frozenset(m for j in jobs[wid] if (m := job_models.get((wid, j))))
        failed = {m: at for m, per in attempts.items() if (at := per.get(wid)) is not None}
        found = facts_of(records[wid])  # parsed once: each pin reads them for every worker
        record = {**records[wid], "labels": found.labels, "gpus": [g.__dict__ for g in found.gpus]}
        out.append(WorkerFacts(id=wid, type=records[wid]["type"], online=online[wid], models=held[wid],
                               busy_models=busy, failed_at=failed, record=record, model_count=counts[wid],
                               labels=found.labels, disk_free=found.disk_free))
    return out


def _records(client: redis.Redis, ids: list[str]) -> tuple[dict[str, dict], dict[str, int]]:
    """worker id -> its record hash, and -> its inventory's size, in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        pipe.hgetall(keys.worker(wid))
        pipe.hlen(keys.worker_models(wid))
    replies = pipe.execute()
    return dict(zip(ids, replies[0::2], strict=True)), dict(zip(ids, map(int, replies[1::2]), strict=True))


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
        pipe.hgetall(keys.pin_attempts(model))
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


# --- reconciliation (scheduled work, hosted by the agents) ------------------------------------

@dataclass(frozen=True)
class Reconcile:
    """The settings one reconcile runs with."""
    deadline_seconds: float
    retry_after: float
    offline_grace: float = 300.0  # a replica's copy on a worker offline longer no longer counts
    reserve: int = 0  # free disk placement keeps on a worker after the model
    taken: dict[str, list[int]] = field(default_factory=dict)  # placed so far in this run (place_replicas)


def reconcile_pins(client: redis.Redis, send: Send, *, deadline_seconds: float, retry_after: float,
                   offline_grace: float = 300.0, reserve: int = 0,
                   models: list[str] | None = None, now: float | None = None) -> list[dict]:
    """Start one pull job per pin for the eligible online workers lacking it (a replica pin: for the
    workers placement chooses until N copies count); return the jobs started."""
    now = time.time() if now is None else now
    selected = [p for p in list_pins(client) if models is None or p.model in models]
    if not selected:
        return []
    facts = load_worker_facts(client, [p.model for p in selected])
    run = Reconcile(deadline_seconds, retry_after, offline_grace, reserve)
    return [job for pin in selected if (job := _pull_for_pin(client, send, pin, facts, now, run))]


def _targets(pin: Pin, facts: list[WorkerFacts], now: float,
             run: Reconcile) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Who pulls now; for a replica pin also each newly placed worker's placement reason and, when fewer
    than N fit, why each other one could not take a copy (the job's skipped parts)."""
    if pin.replicas is None:
        return workers_to_pull(pin, facts, now=now, retry_after=run.retry_after), {}, {}
    # Counted copies of an older digest are updated in place; new copies go where placement says.
    by_id = {w.id: w for w in facts}
    updates = [wid for wid in workers_to_pull(pin, facts, now=now, retry_after=run.retry_after)
               if model_status(pin, by_id[wid]) == OUTDATED] if pin.auto_update else []
    counted = counted_copies(pin, facts, now=now, offline_grace=run.offline_grace)
    chosen, rejected = place_replicas(pin, facts, counted, now=now, retry_after=run.retry_after,
                                      reserve=run.reserve, taken=run.taken)
    skipped = {}
    if len(chosen) + len(counted) < pin.replicas:
        skipped = {wid: why for wid, why in rejected if wid not in counted}
        log.warning("pin %s: %d of %d replicas fit; %s", pin.model, len(chosen) + len(counted), pin.replicas,
                    "; ".join(f"{wid}: {why}" for wid, why in skipped.items()) or "no other eligible worker")
    return list(dict.fromkeys(updates + [wid for wid, _ in chosen])), dict(chosen), skipped


def _pull_for_pin(client: redis.Redis, send: Send, pin: Pin, facts: list[WorkerFacts], now: float,
                  run: Reconcile) -> dict | None:
    targets, placed, skipped = _targets(pin, facts, now, run)
    if not targets:
        return None
    by_id = {w.id: w for w in facts}
    outdated = [wid for wid in targets if model_status(pin, by_id[wid]) == OUTDATED]
    options = {"pin": pin.model, "reason": "update" if outdated else "pinned", "outdated": outdated}
    if pin.replicas is not None:
        options["replicas"] = pin.replicas
    kind, task = ("pull", TASK_PULL)
    if pin.source == "registry":  # a registry model reaches workers through a distribute job
        kind, task = ("distribute", TASK_DISTRIBUTE)
        options.update(pin.source_options or {}, source="registry")
    job_id = start_job(client, send, kind=kind, task=task, model=pin.model, targets=targets, source=pin.source,
                       deadline_seconds=run.deadline_seconds, options=options, now=now,
                       reasons=placed, skipped={wid: why for wid, why in skipped.items() if wid not in targets})
    record_attempt(client, pin.model, job_id, targets, now=now)
    log.info("pin %s: pulling to %s (%s)", pin.model, ", ".join(targets), options["reason"], extra={"job_id": job_id})
    return {"job_id": job_id, "model": pin.model, "workers": targets, "reason": options["reason"]}


def refresh_digests(client: redis.Redis, digest_of: Callable[[ModelName], str]) -> dict[str, str | None]:
    """Record where each auto-update pin's tag points now (`digest_of`, as the inventory records digests);
    return model -> digest (None when the check failed)."""
    checked: dict[str, str | None] = {}
    for pin in list_pins(client):
        if not pin.auto_update or pin.source != "ollama":
            continue
        try:
            digest = digest_of(ModelName.parse(pin.model))
        except EldricError as exc:
            log.warning("pin %s: update check failed: %s", pin.model, exc)
            record_check(client, pin.model, digest=None, error=str(exc))
            checked[pin.model] = None
            continue
        if digest != pin.upstream_digest:
            log.info("pin %s: upstream now at %s (was %s)", pin.model, digest, pin.upstream_digest)
        record_check(client, pin.model, digest=digest, error=None)
        checked[pin.model] = digest
    return checked

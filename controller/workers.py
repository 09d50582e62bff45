"""Workers as the API shows them (views over eldric/cluster/workers.py), target selection and removal."""

from __future__ import annotations

import json
import time

import redis

from eldric.core.request_errors import ConflictError, NotFoundError
from eldric.cluster import keys, workers
from eldric.cluster.capacity import facts_of
from eldric.cluster.labels import matches
from eldric.cluster.workers import number
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.store import write_record
from eldric.cluster.queues import is_model_serving


def _parse_backends(raw: tuple[str | None, str | None]) -> tuple[list, dict]:
    try:
        return json.loads(raw[0] or "[]"), json.loads(raw[1] or "{}")
    except ValueError:
        return [], {}


def _parse_facts(raw: tuple[str | None, str | None]) -> tuple[dict, list]:
    """(labels, gpus as dicts) from the record's JSON, read through capacity.facts_of."""
    facts = facts_of({"labels": raw[0], "gpus": raw[1]})
    return facts.labels, [g.__dict__ for g in facts.gpus]


def _cached(parsed: dict | None, raw: tuple, parse):
    """parse(raw), once per distinct raw value in one answer (workers of one kind write the same JSON)."""
    if parsed is None:
        return parse(raw)
    found = parsed.get(raw)
    if found is None:
        found = parsed[raw] = parse(raw)
    return found


def _worker_view(record: dict, alive: bool, models: int, parsed: dict | None = None) -> dict:
    """The worker as the API shows it. `parsed`: the (backends, backend_details) and (labels, gpus)
    already parsed from the same JSON in this answer (the views only read them)."""
    get = record.get
    backends, backend_details = _cached(parsed, ("b", get("backends"), get("backend_details")),
                                        lambda raw: _parse_backends(raw[1:]))
    labels, gpus = _cached(parsed, ("f", get("labels"), get("gpus")), lambda raw: _parse_facts(raw[1:]))
    disk = facts_of({"free_disk": get("free_disk"), "disk_total": get("disk_total")})
    return {
        "id": get("id"),
        "type": get("type"),
        "address": get("address"),
        "backends": backends,
        "backend_details": backend_details,
        "free_disk": int(number(get("free_disk"))),
        "online": alive,
        "last_seen": number(get("last_seen")),
        "registered_at": number(get("registered_at")),
        "hostname": get("hostname"),
        "models": models,
        "data_dir": get("data_dir"),
        "upstream_registry": get("upstream_registry"),
        "labels": labels,
        "disk_free": disk.disk_free,
        "disk_total": disk.disk_total,
        "gpus": gpus,
        # Eviction's thresholds in bytes, when the agent reports them (ELDRIC_DISK_*_WATERMARK).
        "disk_high_watermark": _bytes(get("disk_high_watermark")),
        "disk_low_watermark": _bytes(get("disk_low_watermark")),
    }


def _bytes(raw: str | None) -> int | None:
    return int(number(raw)) if raw not in (None, "") else None


def matching(views: list[dict], selector: list[tuple[str, str]] | None) -> list[dict]:
    """The worker views whose labels carry every key=value of `selector` (all of them without one)."""
    return [w for w in views if matches(w["labels"], selector)] if selector else views


def list_workers(client: redis.Redis, *, forget_after: float | None = None, now: float | None = None) -> list[dict]:
    """Every registered worker, sorted by id; long-gone ones are dropped from the set."""
    parsed: dict = {}
    return [_worker_view(row.record, row.online, row.models, parsed)
            for row in workers.registered_rows(client, forget_after=forget_after, now=now)]


def serving_stamps(client: redis.Redis, *, forget_after: float | None = None,
                   now: float | None = None) -> dict[str, tuple[str | None, int]]:
    """Every registered model-serving worker by id (in list_workers' order), each with its hash's
    `inventory_at` and its model count: what the model view needs, without building worker views."""
    return {row.record.get("id"): (row.record.get("inventory_at"), row.models)
            for row in workers.registered_rows(client, forget_after=forget_after, now=now)
            if is_model_serving(row.record.get("type") or "")}


def get_worker(client: redis.Redis, worker_id: str) -> dict | None:
    [row] = workers.rows(client, [worker_id])
    return _worker_view(row.record, row.online, row.models) if row.record else None


def worker_models(client: redis.Redis, worker_id: str) -> list[dict]:
    return sorted(workers.inventory(client, worker_id).values(), key=lambda m: m.get("name", ""))


def select_targets(registered: list[dict], requested: list[str] | None) -> tuple[list[dict], list[str], list[str]]:
    """(eligible workers, requested ids that may not take model work, unknown requested ids).

    With no explicit list, every registered inference/cloud worker is a target — the
    offline ones too, so they are shown (and served when they return), never dropped.
    """
    by_id = {w["id"]: w for w in registered}
    if requested is None:
        return [w for w in registered if is_model_serving(w["type"] or "")], [], []
    unknown = [wid for wid in dict.fromkeys(requested) if wid not in by_id]
    refused = [wid for wid in requested if wid in by_id and not is_model_serving(by_id[wid]["type"] or "")]
    chosen = [by_id[wid] for wid in dict.fromkeys(requested) if wid in by_id and wid not in refused]
    return chosen, refused, unknown


def remove_worker(client: redis.Redis, worker_id: str, *, force: bool = False, now: float | None = None) -> None:
    """Forget a decommissioned worker: its keys, catch-ups and unfinished job parts (ended `skipped`).

    NotFoundError for an unknown worker; ConflictError while it heartbeats, unless `force`
    (a still-running agent registers itself again at its next heartbeat).
    """
    if not workers.is_registered(client, worker_id):
        raise NotFoundError(f"no worker {worker_id!r}")
    if workers.is_online(client, worker_id) and not force:
        raise ConflictError(f"worker {worker_id} is online; stop its agent first, or pass force=true")
    now = time.time() if now is None else now
    for job_id in workers.job_ids(client, [worker_id])[worker_id]:
        raw = client.hget(keys.job_workers(job_id), worker_id)
        if raw and not jobstate.is_terminal(json.loads(raw).get("state", "")):
            write_record(client, job_id, worker_id, jobstate.skipped(json.loads(raw), now, "skipped (worker removed)"),
                         expect=raw)
    workers.forget(client, worker_id)

"""Cluster membership as the controller sees it: workers, online state, eligibility."""

from __future__ import annotations

import json
import time
import weakref

import redis

from controller.errors import ConflictError, NotFoundError
from eldric.cluster import catchup, jobstate, keys
from eldric.cluster.jobstore import write_record
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
        "data_dir": record.get("data_dir"),
        "upstream_registry": record.get("upstream_registry"),
    }


def list_workers(client: redis.Redis, *, forget_after: float | None = None, now: float | None = None) -> list[dict]:
    """Every registered worker, sorted by id; long-gone ones are dropped from the set."""
    return [view for view, _stamp in worker_rows(client, forget_after=forget_after, now=now)]


# Every worker's record, model count and online mark in one command: at 1,000 workers a pipeline of
# 2,001 commands cost the controller more to build and parse than Redis spends answering (issue 13).
# KEYS come in threes per worker: its hash, its models hash, its online mark.
_ROWS = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
  out[#out + 1] = redis.call('HLEN', KEYS[i + 1])
  out[#out + 1] = redis.call('EXISTS', KEYS[i + 2])
end
return out
"""
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rows_script(client: redis.Redis):
    """One Script per client: run by EVALSHA (loaded again after a Redis restart)."""
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(_ROWS)
    return script


def _read_rows(client: redis.Redis, ids: list[str]) -> list[tuple[dict, int, bool]]:
    """(record, model count, online) per worker id, as one script call."""
    reply = _rows_script(client)(keys=[key for wid in ids for key in
                                       (keys.worker(wid), keys.worker_models(wid), keys.worker_alive(wid))])
    return [(dict(zip(flat[::2], flat[1::2], strict=True)), int(models), bool(alive))
            for flat, models, alive in zip(reply[::3], reply[1::3], reply[2::3], strict=True)]


def worker_rows(client: redis.Redis, *, forget_after: float | None = None,
                now: float | None = None) -> list[tuple[dict, str | None]]:
    """list_workers, each view with its hash's `inventory_at` (read in the same pass, for the model view)."""
    now = time.time() if now is None else now
    ids = sorted(client.smembers(keys.WORKERS))
    if not ids:
        return []
    out = []
    for wid, (record, models, alive) in zip(ids, _read_rows(client, ids), strict=True):
        if not record:
            client.srem(keys.WORKERS, wid)
            continue
        view = _worker_view(record, alive, models)
        if forget_after and not alive and now - view["last_seen"] > forget_after:
            client.srem(keys.WORKERS, wid)
            continue
        out.append((view, record.get("inventory_at")))
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


def remove_worker(client: redis.Redis, worker_id: str, *, force: bool = False, now: float | None = None) -> None:
    """Forget a decommissioned worker: its keys, catch-ups and unfinished job parts (ended `skipped`).

    NotFoundError for an unknown worker; ConflictError while it heartbeats, unless `force`
    (a still-running agent registers itself again at its next heartbeat).
    """
    if not client.exists(keys.worker(worker_id)) and not client.sismember(keys.WORKERS, worker_id):
        raise NotFoundError(f"no worker {worker_id!r}")
    if is_alive(client, worker_id) and not force:
        raise ConflictError(f"worker {worker_id} is online; stop its agent first, or pass force=true")
    now = time.time() if now is None else now
    for job_id in client.smembers(keys.worker_jobs(worker_id)):
        raw = client.hget(keys.job_workers(job_id), worker_id)
        if raw and not jobstate.is_terminal(json.loads(raw).get("state", "")):
            write_record(client, job_id, worker_id, jobstate.skipped(json.loads(raw), now, "skipped (worker removed)"),
                         expect=raw)
    pipe = client.pipeline()
    pipe.srem(keys.WORKERS, worker_id)
    pipe.delete(keys.worker(worker_id), keys.worker_alive(worker_id), keys.worker_models(worker_id),
                keys.worker_jobs(worker_id), catchup.catchup_key(worker_id))
    pipe.execute()

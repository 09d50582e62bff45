"""Running this worker's share of a job: checks, lock, pull, final state, inventory."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from eldric.cluster import jobstate
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving
from eldric.core.digests import Digest
from eldric.core.names import ModelName
from worker_agent.distributing import distribute, pull_from_ollama
from worker_agent.installing import uninstall_entry
from worker_agent import membership
from worker_agent.errors import JobExpiredError, NotEligibleError
from eldric.cluster.jobstore import Progress
from worker_agent.runtime import Agent

LOCK_TTL = 6 * 3600  # safety net only: a restarting agent clears its own stale locks


def own_record(agent: Agent, job_id: str) -> dict | None:
    raw = agent.redis.hget(keys.job_workers(job_id), agent.worker_id)
    return json.loads(raw) if raw else None


def run_pull_job(agent: Agent, job_id: str, model: str) -> dict:
    """Do this worker's part of pull job `job_id`; duplicates and finished work are skipped."""
    return _run_job(agent, job_id, lambda progress: pull_from_ollama(agent, model, progress))


def run_distribute_job(agent: Agent, job_id: str, model: str) -> dict:
    """Bring `model` to this node from the job's source (registry, worker, url, ollama)."""
    def work(progress: Progress) -> dict:
        meta = agent.redis.hgetall(keys.job(job_id))
        options = json.loads(meta.get("options") or "{}")
        secrets = agent.redis.hgetall(keys.job_secrets(job_id))
        return distribute(agent, model, options, secrets, progress)
    return _run_job(agent, job_id, work)


def run_delete_job(agent: Agent, job_id: str, model: str) -> dict:
    """Remove the model from this node (Ollama store or file catalog); blobs other models use stay."""
    def delete(progress: Progress) -> dict:
        progress.update(force=True, state=jobstate.PULLING, status=f"deleting {model}")
        removed = delete_local_model(agent, model)
        progress.finish(total=0, status="deleted" if removed is not None else "not present")
        return {"model": model, "deleted": removed is not None, "blobs_removed": len(removed or [])}
    return _run_job(agent, job_id, delete)


def delete_local_model(agent: Agent, model: str) -> list[str] | None:
    """None when the node does not have it; else the digests of the blobs that went with it."""
    entry = agent.catalog.delete(model) if agent.catalog.get(model) else None
    if entry is not None:
        uninstall_entry(agent, entry)
        used = agent.store.referenced_digests() | agent.catalog.referenced_digests()
        removed = []
        for f in [] if entry.get("shared") else entry.get("files", []):
            digest = Digest.parse(f["sha256"])
            if digest.hex not in used and agent.store.blobs.delete(digest):
                removed.append(str(digest))
        return removed
    name = ModelName.parse(model)
    if agent.store.read_manifest(name) is None:
        return None
    return agent.store.delete_model(name, keep=agent.catalog.referenced_digests())


def _run_job(agent: Agent, job_id: str, work: Callable[[Progress], dict]) -> dict:
    meta = agent.redis.hgetall(keys.job(job_id))
    if not meta:
        return {"skipped": "job no longer exists"}
    record = own_record(agent, job_id) or {}
    if jobstate.is_terminal(record.get("state", "")):
        return {"skipped": f"already {record['state']}"}
    if not is_model_serving(agent.settings.worker_type):
        raise NotEligibleError(f"{agent.settings.worker_type} workers do not take model work")
    if time.time() > float(meta.get("deadline_at", "inf")):
        raise JobExpiredError("job deadline passed before this worker could start")
    token = uuid.uuid4().hex
    lock = keys.job_lock(job_id, agent.worker_id)
    if not agent.redis.set(lock, token, nx=True, ex=LOCK_TTL):
        return {"skipped": "already running on this worker"}
    try:
        progress = Progress(agent.redis, job_id, agent.worker_id, min_interval=agent.settings.progress_seconds)
        result = work(progress)
        agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id)
        refresh_inventory(agent)
        return result
    finally:
        if agent.redis.get(lock) == token:
            agent.redis.delete(lock)


def refresh_inventory(agent: Agent) -> list[dict]:
    models = agent.store.list_models() + agent.catalog.inventory()
    membership.publish_inventory(agent.redis, agent.worker_id, models)
    return models


def unfinished_jobs(agent: Agent) -> list[tuple[str, dict]]:
    """This worker's assigned jobs that are not finished (to resume after a restart)."""
    out = []
    for job_id in agent.redis.smembers(keys.worker_jobs(agent.worker_id)):
        meta = agent.redis.hgetall(keys.job(job_id))
        record = own_record(agent, job_id)
        if not meta or record is None or jobstate.is_terminal(record.get("state", "")):
            agent.redis.srem(keys.worker_jobs(agent.worker_id), job_id)
            continue
        # The process that held this lock is gone: we are its restart.
        agent.redis.delete(keys.job_lock(job_id, agent.worker_id))
        out.append((job_id, meta))
    return out

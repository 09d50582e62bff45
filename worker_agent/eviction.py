"""Eviction: keeping the store's filesystem under its high watermark, least-recently-used models first.

When the filesystem holding the store (ELDRIC_OLLAMA_MODELS) is above ELDRIC_DISK_HIGH_WATERMARK, models
go, least recently used first (`last_used` of the inventory: worker_agent/last_use.py), until it is under
ELDRIC_DISK_LOW_WATERMARK. A pull with `make_room` that does not fit frees what it needs by the same rule
(`make_room`). Never evicted, each with the reason the plan shows:
- a model a pin needs here: pinned to this worker (or to every worker), or a copy among the N a replica pin
  counts (eldric/cluster/pins.py `needed_replicas`; before that existed every pinned model was kept);
- a model a backend has loaded now (worker_agent/loaded_models.py: Ollama's /api/ps, llama.cpp's and
  vLLM's /v1/models);
- a model a running job needs: one of this worker's unfinished jobs is on it (a pull, distribute or copy,
  or the source of a copy), or one of its blobs is leased by a running pull (worker_agent/blob_leases.py).

The agent decides, since only it knows its disk, its backends and its leases now; the controller's
`GET /api/v1/workers/{id}/eviction-plan` asks it (`plan`, which changes nothing). Each eviction is a
delete job of this worker (eldric/cluster/jobs: kind `delete`, `options.reason` "evicted", `options.why`)
that the agent runs itself, so it is in the job history like any delete, and it counts in
`eldric:evictions` (the controller's `eldric_evictions_total`).

When: a beat entry asks every online inference and cloud worker every ELDRIC_EVICTION_SECONDS
(eldric/cluster/schedules.py), rather than after each install: a check after installs only would miss a
disk filled by anything else, and the beat's period bounds how long a node stays above its high watermark.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eldric.cluster import keys, pins
from eldric.cluster.jobs.store import create_job
from eldric.core.errors import InvalidNameError
from eldric.core.names import ModelName
from eldric.transfer.diskspace import ensure_space, format_size
from eldric.transfer.errors import InsufficientSpaceError
from worker_agent import last_use, loaded_models, serving

log = logging.getLogger(__name__)

EVICTED = "evicted"  # a delete job's options.reason when eviction started it
EVICTION_SOURCE = "eviction"  # its job's source
DELETE_DEADLINE = 3600.0

# (agent, job id, model) -> the delete's result: job_runner.run_delete_job, passed in (it imports this module)
Delete = Callable[[object, str, str], dict]


@dataclass(frozen=True)
class Disk:
    total: int
    used: int
    free: int

    @classmethod
    def of(cls, path: Path) -> Disk:
        u = shutil.disk_usage(path)
        return cls(u.total, u.total - u.free, u.free)

    def percent(self, used: int | None = None) -> float:
        return 100.0 * (self.used if used is None else used) / self.total if self.total else 0.0


@dataclass
class Choice:
    """What would go (least recently used first, with why), what may not and why, what stays unneeded."""

    to_free: int
    evict: list[dict] = field(default_factory=list)
    protected: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(int(m["size"]) for m in self.evict)

    @property
    def short(self) -> int:
        """Bytes still to free after every model that may go went (0: enough may go)."""
        return max(0, self.to_free - self.freed)


def ago(seconds: float) -> str:
    """`3 days ago`, `5 hours ago`, `12 minutes ago`, `just now`."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def choose(models: list[dict], protected: Mapping[str, str], to_free: int, *, reason: str,
           now: float | None = None) -> Choice:
    """The least-recently-used models not `protected` (name -> why) whose sizes add up to `to_free`.

    Ties (same last use) go by name, so the plan is the same every time it is asked.
    """
    now = time.time() if now is None else now
    out = Choice(to_free=max(0, to_free))
    for m in sorted(models, key=lambda m: (float(m.get("last_used") or 0), m["name"])):
        entry = {"name": m["name"], "size": int(m.get("size") or 0), "last_used": m.get("last_used")}
        why = protected.get(m["name"])
        if why:
            out.protected.append({**entry, "why": why})
        elif out.freed < out.to_free:
            used = f"last used {ago(now - float(m.get('last_used') or 0))}" if m.get("last_used") else "never used"
            out.evict.append({**entry, "why": f"{reason}; least recently used ({used})"})
        else:
            out.kept.append(entry)
    return out


def _short(name: str) -> str:
    try:
        return ModelName.parse(name).short
    except (InvalidNameError, ValueError):
        return name


def pin_protections(client, worker_id: str, names: list[str]) -> dict[str, str]:
    """name -> why, for the models a pin needs on this worker."""
    found = {_short(p.model): p for p in pins.list_pins(client)}
    needed_of = getattr(pins, "needed_replicas", None)
    needed = {_short(m) for m in needed_of(client, worker_id)} if needed_of else None
    out = {}
    for name in names:
        pin = found.get(_short(name))
        if pin is None:
            continue
        replicas = getattr(pin, "replicas", None)
        if pin.workers is not None and worker_id in pin.workers:
            out[name] = "pinned to this worker"
        elif needed is None:
            out[name] = "pinned (every copy of a pinned model is kept)"
        elif _short(name) in needed:
            out[name] = (f"a replica the pin needs ({replicas} copies wanted)" if replicas is not None
                         else "pinned to every worker")
    return out


def loaded_protections(loaded: list[dict]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for m in loaded:
        out.setdefault(m["name"], []).append(m.get("backend") or "a backend")
    return {name: f"loaded in {', '.join(sorted(set(b)))}" for name, b in out.items()}


def job_protections(agent, models: list[dict], *, except_job: str | None = None) -> dict[str, str]:
    """name -> why, for models this worker's unfinished jobs are on, or whose blobs a running job leased."""
    client, wid = agent.redis, agent.worker_id
    names = {m["name"] for m in models}
    out: dict[str, str] = {}
    for job_id in sorted(client.smembers(keys.worker_jobs(wid))):
        if job_id == except_job:
            continue
        meta = client.hgetall(keys.job(job_id))
        if not meta or meta.get("kind") == "delete":
            continue
        options = json.loads(meta.get("options") or "{}")
        for model in (meta.get("model"), options.get("source") if meta.get("kind") == "copy" else None):
            for name in names:
                if model and _short(str(model)) == _short(name):
                    out.setdefault(name, f"a running {meta.get('kind', 'job')} job needs it ({job_id[:12]})")
    with agent.store.leases.exclusive():
        leased = agent.store.leases.leased()
    if leased:
        # Its weights, not any blob: models pushed alike share their small template and license blobs, which a
        # delete keeps anyway while they are leased (OllamaStore.delete_model); a running job that counts on
        # the weights (a new tag of the same file) would find them gone, and evicting them frees nothing.
        for name in names - set(out):
            if _weights(agent, name) in leased:
                out[name] = "a running job has its weights leased"
    return out


def _weights(agent, name: str) -> str | None:
    """The hex digest of the model's largest blob (its weights), None when unknown."""
    entry = agent.catalog.get(name)
    if entry is not None:
        files = [(int(f.get("size") or 0), str(f.get("sha256", "")).removeprefix("sha256:"))
                 for f in entry.get("files", [])]
    else:
        try:
            found = agent.store.read_manifest(ModelName.parse(name))
        except (InvalidNameError, ValueError, OSError):
            return None
        files = [(b.size, b.digest.hex) for b in found[1].blobs()] if found else []
    return max(files)[1] if files else None


def protections(agent, models: list[dict], *, except_job: str | None = None,
                loaded: list[dict] | None = None) -> dict[str, str]:
    """Every model that may not go, with the first reason that holds (pin, loaded, running job)."""
    loaded = loaded_models.publish(agent) if loaded is None else loaded  # asked now, not a period old
    out = job_protections(agent, models, except_job=except_job)
    out.update(loaded_protections(loaded))
    out.update(pin_protections(agent.redis, agent.worker_id, [m["name"] for m in models]))
    return {m["name"]: out[m["name"]] for m in models if m["name"] in out}


def _models(agent, save: bool = True) -> list[dict]:
    return last_use.stamp_inventory(agent, serving.local_models(agent), save=save)


def _watermark_need(agent, disk: Disk) -> tuple[int, str, tuple[int, int] | None]:
    bounds = agent.settings.watermarks.bounds(disk.total)
    if bounds is None or disk.used <= bounds[0]:
        return 0, "", bounds
    low = bounds[1]
    wm = agent.settings.watermarks
    now_at = f"{disk.percent():.0f}%" if wm.high.percent is not None else f"{format_size(disk.used)} used"
    to_low = f" (to under low {wm.low.text})" if wm.low.text != wm.high.text else ""
    return disk.used - low, f"disk {now_at} > high {wm.high.text}{to_low}", bounds


def plan(agent, now: float | None = None) -> dict:
    """What eviction would remove now and why, what it may not and why; changes nothing."""
    disk = Disk.of(agent.store.root)
    to_free, reason, bounds = _watermark_need(agent, disk)
    models = _models(agent, save=False)
    choice = choose(models, protections(agent, models), to_free, reason=reason, now=now)
    return {"worker": agent.worker_id, "disk": {"total": disk.total, "used": disk.used, "free": disk.free,
                                                "percent": round(disk.percent(), 1)},
            "high_watermark": bounds[0] if bounds else None, "low_watermark": bounds[1] if bounds else None,
            "over_high": to_free > 0, "to_free": choice.to_free, "evict": choice.evict,
            "protected": choice.protected, "kept": choice.kept, "short": choice.short}


def record_fields(settings, path: Path) -> dict:
    """`disk_high_watermark` / `disk_low_watermark` in bytes used, for the worker record ("" when off)."""
    try:
        bounds = settings.watermarks.bounds(Disk.of(path).total)
    except OSError:
        bounds = None
    return {"disk_high_watermark": bounds[0] if bounds else "", "disk_low_watermark": bounds[1] if bounds else ""}


def evict_over_high(agent, delete: Delete | None = None, now: float | None = None) -> list[str]:
    """Above the high watermark: evict until under the low one; the delete jobs' ids."""
    disk = Disk.of(agent.store.root)
    to_free, reason, bounds = _watermark_need(agent, disk)
    if not to_free:
        return []
    low = bounds[1]
    return _evict(agent, to_free, reason, delete or _run_delete, done=lambda d: d.used <= low, now=now)


def make_room(agent, wanted_free: int, what: str, delete: Delete, *, job_id: str | None = None) -> list[str]:
    """Evict by the same rules until `wanted_free` bytes are free on the store's filesystem (a pull's
    `make_room`); the delete jobs' ids. What cannot be freed is the caller's refusal to report."""
    disk = Disk.of(agent.store.root)
    if disk.free >= wanted_free:
        return []
    reason = f"make room for {what}: needs {format_size(wanted_free)} free, has {format_size(disk.free)}"
    return _evict(agent, wanted_free - disk.free, reason, delete, done=lambda d: d.free >= wanted_free,
                  except_job=job_id)


def _evict(agent, to_free: int, reason: str, delete: Delete, *, done: Callable[[Disk], bool],
           except_job: str | None = None, now: float | None = None) -> list[str]:
    models = _models(agent)
    choice = choose(models, protections(agent, models, except_job=except_job), to_free, reason=reason, now=now)
    started = []
    for victim in choice.evict:
        if done(Disk.of(agent.store.root)):  # shared blobs free less than sizes say, reflinks more: measure
            break
        job_id = create_job(agent.redis, kind="delete", model=victim["name"], targets=[agent.worker_id],
                            source=EVICTION_SOURCE, deadline_seconds=DELETE_DEADLINE,
                            options={"reason": EVICTED, "why": victim["why"]})
        log.info("evicting %s (%s): job %s", victim["name"], victim["why"], job_id,
                 extra={"job_id": job_id, "worker_id": agent.worker_id})
        delete(agent, job_id, victim["name"])
        agent.redis.hincrby(keys.EVICTIONS, agent.worker_id, 1)
        started.append(job_id)
    if choice.short and not done(Disk.of(agent.store.root)):
        log.warning("eviction could not free enough (%s short): %s", format_size(choice.short),
                    "; ".join(f"{p['name']}: {p['why']}" for p in choice.protected) or "nothing else to evict")
    return started



def _run_delete(agent, job_id: str, model: str) -> dict:
    # job_runner imports the pull and distribute code, which ask `ensure_room`: imported when first needed
    from worker_agent.job_runner import run_delete_job
    return run_delete_job(agent, job_id, model)


def wants_room(agent, job_id: str | None) -> bool:
    """The job's `make_room` option (POST /api/v1/models/pull or distribute with "make_room": true)."""
    if not job_id:
        return False
    try:
        return bool(json.loads(agent.redis.hget(keys.job(job_id), "options") or "{}").get("make_room"))
    except ValueError:
        return False


def ensure_room(agent, job_id: str | None, directory: Path, needed: int, what: str, reserve: int = 1 << 30,
                delete: Delete = _run_delete) -> None:
    """`ensure_space`, and for a job with `make_room` that does not fit: evict first, then check again;
    what still does not fit is the ordinary refusal, naming what eviction could not remove and why."""
    try:
        ensure_space(directory, needed, what, reserve)
        return
    except InsufficientSpaceError:
        if not wants_room(agent, job_id):
            raise
    evicted = make_room(agent, needed + reserve, what, delete, job_id=job_id)
    try:
        ensure_space(directory, needed, what, reserve)
    except InsufficientSpaceError as exc:
        models = _models(agent)
        kept = protections(agent, models, except_job=job_id)
        why = "; ".join(f"{n}: {w}" for n, w in sorted(kept.items())) or "nothing else to evict"
        raise InsufficientSpaceError(f"{exc}; make_room evicted {len(evicted)} model(s), the rest may not go "
                                     f"({why})") from None


def room_check(agent, job_id: str | None) -> Callable[[Path, int, str, int], None]:
    """`ensure_space`'s signature, with the job's make_room (for pulling.pull_model, which has no agent)."""
    return lambda directory, needed, what, reserve=1 << 30: ensure_room(agent, job_id, directory, needed, what, reserve)

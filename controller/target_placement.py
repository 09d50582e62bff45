"""A pull's or distribution's `replicas` / `selector` / `spread`: which of the chosen targets get the model.

The rule itself is eldric/cluster/placement.py (`place`); this module gives it the workers as their
records say (labels, free disk, GPUs through capacity.facts_of), whether each holds the model, and
turns its answer into a job: the chosen workers as targets with their `placement_reason`, the
refused ones as parts skipped at once with the reason when fewer than asked for fit, a 409 naming
every worker's reason when none does (nothing queued). A request without any of the three keeps
the old targets (every inference and cloud worker, or the listed ones), so Ollama's /api/pull and
older clients see no change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import json

import redis

from eldric.cluster import keys, workers
from eldric.cluster.placement import OFFLINE, Placement, place, selector_mismatch
from eldric.core.request_errors import ConflictError

MAX_REASONS_SHOWN = 20  # a 409 over a 1,000-worker fleet names the first ones and counts the rest


@dataclass(frozen=True)
class PlacementRequest:
    replicas: int | None = None
    selector: dict[str, str] = field(default_factory=dict)
    spread: str | None = None
    gpu: bool = False  # only workers with a GPU whose free memory holds the model

    @classmethod
    def from_body(cls, body: dict) -> PlacementRequest | None:
        """The request's placement keys (validated by the schema), None when it has none."""
        if body.get("replicas") is None and not body.get("selector") and not body.get("spread") \
                and not body.get("gpu"):
            return None
        return cls(body.get("replicas"), dict(body.get("selector") or {}), body.get("spread") or None,
                   bool(body.get("gpu")))


@dataclass(frozen=True)
class PlacedTargets:
    targets: list[str]
    reasons: dict[str, str]
    skipped: dict[str, str]
    options: dict  # the job's options["placement"]: what was asked and what placement noticed


def worker_views(client: redis.Redis, ids: list[str], model: str) -> list[dict]:
    """Each worker as `place` reads it: its record, online, its model count and whether it holds `model`,
    with the copies already on their way to it counted in (five pipelined round trips whatever the size).

    Without that, placement answers from disks as they are now: 100 pulls of replicas=3 sent within a
    second would all choose the same three roomiest workers, since no byte has landed yet. So each
    unfinished pull or distribution a worker has counts as one more model, and, when its job was placed
    (its options say the size), its bytes come off the worker's free disk.
    """
    rows = workers.rows(client, ids)
    held = workers.held(client, ids, [model])
    pending = _pending(client, ids)
    out = []
    for wid, row in zip(ids, rows, strict=True):
        if not row.record:
            continue
        count, size = pending.get(wid, (0, 0))
        view = dict(row.record, id=wid, online=row.online, models=row.models + count, holds=bool(held[wid]))
        if size and row.record.get("free_disk") not in (None, ""):
            view["free_disk"] = str(int(workers.number(row.record["free_disk"])) - size)
        out.append(view)
    return out


INCOMING_KINDS = ("pull", "distribute")


def _pending(client: redis.Redis, ids: list[str]) -> dict[str, tuple[int, int]]:
    """worker id -> (copies on their way to it, their bytes when known), from its unfinished jobs."""
    unfinished = workers.job_ids(client, ids)
    job_ids = sorted(set().union(*unfinished.values())) if unfinished else []
    if not job_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), ["kind", "options"])
    sizes: dict[str, int] = {}
    for job_id, (kind, options) in zip(job_ids, pipe.execute(), strict=True):
        if kind in INCOMING_KINDS:
            sizes[job_id] = _placed_size(options)
    out = {}
    for wid, jobs in unfinished.items():
        incoming = [sizes[j] for j in jobs if j in sizes]
        if incoming:
            out[wid] = (len(incoming), sum(incoming))
    return out


def _placed_size(options: str | None) -> int:
    try:
        return int((json.loads(options or "{}").get("placement") or {}).get("size") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


def place_targets(client: redis.Redis, ids: list[str], request: PlacementRequest, *, model: str,
                  size: int | None, reserve: int) -> PlacedTargets:
    """Place `model` over the candidate worker `ids` (already checked to take model work)."""
    views = worker_views(client, ids, model)
    found = place(views, model=model, size=size or 0, replicas=request.replicas, selector=request.selector,
                  spread=request.spread, reserve=reserve, needs_gpu=request.gpu)
    if not found.chosen:
        raise ConflictError(_nothing_fits(found, model))
    matching = {w["id"] for w in views if selector_mismatch(w, request.selector) is None}
    targets = found.ids
    skipped: dict[str, str] = {}
    if request.replicas is None:
        # every worker, as before: an offline one keeps its pending part and is caught up when it returns
        targets += [wid for wid, why in found.rejected if why == OFFLINE and wid in matching]
        skipped = {wid: why for wid, why in found.rejected if why != OFFLINE and wid in matching}
    elif found.is_short(request.replicas):
        skipped = {wid: why for wid, why in found.rejected if wid in matching}
    options = {"replicas": request.replicas, "selector": request.selector, "spread": request.spread,
               "gpu": request.gpu, "size": size, "reserve": reserve, "placed": len(found.chosen),
               "not_selected": len(views) - len(matching)}
    if found.notes:
        options["notes"] = found.notes
    return PlacedTargets(targets, dict(found.chosen), skipped, options)


def _nothing_fits(found: Placement, model: str) -> str:
    shown = "; ".join(f"{wid}: {why}" for wid, why in found.rejected[:MAX_REASONS_SHOWN])
    more = len(found.rejected) - MAX_REASONS_SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    return f"no worker can take '{model}' ({shown or 'no candidate workers'}{tail}); nothing was queued"

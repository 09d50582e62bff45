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

import redis

from eldric.cluster import workers
from eldric.cluster.placement import OFFLINE, Placement, place, selector_mismatch
from eldric.core.request_errors import ConflictError

MAX_REASONS_SHOWN = 20  # a 409 over a 1,000-worker fleet names the first ones and counts the rest


@dataclass(frozen=True)
class PlacementRequest:
    replicas: int | None = None
    selector: dict[str, str] = field(default_factory=dict)
    spread: str | None = None

    @classmethod
    def from_body(cls, body: dict) -> PlacementRequest | None:
        """The request's placement keys (validated by the schema), None when it has none."""
        if body.get("replicas") is None and not body.get("selector") and not body.get("spread"):
            return None
        return cls(body.get("replicas"), dict(body.get("selector") or {}), body.get("spread") or None)


@dataclass(frozen=True)
class PlacedTargets:
    targets: list[str]
    reasons: dict[str, str]
    skipped: dict[str, str]
    options: dict  # the job's options["placement"]: what was asked and what placement noticed


def worker_views(client: redis.Redis, ids: list[str], model: str) -> list[dict]:
    """Each worker as `place` reads it: its record, online, its model count and whether it holds `model`
    (three pipelined round trips whatever the fleet's size)."""
    rows = workers.rows(client, ids)
    held = workers.held(client, ids, [model])
    return [dict(row.record, id=wid, online=row.online, models=row.models, holds=bool(held[wid]))
            for wid, row in zip(ids, rows, strict=True) if row.record]


def place_targets(client: redis.Redis, ids: list[str], request: PlacementRequest, *, model: str,
                  size: int | None, reserve: int) -> PlacedTargets:
    """Place `model` over the candidate worker `ids` (already checked to take model work)."""
    views = worker_views(client, ids, model)
    found = place(views, model=model, size=size or 0, replicas=request.replicas, selector=request.selector,
                  spread=request.spread, reserve=reserve)
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
               "size": size, "reserve": reserve, "placed": len(found.chosen),
               "not_selected": len(views) - len(matching)}
    if found.notes:
        options["notes"] = found.notes
    return PlacedTargets(targets, dict(found.chosen), skipped, options)


def _nothing_fits(found: Placement, model: str) -> str:
    shown = "; ".join(f"{wid}: {why}" for wid, why in found.rejected[:MAX_REASONS_SHOWN])
    more = len(found.rejected) - MAX_REASONS_SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    return f"no worker can take '{model}' ({shown or 'no candidate workers'}{tail}); nothing was queued"

"""Where N copies of a model go: a pure choice over worker views, shared by pull, distribute and pins.

`place` ranks the workers a request may use and keeps the first N, saying why for each one it
took (`placement_reason`) and each one it could not take. The rule (issue 25), in order:

1. only online workers that match the selector (`type` is the worker's type, any other key one of
   its labels) may take a copy;
2. when the model asks for a GPU, a worker needs one GPU with at least the model's size free;
3. workers that already hold the model come first (locality: no bytes move, reason "holds it");
   the others need room: free disk on the model store minus the reserve must be at least the
   model's size; a worker whose record has no disk figure (an agent older than issue 25) is taken
   last, on trust, since its agent still refuses a transfer that does not fit;
4. then the most free disk, then the fewest models, ties broken by worker id (stable: the same
   fleet always gets the same answer);
5. with `spread` (a label name, e.g. "zone"), at most ceil(N / zones) copies per value of that
   label, where zones counts the values among the workers that could take a copy (a zone whose
   every worker is full does not hold back the others). A worker without the label is a zone of
   its own kind ("unset").

`replicas=None` means every eligible worker (the "pull to all" of before). Workers beyond the
first N that could have taken a copy are in neither list: they were not needed, not refused.
The function reads worker facts only through `capacity.facts_of`, touches no Redis and is
unit-tested alone (tests/unit/test_placement.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from eldric.cluster.capacity import facts_of

HOLDS_IT = "holds it"
OFFLINE = "offline"
UNSET = "unset"


@dataclass(frozen=True)
class Placement:
    chosen: list[tuple[str, str]] = field(default_factory=list)  # (worker id, placement_reason), best first
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (worker id, why it may not take a copy)
    notes: list[str] = field(default_factory=list)  # facts about the request itself (a spread label nobody has)

    @property
    def ids(self) -> list[str]:
        return [wid for wid, _ in self.chosen]

    def is_short(self, replicas: int | None) -> bool:
        """Fewer copies placed than asked for (None: every eligible worker, never short unless none)."""
        return not self.chosen or (replicas is not None and len(self.chosen) < replicas)


@dataclass(frozen=True)
class _Candidate:
    id: str
    holds: bool
    free: int | None  # bytes free after the reserve, None when the worker reports no disk figure
    models: int
    zone: str

    def rank(self) -> tuple:
        # holders first; then known room before unknown, most free first; fewest models; id
        return (not self.holds, self.free is None, -(self.free or 0), self.models, self.id)

    def reason(self) -> str:
        if self.holds:
            return HOLDS_IT
        if self.free is None:
            return f"free disk unknown, {self.models} models"
        return f"room: {human_size(self.free)} free after the reserve, {self.models} models"


def human_size(n: int | float) -> str:
    """Bytes as a short binary figure: '9.2 GiB', '48.0 MiB', '512 B'."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def place(workers: list[dict], *, model: str, size: int, replicas: int | None, selector: dict[str, str],
          spread: str | None, reserve: int, needs_gpu: bool = False) -> Placement:
    """Choose up to `replicas` workers for `model` (`size` bytes); see the module docstring for the rule.

    Each worker is a view: `id`, `type`, `online`, the record fields `facts_of` reads, and `models`
    (the names it holds, or just their count with a `holds` flag).
    """
    candidates: list[_Candidate] = []
    rejected: list[tuple[str, str]] = []
    for w in sorted(workers, key=lambda w: str(w.get("id"))):
        found = _candidate(w, model=model, size=size, selector=selector, spread=spread, reserve=reserve,
                           needs_gpu=needs_gpu)
        if isinstance(found, str):
            rejected.append((str(w.get("id")), found))
        else:
            candidates.append(found)
    candidates.sort(key=_Candidate.rank)
    notes = []
    if spread and candidates and all(c.zone == UNSET for c in candidates):
        notes.append(f"spread: no eligible worker has a label {spread!r}, so copies are not spread")
    wanted = len(candidates) if replicas is None else replicas
    cap = _zone_cap(candidates, spread, wanted, notes)
    chosen: list[tuple[str, str]] = []
    per_zone: dict[str, int] = {}
    for c in candidates:
        if len(chosen) >= wanted:
            break
        if per_zone.get(c.zone, 0) >= cap:
            rejected.append((c.id, f"spread: {spread} {c.zone} has its {cap}"))
            continue
        per_zone[c.zone] = per_zone.get(c.zone, 0) + 1
        chosen.append((c.id, c.reason()))
    return Placement(chosen=chosen, rejected=rejected, notes=notes)


def _zone_cap(candidates: list[_Candidate], spread: str | None, wanted: int, notes: list[str]) -> int:
    if not spread or notes:
        return max(wanted, 1)
    zones = len({c.zone for c in candidates}) or 1
    return math.ceil(wanted / zones)


def selector_mismatch(w: dict, selector: dict[str, str]) -> str | None:
    """Why the worker does not match the selector (`type cloud`, `label zone=b`, `label zone unset`), or None."""
    labels = facts_of(w).labels
    for key, want in selector.items():
        have = (w.get("type") or "") if key == "type" else labels.get(key)
        if have != want:
            return f"{key} {have}" if key == "type" else (f"label {key}={have}" if have is not None
                                                            else f"label {key} unset")
    return None


def _candidate(w: dict, *, model: str, size: int, selector: dict[str, str], spread: str | None, reserve: int,
               needs_gpu: bool) -> _Candidate | str:
    """The worker as a candidate, or the reason it may not take a copy."""
    if not w.get("online"):
        return OFFLINE
    mismatch = selector_mismatch(w, selector)
    if mismatch:
        return mismatch
    facts = facts_of(w)
    held = w.get("models")
    holds = bool(w["holds"]) if "holds" in w else isinstance(held, Collection) and model in held
    count = held if isinstance(held, int) else len(held or ())
    zone = facts.labels.get(spread, UNSET) if spread else UNSET
    free = _after_reserve(facts.disk_free, reserve)
    # a holder needs no room (no bytes move), but one without the GPU cannot serve the model either
    if needs_gpu and facts.gpu_memory_free < size:
        return f"no GPU memory: needs {human_size(size)}, has {human_size(facts.gpu_memory_free)}"
    if not holds and free is not None and free < size:
        return f"no room: needs {human_size(size)}, has {human_size(max(free, 0))}"
    return _Candidate(str(w["id"]), holds, free, count, zone)


def _after_reserve(disk_free: int | None, reserve: int) -> int | None:
    return None if disk_free is None else disk_free - reserve

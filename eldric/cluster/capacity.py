"""What a worker says about itself for placement: its labels and capacity, as kept in its record.

The agent writes these fields of `eldric:worker:<id>` at registration and on every heartbeat
(`labels` and `gpus` as JSON, the byte counts as integers); placement, eviction and the views read
them through `facts_of`, so a record written by an older agent (no such fields) reads as no labels,
unknown disk total and no GPUs instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes


@dataclass(frozen=True)
class WorkerFacts:
    labels: dict[str, str] = field(default_factory=dict)
    disk_free: int | None = None  # bytes free on the filesystem of the worker's model store
    disk_total: int | None = None  # bytes in all on that filesystem
    gpus: tuple[Gpu, ...] = ()

    @property
    def gpu_memory_free(self) -> int:
        """The most free memory on one GPU (a model is loaded on one device unless the backend splits it)."""
        return max((g.memory_free for g in self.gpus), default=0)


def record_fields(labels: dict[str, str], disk_free: int | None, disk_total: int | None,
                  gpus: list[Gpu] | tuple[Gpu, ...]) -> dict[str, str]:
    """The record fields the agent writes (Redis hash values are strings)."""
    out = {"labels": json.dumps(dict(sorted(labels.items()))),
           "gpus": json.dumps([g.__dict__ for g in gpus])}
    if disk_free is not None:
        out["free_disk"] = str(int(disk_free))
    if disk_total is not None:
        out["disk_total"] = str(int(disk_total))
    return out


def facts_of(record: dict) -> WorkerFacts:
    """A worker record (raw hash or a parsed view) as facts; anything missing or malformed counts as unknown."""
    return WorkerFacts(labels=_labels(record.get("labels")), disk_free=_int(record.get("free_disk")),
                       disk_total=_int(record.get("disk_total")), gpus=_gpus(record.get("gpus")))


def _loads(raw):
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def _labels(raw) -> dict[str, str]:
    found = _loads(raw)
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items()}


def _int(raw) -> int | None:
    try:
        return int(float(raw)) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _gpus(raw) -> tuple[Gpu, ...]:
    found = _loads(raw)
    if not isinstance(found, list):
        return ()
    out = []
    for g in found:
        try:
            out.append(Gpu(int(g["index"]), str(g["name"]), int(g["memory_total"]), int(g["memory_free"])))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)

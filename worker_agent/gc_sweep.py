"""The GC sweep: this node's garbage found, recorded with when it was first seen, and removed after a grace period.

Three kinds, each found by its owner's rules (this module decides only *when* a find goes):

- `blob`: a file `sha256-<hex>` of the node's blob store that no store manifest, no catalog entry and no
  running job's lease (worker_agent/blob_leases.py) references, and that has no second name (a hard link
  count above one: a backend file made from it, so removing it would free nothing and a backend may serve it);
- `partial`: a partial download or stray lock/temp file that partial cleanup would delete
  (eldric/transfer/partials.stale_partials: its job ended, or nobody touched it for a day);
- `debris`: a backend entry no model of the node owns (worker_agent/debris_sweep.find_debris); only one
  carrying Eldric's install record is ever removed, one an operator placed by hand is listed and kept.

Each sweep compares its finds with the last one's (eldric/cluster/gc.py, by find id): a find keeps the
`first_seen` of the sweep that first saw it, and one that is no longer garbage (a manifest written since,
a catalog entry, a new lease) is dropped from the list. A sweep with removal removes a find only once it
has been garbage for `ELDRIC_GC_GRACE_SECONDS` (default an hour), and decides again just before removing
(a blob under the store's lease lock, as deletes do; a partial under its download lock), so a pull that
starts meanwhile keeps what it counts on. Removed bytes are added to `eldric:gc:bytes` (`eldric_gc_bytes_total`).

Beat runs a sweep with removal on every online worker (`gc-sweep`, ELDRIC_GC_SWEEP_SECONDS); `POST /api/v1/gc`
(`eldric gc`) asks for one now. The debris sweep (ELDRIC_DEBRIS_SWEEP) keeps its own report; the GC sweep
is what removes debris after its grace without a person.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from eldric.cluster import gc
from eldric.core.digests import Digest
from eldric.transfer.diskspace import format_size
from eldric.transfer.partials import MAX_AGE_SECONDS, Stale, remove_stale, stale_partials
from worker_agent import debris_sweep
from worker_agent.fanout import leave_swarms
from worker_agent.partial_cleanup import job_ended_check
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)

_BLOB_NAME = re.compile(r"^sha256-([0-9a-f]{64})$")


@dataclass
class SweepResult:
    finds: list[gc.Find]  # what stays garbage after this sweep
    removed: list[gc.Find]

    def to_json(self) -> dict:
        return {"finds": [f.to_json() for f in self.finds], "removed": [f.to_json() for f in self.removed],
                "removed_bytes": sum(f.bytes for f in self.removed)}


@dataclass(frozen=True)
class _Candidate:
    find: gc.Find
    remove: object  # () -> bool: removes it if it is still garbage; None: not by itself (blobs go together; debris by hand never)


def sweep(agent: Agent, *, remove: bool, grace: float | None = None, partial_max_age: float | None = None,
          now: float | None = None) -> SweepResult:
    """Find this node's garbage; with `remove`, remove what has been garbage for `grace` seconds; publish the rest."""
    grace = agent.settings.gc_grace_seconds if grace is None else grace
    max_age = MAX_AGE_SECONDS if partial_max_age is None else partial_max_age
    now = time.time() if now is None else now
    previous = gc.read_finds(agent.redis, agent.worker_id)
    candidates = [*_blobs(agent), *_partials(agent, max_age), *_debris(agent, grace)]
    kept, removed, due_blobs = [], [], []
    for c in candidates:
        before = previous.get(c.find.id)
        first_seen = before.first_seen if before is not None else now
        find = replace(c.find, first_seen=first_seen, removable_at=first_seen + grace)
        due = remove and now >= find.removable_at
        if due and find.kind == gc.BLOB:
            due_blobs.append(find)  # removed together below: one look at the references for all of them
        elif due and c.remove is not None and c.remove():
            removed.append(find)
        else:
            kept.append(find)
    gone = _remove_blobs(agent, due_blobs)
    removed += [f for f in due_blobs if f.digest in gone]
    kept += [f for f in due_blobs if f.digest not in gone]
    for f in removed:
        log.info("GC removed %s %s (%s): garbage since %.0f s", f.kind, f.path, format_size(f.bytes), now - f.first_seen)
    gone = [Digest.parse(f.digest) for f in removed if f.kind == gc.BLOB and f.digest]
    if gone:
        leave_swarms(agent.redis, agent.worker_id, agent.store.blobs, gone)
    gc.publish(agent.redis, agent.worker_id, kept, swept_at=now, grace=grace, removed=removed)
    return SweepResult(kept, removed)


def _referenced(agent: Agent) -> set[str]:
    """Hex digests a manifest, a catalog entry or a live lease references (call under the store's lease lock)."""
    return agent.store.leases.leased() | agent.store.referenced_digests() | agent.catalog.referenced_digests()


def _blobs(agent: Agent) -> list[_Candidate]:
    root = agent.store.blobs.root
    if not root.is_dir():
        return []
    with agent.store.leases.exclusive():
        referenced = _referenced(agent)
    out = []
    for path in sorted(root.iterdir()):
        m = _BLOB_NAME.match(path.name)
        if not m or m.group(1) in referenced:
            continue
        st = _stat(path)
        if st is None or st.st_nlink > 1:
            continue  # a backend file is the same inode: removing this name frees nothing
        digest = f"sha256:{m.group(1)}"
        find = gc.Find(id=f"{gc.BLOB}:{digest}", kind=gc.BLOB, path=str(path), bytes=st.st_size, digest=digest,
                       first_seen=0.0, removable_at=0.0)
        out.append(_Candidate(find, None))  # removed by _remove_blobs, all due ones at once
    return out


def _remove_blobs(agent: Agent, finds: list[gc.Find]) -> set[str]:
    """Delete the due blobs through the store's own delete, which decides again under the lease lock (leases and
    manifests); the catalog's references and a second hard link are looked at there too. The digests deleted."""
    if not finds:
        return set()
    digests = [Digest.parse(f.digest) for f in finds if f.digest]

    def keep() -> set[str]:
        linked = {d.hex for d in digests if (st := _stat(agent.store.blobs.path(d))) is not None and st.st_nlink > 1}
        return agent.catalog.referenced_digests() | linked
    return set(agent.store.delete_blobs(digests, keep=keep))


def _partials(agent: Agent, max_age: float) -> list[_Candidate]:
    partial_dir = agent.store.partial_dir
    ended = job_ended_check(agent.redis, agent.worker_id)
    out = []
    for stale in stale_partials(partial_dir, max_age=max_age, is_finished=ended, incoming_dirs=(agent.store.blobs.root,)):
        find = gc.Find(id=f"{gc.PARTIAL}:{stale.name}", kind=gc.PARTIAL, path=str(stale.path), bytes=stale.bytes,
                       first_seen=0.0, removable_at=0.0)

        def remove(stale: Stale = stale) -> bool:
            return remove_stale(partial_dir, stale, max_age=max_age, is_finished=job_ended_check(agent.redis, agent.worker_id))
        out.append(_Candidate(find, remove))
    return out


def _debris(agent: Agent, grace: float) -> list[_Candidate]:
    out = []
    for entry, d in debris_sweep.find_debris(agent, grace=min(grace, debris_sweep.GRACE_SECONDS)):
        note = None if d.placed_by_eldric else "not placed by Eldric: listed, never removed"
        find = gc.Find(id=f"{gc.DEBRIS}:{d.path}", kind=gc.DEBRIS, path=d.path, bytes=d.bytes, note=note,
                       first_seen=0.0, removable_at=0.0)

        def remove(entry=entry, d=d) -> bool:
            return debris_sweep.remove_debris(agent, entry, d, grace=min(grace, debris_sweep.GRACE_SECONDS)).removed
        out.append(_Candidate(find, remove if d.placed_by_eldric else None))
    return out


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None

"""Prometheus `/metrics` on the controller, computed from Redis at each scrape.

Everything is a gauge read from the cluster's records (the controller is stateless,
so there is no process-local counter to keep): jobs and job parts on record by
state, bytes received over the network per source kind, per-worker pull throughput, Celery queue depths,
registered/online workers, pin coverage, mirrored tags with an upstream update, and the inference requests
routed to each worker (requests and errors ever, in flight now: eldric/cluster/inference_load.py, kept in Redis
so every controller counts the same). Nothing here writes to Redis (but for dropping in-flight entries past
their age, which inference_load does on each read).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import redis
from flask import Flask, Response, current_app
from prometheus_client import CollectorRegistry, exposition, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from eldric.cluster.jobs import state as jobstate
from eldric.cluster import gc, inference_load, keys, workers
from eldric.cluster.jobs.reads import all_jobs
from eldric.cluster import pins
from eldric.cluster.mirror_updates import read_updates
from eldric.cluster.queues import MAINTENANCE_QUEUE, WORKER_TYPES, is_valid_worker_id, type_queue, worker_queue

# The classic text format every Prometheus parses (newer clients default to version 1.0.0).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

# kombu's Redis transport keeps a queue's prioritised messages in sibling lists.
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


@dataclass
class Snapshot:
    jobs: Counter = field(default_factory=Counter)  # (kind, state) -> jobs
    parts: Counter = field(default_factory=Counter)  # per-worker state -> job parts
    bytes_by_source: Counter = field(default_factory=Counter)
    current_rate: dict[str, float] = field(default_factory=dict)  # worker -> B/s over its active pulls
    last_rate: dict[str, tuple[float, float]] = field(default_factory=dict)  # worker -> (finished_at, B/s)
    queues: dict[str, int] = field(default_factory=dict)
    workers: list[tuple[str, str, bool]] = field(default_factory=list)  # (id, type, online)
    pin_coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    mirror_updates: int = 0  # mirrored tags whose upstream moved (eldric:mirror:updates)
    routed: dict[str, int] = field(default_factory=dict)  # worker -> inference requests routed to it
    route_errors: dict[str, int] = field(default_factory=dict)  # worker -> routed requests that failed there
    in_flight: dict[str, int] = field(default_factory=dict)  # worker -> routed requests streaming now
    gc_bytes: dict[str, int] = field(default_factory=dict)  # worker -> bytes its GC sweeps removed (eldric/cluster/gc.py)
    evictions: dict[str, int] = field(default_factory=dict)  # worker -> models its agent evicted (eldric:evictions)


# A job's source (its record's `source`) -> the metric label: a handful of values, whatever the cluster pulls.
# "cluster": a model created or pushed through the Ollama API, fetched from the data node's /v2/.
SOURCE_KINDS = {"ollama": "ollama", "registry": "registry", "cluster": "registry", "url": "url", "worker": "peer",
                "peer": "peer"}
SOURCE_KIND_LABELS = ("ollama", "registry", "url", "peer", "other")


def source_label(job_source: str | None) -> str:
    """The source kind of a job (`ollama`, `registry`, `url`, `peer`), `other` for anything else: bounded."""
    return SOURCE_KINDS.get(job_source or "", "other")


def read_snapshot(client: redis.Redis, *, stale_after: float, now: float | None = None) -> Snapshot:
    now = time.time() if now is None else now
    snap = Snapshot()
    ids = workers.registered_ids(client)
    kinds, alive = workers.types(client, ids), workers.online_flags(client, ids)
    snap.workers.extend((wid, kinds[wid], alive[wid]) for wid in ids if kinds[wid] is not None)
    _read_jobs(client, snap, alive, stale_after, now)
    snap.queues = _queue_depths(client, [type_queue(t) for t in WORKER_TYPES] + [MAINTENANCE_QUEUE]
                                + [worker_queue(w) for w in ids if is_valid_worker_id(w)])
    found = pins.list_pins(client)
    facts = pins.load_worker_facts(client, [p.model for p in found])
    snap.pin_coverage = {p.model: {k: len(v) for k, v in pins.coverage(p, facts).items()} for p in found}
    snap.mirror_updates = sum(1 for r in read_updates(client).values() if r.get("update_available"))
    snap.routed, snap.route_errors = inference_load.totals(client)
    snap.in_flight = inference_load.in_flight(client, [wid for wid, _, _ in snap.workers])
    snap.gc_bytes = gc.bytes_totals(client)
    snap.evictions = {wid: int(float(n)) for wid, n in client.hgetall(keys.EVICTIONS).items()}
    return snap


def _read_jobs(client: redis.Redis, snap: Snapshot, alive: dict[str, bool], stale_after: float, now: float) -> None:
    for (kind, deadline, source), raw_records in all_jobs(client, ["kind", "deadline_at", "source"]):
        if deadline is None:
            continue
        records = []
        for wid, raw in raw_records.items():
            record, _ = jobstate.derive_worker(json.loads(raw), now=now, alive=alive.get(wid, False),
                                               deadline_at=float(deadline), stale_after=stale_after)
            records.append(record)
            _count_part(snap, wid, record, source_label(source))
        snap.jobs[(kind or "pull", jobstate.job_state(records))] += 1


def _count_part(snap: Snapshot, wid: str, record: dict, source_kind: str) -> None:
    state = record.get("state", jobstate.PENDING)
    snap.parts[state] += 1
    done = jobstate.network_bytes(record)  # throughput is the network's too: bytes found on disk are not a rate
    from_peers = min(done, int(record.get("peer_bytes") or 0))  # fan-out: what other workers sent
    snap.bytes_by_source["peer"] += from_peers
    snap.bytes_by_source[source_kind] += done - from_peers
    started, updated = record.get("started_at"), record.get("updated_at") or record.get("finished_at")
    if not (started and updated and updated > started and done):
        return
    rate = done / (float(updated) - float(started))
    if state in jobstate.ACTIVE:
        snap.current_rate[wid] = snap.current_rate.get(wid, 0.0) + rate
    elif state == jobstate.COMPLETED:
        finished = float(record.get("finished_at") or updated)
        if finished >= snap.last_rate.get(wid, (0.0, 0.0))[0]:
            snap.last_rate[wid] = (finished, rate)


def _queue_depths(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{q}{_KOMBU_PRIORITY_SEP}{step}")
    lengths = pipe.execute()
    width = 1 + len(_KOMBU_PRIORITY_STEPS)
    return {q: sum(lengths[width * i: width * i + width]) for i, q in enumerate(queues)}


def metric_families(snap: Snapshot) -> list[GaugeMetricFamily]:
    jobs = GaugeMetricFamily("eldric_jobs", "Jobs on record by kind and derived state", labels=["kind", "state"])
    for (kind, state), n in sorted(snap.jobs.items()):
        jobs.add_metric([kind, state], n)
    parts = GaugeMetricFamily("eldric_job_workers", "Per-worker parts of jobs on record by state", labels=["state"])
    for state in (jobstate.PENDING, jobstate.PULLING, jobstate.RETRYING, jobstate.OFFLINE,
                  jobstate.COMPLETED, jobstate.FAILED):
        parts.add_metric([state], snap.parts.get(state, 0))
    pulled = GaugeMetricFamily("eldric_pulled_bytes", "Bytes workers received over the network in jobs on record, "
                               "by source kind (ollama, registry, url, peer, other)", labels=["source"])
    for kind in SOURCE_KIND_LABELS:
        pulled.add_metric([kind], snap.bytes_by_source.get(kind, 0))
    current = GaugeMetricFamily("eldric_worker_pull_bytes_per_second",
                                "Throughput of the worker's running pulls (0 when idle)", labels=["worker"])
    last = GaugeMetricFamily("eldric_worker_last_pull_bytes_per_second",
                             "Average throughput of the worker's last completed pull", labels=["worker"])
    up = GaugeMetricFamily("eldric_worker_up", "1 while the worker's agent heartbeats", labels=["worker", "type"])
    for wid, wtype, online in snap.workers:
        current.add_metric([wid], snap.current_rate.get(wid, 0.0))
        if wid in snap.last_rate:
            last.add_metric([wid], snap.last_rate[wid][1])
        up.add_metric([wid, wtype], 1 if online else 0)
    registered = GaugeMetricFamily("eldric_workers", "Registered workers by type", labels=["type"])
    online = GaugeMetricFamily("eldric_workers_online", "Online workers by type", labels=["type"])
    for wtype in WORKER_TYPES:
        registered.add_metric([wtype], sum(1 for _, t, _ in snap.workers if t == wtype))
        online.add_metric([wtype], sum(1 for _, t, o in snap.workers if t == wtype and o))
    queues = GaugeMetricFamily("eldric_queue_messages", "Messages waiting in a Celery queue", labels=["queue"])
    for q, n in snap.queues.items():
        queues.add_metric([q], n)
    pinned = GaugeMetricFamily("eldric_pin_workers", "Eligible workers per pinned model by the model's status",
                               labels=["model", "status"])
    for model, counts in sorted(snap.pin_coverage.items()):
        for status, n in counts.items():
            pinned.add_metric([model, status], n)
    updates = GaugeMetricFamily("eldric_mirror_updates_available",
                                "Tags cached by the data node's mirror whose upstream tag now points at another manifest")
    updates.add_metric([], snap.mirror_updates)
    return [jobs, parts, pulled, current, last, up, registered, online, queues, pinned, updates, *route_families(snap),
            gc_family(snap), eviction_family(snap)]


def _per_worker_counter(name: str, text: str, counts: dict[str, int], snap: Snapshot) -> CounterMetricFamily:
    """A counter per worker, 0 for a registered worker that never counted (so a rate() sees it from the start)."""
    family = CounterMetricFamily(name, text, labels=["worker"])
    for wid in sorted(set(counts) | {w for w, _, _ in snap.workers}):
        family.add_metric([wid], counts.get(wid, 0))
    return family


def gc_family(snap: Snapshot) -> CounterMetricFamily:
    """Bytes the worker's GC sweeps removed, ever (kept in Redis: eldric:gc:bytes)."""
    return _per_worker_counter("eldric_gc_bytes", "Bytes of garbage (unreferenced blobs, stale partials, backend "
                               "debris) the worker's GC sweeps removed", snap.gc_bytes, snap)


def eviction_family(snap: Snapshot) -> CounterMetricFamily:
    """Models the worker's agent evicted above its high disk watermark or to make room (worker_agent/eviction.py)."""
    return _per_worker_counter("eldric_evictions", "Models evicted on the worker (least recently used, above its "
                               "high disk watermark or for a pull with make_room); each is a delete job",
                               snap.evictions, snap)


def route_families(snap: Snapshot) -> list:
    """Routed inference per worker: requests and errors ever (counters), requests in flight (a gauge)."""
    routed = CounterMetricFamily("eldric_route_requests", "Inference requests the controllers routed to the worker",
                                 labels=["worker"])
    errors = CounterMetricFamily("eldric_route_errors", "Routed inference requests that failed on the worker "
                                 "(before the first byte: retried elsewhere; or broken off after it)", labels=["worker"])
    flying = GaugeMetricFamily("eldric_route_in_flight", "Routed inference requests streaming through the worker now",
                               labels=["worker"])
    for wid in sorted(set(snap.routed) | set(snap.route_errors) | {w for w, _, _ in snap.workers}):
        routed.add_metric([wid], snap.routed.get(wid, 0))
        errors.add_metric([wid], snap.route_errors.get(wid, 0))
    for wid, _, _ in snap.workers:
        flying.add_metric([wid], snap.in_flight.get(wid, 0))
    return [routed, errors, flying]


class _SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self):
        yield from metric_families(self.snap)


def render(snap: Snapshot) -> bytes:
    """The text exposition format of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)


def register_metrics(app: Flask) -> None:
    @app.get("/metrics")
    def metrics():
        snap = read_snapshot(current_app.extensions["eldric.redis"],
                             stale_after=float(current_app.config["STALE_WORKER_SECONDS"]))
        return Response(render(snap), headers={"Content-Type": CONTENT_TYPE})

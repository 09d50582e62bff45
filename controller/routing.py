"""Which worker answers an inference request for a model (README "Use your Ollama tools against the cluster").

The rule: only online workers whose inventory says one of their backends serves the model
(its record's `backends`, worker_agent/serving.py) are candidates, never a worker that lacks it;
those where a backend has it loaded now (the agents' loaded-models reports, what `/api/ps`
shows) come first, then the least busy (requests in flight on each worker, counted in Redis by
every controller: eldric.cluster.inference_load), ties broken at random so equal workers share
the load. The caller tries them in that order and moves on when one fails before the first byte.

Which workers serve the model (online, their inventory entry, address, loaded reports) is read in
three round trips and reused for CACHE_SECONDS per controller process: at 1,000 workers x 100 models
that read takes about 100 ms here (2,000 commands), too much for every request, and the facts it
reads are a heartbeat old anyway. What spreads load, the in-flight counts, is read on every
request: two commands on one cluster-wide sorted set (eldric.cluster.inference_load), whatever the
fleet size. A worker that died in the meantime fails before the first byte and the next is tried.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass

import redis

from eldric.cluster import inference_load, workers
from eldric.cluster.queues import is_model_serving
from eldric.core.errors import InvalidNameError
from eldric.core.names import ModelName


CACHE_SECONDS = 1.0  # how long one controller reuses a model's serving workers (in flight is always read)


@dataclass(frozen=True)
class Candidate:
    """A worker that serves the model: where to reach its agent, which backend to use, how busy it is."""

    worker: str
    address: str
    backend: str  # the backend that has it loaded, else the first of the worker's serving it
    loaded: bool
    in_flight: int
    backend_model: str = ""  # the id an OpenAI server lists it under, from the agent's report ("" unknown)
    failed_lately: bool = False  # failed a request before its first byte within inference_load.COOL_DOWN_SECONDS


def model_names(model: str) -> list[str]:
    """The inventory names a requested model may be listed under: as asked, then Ollama's short form
    (`tiny` -> `tiny:latest`); a file model (registry, URL) is listed under exactly its name."""
    names = [model]
    try:
        short = ModelName.parse(model).short
    except (InvalidNameError, ValueError):
        return names
    return names if short == model else [*names, short]


class HolderCache:
    """Per controller process: each model's serving workers as last read (online, address, loaded), reused
    for `seconds`. The in-flight counts are never cached: they are what spreads a burst of requests."""

    def __init__(self, seconds: float = CACHE_SECONDS, source: object = None) -> None:
        self.seconds, self.source = seconds, source  # source: the Redis client it was filled from
        self._found: dict[str, tuple[float, str, list[Candidate]]] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> tuple[str, list[Candidate]] | None:
        with self._lock:
            found = self._found.get(model)
        if found is None or time.monotonic() - found[0] > self.seconds:
            return None
        return found[1], found[2]

    def put(self, model: str, name: str, found: list[Candidate]) -> None:
        with self._lock:
            if len(self._found) > 10_000:  # names clients made up: forget them all at once
                self._found.clear()
            self._found[model] = (time.monotonic(), name, found)


def candidates(client: redis.Redis, model: str, cache: HolderCache | None = None) -> tuple[str, list[Candidate]]:
    """(the model's name as the inventories list it, the workers that can serve it now, unordered)."""
    cached = cache.get(model) if cache is not None else None
    name, found = cached if cached is not None else _read_candidates(client, model)
    if cache is not None and cached is None:
        cache.put(model, name, found)
    if not found:
        return name, []
    busy, failed = inference_load.load(client)  # cached candidates say 0 and False: only those are copied
    return name, [dataclasses.replace(c, in_flight=busy[c.worker], failed_lately=c.worker in failed)
                  if c.worker in busy or c.worker in failed else c for c in found]


def _read_candidates(client: redis.Redis, model: str) -> tuple[str, list[Candidate]]:
    names = model_names(model)
    found: dict[str, tuple[str, dict]] = {}
    for wid, held in workers.online_holding(client, names).items():
        for name in names:  # the name as asked wins over its short form
            record = held.get(name)
            if record and record.get("backends"):
                found[wid] = (name, record)
                break
    if not found:
        return names[-1], []
    ids = sorted(found)
    facts = workers.route_facts(client, ids)
    out = []
    for wid in ids:
        name, record = found[wid]
        address, wtype, reports = facts[wid]
        if not address or not is_model_serving(wtype):
            continue
        loaded_in = [m for m in reports if m.get("name") == name and m.get("backend") in record["backends"]]
        backend = loaded_in[0]["backend"] if loaded_in else record["backends"][0]
        out.append(Candidate(wid, address.rstrip("/"), backend, bool(loaded_in), 0,
                             str(loaded_in[0].get("backend_model") or "") if loaded_in else ""))
    return found[ids[0]][0], out


def rank(found: list[Candidate], rng: random.Random | None = None) -> list[Candidate]:
    """Workers that failed lately last; then loaded first, then fewest requests in flight; equal workers
    in random order."""
    shuffled = list(found)
    (rng or random).shuffle(shuffled)
    return sorted(shuffled, key=lambda c: (c.failed_lately, not c.loaded, c.in_flight))


def loaded_on(client: redis.Redis, model: str) -> tuple[str, list[Candidate]]:
    """The candidates where a backend has the model loaded now (where an unload must go)."""
    name, found = candidates(client, model)
    return name, [c for c in found if c.loaded]

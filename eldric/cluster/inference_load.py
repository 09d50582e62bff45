"""Inference requests routed to each worker: in flight now, and counted ever (README "Use your Ollama tools").

Every controller counts in Redis, so two controllers behind one load balancer agree on which
worker is least busy. In flight is one sorted set of "<worker>|<request id>" scored by start time
rather than a counter per worker: a controller killed mid-stream never runs its decrement, and a counter would stay
too high for good; here an entry older than MAX_REQUEST_SECONDS stops counting (and is removed at
the next read). The totals (requests, errors) are plain hash counters for `/metrics`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import redis

from eldric.cluster import keys

# A stream longer than this stops counting as in flight (a crashed controller's entries end here too).
MAX_REQUEST_SECONDS = 3600.0
# A worker that failed a request before its first byte is tried after the others this long: its loaded
# report (and inventory) lag up to a heartbeat behind a dead backend, and every request meanwhile would
# pay a failed attempt on it first. Still tried when nothing else serves the model.
COOL_DOWN_SECONDS = 30.0


def begin(client: redis.Redis, worker_id: str, now: float | None = None) -> str:
    """Count a request as in flight on the worker (and in its total); returns its id for `end`."""
    request_id = f"{worker_id}|{uuid.uuid4().hex}"
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.ROUTE_IN_FLIGHT, {request_id: time.time() if now is None else now})
    pipe.hincrby(keys.ROUTE_REQUESTS, worker_id, 1)
    pipe.execute()
    return request_id


def end(client: redis.Redis, worker_id: str, request_id: str, *, failed: bool = False,
        before_first_byte: bool = False) -> None:
    """The request is over; `failed` counts it among the worker's errors, `before_first_byte` (with
    `failed`) also puts the worker last for COOL_DOWN_SECONDS."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.ROUTE_IN_FLIGHT, request_id)
    if failed:
        pipe.hincrby(keys.ROUTE_ERRORS, worker_id, 1)
        if before_first_byte:
            pipe.zadd(keys.ROUTE_FAILED, {worker_id: time.time()})
    pipe.execute()


def busy(client: redis.Redis, now: float | None = None) -> Counter:
    """worker id -> requests in flight on it now, for the workers with any (entries past
    MAX_REQUEST_SECONDS dropped on the way). Two commands, reading every request in flight in the
    cluster: they are few beside 1,000 workers."""
    return load(client, now)[0]


def load(client: redis.Redis, now: float | None = None) -> tuple[Counter, set[str]]:
    """(busy: worker id -> requests in flight, the workers that failed before a first byte within
    COOL_DOWN_SECONDS): one round trip of four commands on two cluster-wide sorted sets."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(keys.ROUTE_IN_FLIGHT, "-inf", now - MAX_REQUEST_SECONDS)
    pipe.zrange(keys.ROUTE_IN_FLIGHT, 0, -1)
    pipe.zremrangebyscore(keys.ROUTE_FAILED, "-inf", now - COOL_DOWN_SECONDS)
    pipe.zrange(keys.ROUTE_FAILED, 0, -1)
    _, flying, _, failed = pipe.execute()
    return Counter(member.partition("|")[0] for member in flying), set(failed)


def in_flight(client: redis.Redis, ids: list[str], now: float | None = None) -> dict[str, int]:
    """worker id -> requests in flight on it now (0 for idle ones)."""
    counts = busy(client, now) if ids else Counter()
    return {wid: counts.get(wid, 0) for wid in ids}


def totals(client: redis.Redis) -> tuple[dict[str, int], dict[str, int]]:
    """(requests per worker, errors per worker), ever."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.ROUTE_REQUESTS)
    pipe.hgetall(keys.ROUTE_ERRORS)
    requests_, errors = pipe.execute()
    return ({w: int(n) for w, n in requests_.items()}, {w: int(n) for w, n in errors.items()})

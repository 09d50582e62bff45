"""The answers of the fleet-wide views (GET /api/v1/workers, /api/v1/models), reused for up to a second.

Dashboards poll these views every few seconds; at 1,000 workers one answer costs tens of
milliseconds of CPU (issue 13), and a control plane with many dashboards open would spend its
time rebuilding the same answer. Each controller process keeps the last answer per view and
query, as bytes, for `ELDRIC_VIEW_CACHE_SECONDS` (default 1; 0 turns it off), and builds it once
however many requests arrive meanwhile (single flight). Any write through this process (a
request other than GET) forgets every answer, so a client reads its own changes at once; what
agents change shows within the age bound (their heartbeats are 5 s apart anyway).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flask import Flask, Response, current_app, jsonify, request


class ViewCache:
    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self.clock = max_age, clock
        self._answers: dict[tuple, tuple[float, int, bytes]] = {}  # key -> (built at, generation, body)
        self._building: dict[tuple, threading.Event] = {}  # keys being built now: later requests wait for them
        self._lock = threading.Lock()
        self._generation = 0

    def get(self, key: tuple, build: Callable[[], bytes]) -> bytes:
        if self.max_age <= 0:
            return build()
        while True:
            with self._lock:
                hit, generation = self._answers.get(key), self._generation
                if hit is not None and hit[1] == generation and self.clock() - hit[0] < self.max_age:
                    return hit[2]
                waiting = self._building.get(key)
                if waiting is None:
                    done = self._building[key] = threading.Event()
                    break
            waiting.wait()  # one build per key at a time; then take its answer (or build, if it is stale)
        try:
            body = build()
            with self._lock:
                now = self.clock()
                # Only fresh answers are kept: a client asking for ever new queries (?q=) grows nothing.
                self._answers = {k: v for k, v in self._answers.items() if now - v[0] < self.max_age}
                if generation == self._generation:
                    self._answers[key] = (now, generation, body)
            return body
        finally:
            with self._lock:
                del self._building[key]
            done.set()

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._answers.clear()


def install(app: Flask) -> None:
    app.extensions["eldric.view_cache"] = cache = ViewCache(float(app.config.get("VIEW_CACHE_SECONDS", 1.0)))

    @app.before_request
    def forget_on_write():
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            cache.forget()


def cached_json(key: tuple, build: Callable[[], object]) -> Response:
    """The JSON answer of `build()` (already dumped by its schema), shared for up to the cache's age."""
    source = id(current_app.extensions["eldric.redis"])  # an answer belongs to one Redis (tests swap them)
    body = current_app.extensions["eldric.view_cache"].get((source, *key), lambda: jsonify(build()).get_data())
    return Response(body, mimetype="application/json")

"""GET /api/v1/models/pull-jobs/<id>/events: a job's progress as server-sent events.

The stream is fed by the job's Redis pub/sub channel (every worker progress write is
published there) through the process's one pub/sub connection (controller.event_hub),
and reads the job record only at the start, when a worker finishes, and every few
seconds (so states the readers derive, `offline` and the deadline/stale failures,
reach the client too). Contract (text/event-stream):

    retry: 3000
    event: snapshot   data: the job, exactly as GET /api/v1/models/pull-jobs/<id>
    event: progress   data: {"workers": [records]}  changed workers, coalesced per `flush` interval
    : keep-alive      a comment every `heartbeat` seconds of silence
    event: done       data: the final job (completed, completed_with_skipped, failed, cancelled); the stream ends
    event: end        data: {"reason": "max_seconds" | "gone" | "unavailable"}; the stream ends, reconnect to go on

A record is the same per-worker record as in the job view (`worker`, `state`,
`status`, `percent`, `completed`, `total`, `error`, `updated_at`, ...); records
older than what the client already has are not sent. Records published by a write
also carry `job_state`, the job's state right after that write, so clients never
derive it; the newest is the last record of the event. Records from a re-read (the
reader-derived `offline` and deadline failures) carry no `job_state`; the job's state
then comes with `done`, or the next snapshot. A stream that cannot start (Redis
unreachable) answers 503 in the JSON error format; once started it never fails with
an error: Redis going away ends it with `end {"reason": "unavailable"}`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis
from flask import Response, current_app
from flask.views import MethodView
from eldric.web.blueprints import Blueprint
from marshmallow import Schema, fields, validate

from controller import jobs
from controller.errors import NotFoundError
from controller.event_hub import EventHub, HubUnavailableError, Subscription
from controller.state import offline_grace, redis_client, stale_after
from eldric.cluster import jobstate
from eldric.web.problems import error_response

blp = Blueprint("pull_job_events", __name__, url_prefix="/api/v1/models",
                description="Live progress of pull and distribute jobs (server-sent events)")

FINAL_JOB_STATES = jobstate.JOB_FINAL
log = logging.getLogger(__name__)


class EventQuerySchema(Schema):
    max_seconds = fields.Float(load_default=600.0, validate=validate.Range(min=1, max=3600), metadata={
        "description": "close the stream after this long (event `end`); clients reconnect"})
    heartbeat = fields.Float(load_default=10.0, validate=validate.Range(min=0.5, max=60),
                             metadata={"description": "seconds of silence before a keep-alive comment"})


def format_event(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _newer(record: dict, known: dict[str, tuple]) -> bool:
    """Whether `record` changes what the client knows of its worker (older pub/sub echoes are not)."""
    seen = known.get(record.get("worker"))
    mark = (float(record.get("updated_at") or 0), record.get("state"))
    return seen is None or mark[0] > seen[0] or (mark[0] == seen[0] and mark[1] != seen[1])


def job_event_stream(sub: Subscription, read_job: Callable[[], dict | None], *,
                     heartbeat: float = 10.0, max_seconds: float = 600.0, recheck: float = 2.0,
                     flush: float = 0.25, clock: Callable[[], float] = time.monotonic,
                     recheck_job: Callable[[], dict | None] | None = None) -> Iterator[str]:
    """The SSE text of one job: snapshot, coalesced progress, keep-alives, then done or end.

    `sub` is already confirmed by Redis (so no write falls between it and the snapshot); it is
    closed when the stream ends. `recheck_job` serves the periodic re-reads (default `read_job`):
    a view shared by every stream of the job; the snapshot and the read after a final record
    are always fresh.
    """
    try:
        yield from _stream(sub, read_job, recheck_job or read_job, heartbeat=heartbeat, max_seconds=max_seconds,
                           recheck=recheck, flush=flush, clock=clock)
    except redis.RedisError as exc:
        log.warning("job %s event stream: Redis unavailable (%s)", sub.job_id, exc)
        yield format_event("end", {"reason": "unavailable"})
    finally:
        sub.close()


def _stream(sub: Subscription, read_job: Callable[[], dict | None], recheck_job: Callable[[], dict | None], *,
            heartbeat: float, max_seconds: float, recheck: float, flush: float,
            clock: Callable[[], float]) -> Iterator[str]:
    job = read_job()
    if job is None:
        yield format_event("end", {"reason": "gone"})
        return
    yield "retry: 3000\n" + format_event("snapshot", job)
    if job["state"] in FINAL_JOB_STATES:
        yield format_event("done", job)
        return
    known = {w["worker"]: (float(w.get("updated_at") or 0), w.get("state")) for w in job["workers"]}
    start = last_sent = last_check = clock()
    check_now = False
    while clock() - start < max_seconds:
        # The hub keeps the newest record per worker between takes: one progress event per `flush` at most.
        pending = [r for r in sub.take(timeout=flush) if _newer(r, known)]
        if sub.broken:
            yield format_event("end", {"reason": "unavailable"})
            return
        now = clock()
        if pending:
            check_now |= any(jobstate.is_terminal(r.get("state", "")) for r in pending)
            known.update({r["worker"]: (float(r.get("updated_at") or 0), r.get("state")) for r in pending})
            yield format_event("progress", {"workers": pending})
            last_sent = now
        if check_now or now - last_check >= recheck:
            job = read_job() if check_now else recheck_job()
            check_now, last_check = False, now
            if job is None:
                yield format_event("end", {"reason": "gone"})
                return
            if job["state"] in FINAL_JOB_STATES:
                yield format_event("done", job)
                return
            # The readers' derived states (offline, deadline or stale failures) are never published.
            changed = [w for w in job["workers"] if known.get(w["worker"], (0, None))[1] != w.get("state")]
            if changed:
                known.update({w["worker"]: (float(w.get("updated_at") or 0), w.get("state")) for w in changed})
                yield format_event("progress", {"workers": changed})
                last_sent = now
        if now - last_sent >= heartbeat:
            yield ": keep-alive\n\n"
            last_sent = now
        if pending:  # pace the stream: what arrives meanwhile is coalesced into the next event
            time.sleep(max(0.0, flush - (clock() - now)))
    yield format_event("end", {"reason": "max_seconds"})


_HUB_LOCK = threading.Lock()
class SharedReads:
    """The periodic re-read of a job, shared by every stream of this process that follows it.

    500 streams of one job re-reading it every 2 s would read it 250 times a second; with a
    view at most `max_age` old served to all of them, it is read about once a `max_age`.
    """

    def __init__(self, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self.clock = max_age, clock
        self._views: dict[str, tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str, read: Callable[[], dict | None]) -> dict | None:
        now = self.clock()
        with self._lock:
            hit = self._views.get(job_id)
            if hit is not None and now - hit[0] < self.max_age:
                return hit[1]
        view = read()
        with self._lock:
            self._views[job_id] = (self.clock(), view)
            for old in [j for j, (at, _) in self._views.items() if now - at > 10 * self.max_age]:
                del self._views[old]  # jobs nobody follows any more
        return view


_SHARED_READS = SharedReads()

# Pool connections the streams of one process may hold at the same moment (the rest serve the API).
_STREAM_READS = threading.BoundedSemaphore(16)


def event_hub() -> EventHub:
    """The process's hub, created on first use (so after gunicorn forked its workers)."""
    hub = current_app.extensions.get("eldric.event_hub")
    if hub is None:
        with _HUB_LOCK:
            hub = current_app.extensions.get("eldric.event_hub")
            if hub is None:
                client = redis_client()
                hub = current_app.extensions["eldric.event_hub"] = EventHub(lambda: _connect(client))
    return hub


def _connect(client: redis.Redis) -> redis.client.PubSub:
    pubsub = client.pubsub()
    pubsub.ping()  # fail here, when Redis is down, not at the first subscription
    return pubsub


@blp.route("/pull-jobs/<job_id>/events")
class PullJobEvents(MethodView):
    @blp.arguments(EventQuerySchema, location="query")
    @blp.doc(responses={"200": {"description": "text/event-stream: snapshot, progress, keep-alive, done | end",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        "404": {"description": "no such job"},
                        "503": {"description": "Redis unreachable: live progress cannot start (poll the job)"}})
    def get(self, query: dict, job_id: str):
        """Live progress of one job as server-sent events (the dashboard's bars, `eldric pull`)."""
        client, stale, grace = redis_client(), stale_after(), offline_grace()

        def read_job() -> dict | None:
            # Hundreds of streams opening at once would empty the app's Redis pool (redis-py's
            # default of 100 connections) and fail the rest of the API: they take turns instead.
            if not _STREAM_READS.acquire(timeout=10):
                raise redis.ConnectionError("too many job streams reading at once")
            try:
                return jobs.get_job(client, job_id, stale_after=stale, offline_grace=grace)
            finally:
                _STREAM_READS.release()

        if read_job() is None:
            raise NotFoundError(f"no job {job_id!r}")

        try:
            sub = event_hub().subscribe(job_id)
        except HubUnavailableError as exc:
            return error_response(503, f"live progress unavailable, poll the job instead: {exc}")
        stream = job_event_stream(sub, read_job, heartbeat=query["heartbeat"], max_seconds=query["max_seconds"],
                                  recheck_job=lambda: _SHARED_READS.get(job_id, read_job))
        response = Response(stream, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.call_on_close(sub.close)  # also when the stream never started
        return response

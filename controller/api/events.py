"""GET /api/v1/models/pull-jobs/<id>/events: a job's progress as server-sent events.

The stream is fed by the job's Redis pub/sub channel (every worker progress write is
published there) through the process's one pub/sub connection (controller.event_hub) and
the job's feed (controller.job_feed), shared by every stream of the job in this process: the
job is read at the start, when a record says it ended, and every couple of seconds (so states
the readers derive, `offline` and the deadline/stale failures, reach the client too), once for
all of them. Contract (text/event-stream):

    retry: 3000
    event: snapshot   data: the job, exactly as GET /api/v1/models/pull-jobs/<id>
    event: progress   data: {"workers": [records]}  changed workers, coalesced: one event per 0.25 s,
                      longer for big jobs (at most 250 records a second per job)
    : keep-alive      a comment every `heartbeat` seconds of silence
    event: done       data: the final job (completed, completed_with_skipped, failed, cancelled); the stream ends
    event: end        data: {"reason": "max_seconds" | "gone" | "unavailable" | "behind"}; the stream ends,
                      reconnect to go on ("behind": this client read slower than the job changed)

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

import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis
from flask import Response, current_app
from flask.views import MethodView
from eldric.web.blueprints import Blueprint
from marshmallow import Schema, fields, validate

from eldric.cluster.jobs import reads as jobs
from eldric.core.request_errors import NotFoundError
from controller.event_hub import EventHub, HubUnavailableError, Subscription
from controller.job_feed import format_event, newer
from controller.state import offline_grace, redis_client, stale_after
from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
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


def job_event_stream(sub: Subscription, read_job: Callable[[], dict | None], *,
                     heartbeat: float = 10.0, max_seconds: float = 600.0, recheck: float = 2.0,
                     clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """The SSE text of one job: snapshot, the feed's progress batches, keep-alives, then done or end.

    `sub` is already confirmed by Redis; the snapshot is a read started after that, so no write falls
    in between. Reads are shared with the job's other streams (controller/job_feed.py). `sub` is
    closed when the stream ends.
    """
    try:
        yield from _stream(sub, read_job, heartbeat=heartbeat, max_seconds=max_seconds, recheck=recheck, clock=clock)
    except redis.RedisError as exc:
        log.warning("job %s event stream: Redis unavailable (%s)", sub.job_id, exc)
        yield format_event("end", {"reason": "unavailable"})
    finally:
        sub.close()


def _stream(sub: Subscription, read_job: Callable[[], dict | None], *, heartbeat: float, max_seconds: float,
            recheck: float, clock: Callable[[], float]) -> Iterator[str]:
    feed = sub.feed
    cursor = sub.first_seq
    snap = feed.snapshot(sub.subscribed_at, read_job)
    if snap.view is None:
        yield format_event("end", {"reason": "gone"})
        return
    yield "retry: 3000\n" + snap.text
    if snap.view["state"] in FINAL_JOB_STATES:
        yield format_event("done", snap.view)
        return
    # Records that reached the feed before the snapshot was read may be older than it: filtered, only here.
    known = {w["worker"]: (float(w.get("updated_at") or 0), w.get("state")) for w in snap.view["workers"]}
    start = last_sent = clock()
    while clock() - start < max_seconds:
        batches = feed.wait(cursor, timeout=min(heartbeat, 1.0))
        if feed.broken:
            yield format_event("end", {"reason": "unavailable"})
            return
        if batches is None:  # this client reads slower than the job changes
            yield format_event("end", {"reason": "behind"})
            return
        for batch in batches:
            cursor = batch.seq
            if batch.opened_at <= snap.started:
                fresh = [r for r in batch.records if newer(r, known)]
                if fresh:
                    yield format_event("progress", {"workers": fresh})
            else:
                yield batch.text
            last_sent = clock()
        if feed.final_seen:
            final = feed.final(read_job)
            if final.view is None:
                yield format_event("end", {"reason": "gone"})
                return
            if final.view["state"] in FINAL_JOB_STATES:
                yield final.text
                return
            feed.not_final_yet(final)  # a record's job_state ran ahead of the derived view: keep following
        if feed.recheck_due(recheck):
            view = None
            try:
                view = read_job()
            finally:
                feed.rechecked(view)
            if view is None:
                yield format_event("end", {"reason": "gone"})
                return
        if clock() - last_sent >= heartbeat:
            yield ": keep-alive\n\n"
            last_sent = clock()
    yield format_event("end", {"reason": "max_seconds"})


_HUB_LOCK = threading.Lock()
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

        if not client.exists(keys.job(job_id)):
            raise NotFoundError(f"no job {job_id!r}")

        try:
            sub = event_hub().subscribe(job_id)
        except HubUnavailableError as exc:
            return error_response(503, f"live progress unavailable, poll the job instead: {exc}")
        stream = job_event_stream(sub, read_job, heartbeat=query["heartbeat"], max_seconds=query["max_seconds"])
        response = Response(stream, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.call_on_close(sub.close)  # also when the stream never started
        return response

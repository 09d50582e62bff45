"""GET /api/v1/models/pull-jobs/<id>/events: a job's progress as server-sent events.

The stream is fed by the job's Redis pub/sub channel (every worker progress write
is published there) and reads the job record only at the start, when a worker
finishes, and every few seconds (so states the readers derive, `offline` and the
deadline/stale failures, reach the client too). Contract (text/event-stream):

    retry: 3000
    event: snapshot   data: the job, exactly as GET /api/v1/models/pull-jobs/<id>
    event: progress   data: {"workers": [records]}  changed workers, coalesced per `flush` interval
    : keep-alive      a comment every `heartbeat` seconds of silence
    event: done       data: the final job (completed, completed_with_skipped, failed, cancelled); the stream ends
    event: end        data: {"reason": "max_seconds" | "gone"}; the stream ends, reconnect to go on

A record is the same per-worker record as in the job view (`worker`, `state`,
`status`, `percent`, `completed`, `total`, `error`, `updated_at`, ...); records
older than what the client already has are not sent. Records published by a write
also carry `job_state`, the job's state right after that write, so clients never
derive it; the newest is the last record of the event. Records from a re-read (the
reader-derived `offline` and deadline failures) carry no `job_state`; the job's state
then comes with `done`, or the next snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import redis
from flask import Response
from flask.views import MethodView
from eldric.web.blueprints import Blueprint
from marshmallow import Schema, fields, validate

from controller import jobs
from controller.errors import NotFoundError
from controller.state import offline_grace, redis_client, stale_after
from eldric.cluster import jobstate
from eldric.cluster import keys

blp = Blueprint("pull_job_events", __name__, url_prefix="/api/v1/models",
                description="Live progress of pull and distribute jobs (server-sent events)")

FINAL_JOB_STATES = jobstate.JOB_FINAL


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


def job_event_stream(client: redis.Redis, job_id: str, read_job: Callable[[], dict | None], *,
                     heartbeat: float = 10.0, max_seconds: float = 600.0, recheck: float = 2.0,
                     flush: float = 0.25, clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """The SSE text of one job: snapshot, coalesced progress, keep-alives, then done or end."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_events(job_id))  # before the snapshot, so no write falls in between
    try:
        job = read_job()
        if job is None:
            yield format_event("end", {"reason": "gone"})
            return
        yield "retry: 3000\n" + format_event("snapshot", job)
        if job["state"] in FINAL_JOB_STATES:
            yield format_event("done", job)
            return
        known = {w["worker"]: (float(w.get("updated_at") or 0), w.get("state")) for w in job["workers"]}
        pending: dict[str, dict] = {}
        start = last_sent = last_flush = last_check = clock()
        check_now = False
        while clock() - start < max_seconds:
            message = pubsub.get_message(timeout=flush)
            while message is not None:
                record = _parse(message)
                if record and _newer(record, known):
                    pending.pop(record["worker"], None)  # keep write order: the last record's job_state is the newest
                    pending[record["worker"]] = record
                message = pubsub.get_message(timeout=0)
            now = clock()
            if pending and now - last_flush >= flush:
                check_now |= any(jobstate.is_terminal(r.get("state", "")) for r in pending.values())
                known.update({w: (float(r.get("updated_at") or 0), r.get("state")) for w, r in pending.items()})
                yield format_event("progress", {"workers": list(pending.values())})
                pending.clear()
                last_flush = last_sent = now
            if check_now or now - last_check >= recheck:
                check_now, last_check = False, now
                job = read_job()
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
        yield format_event("end", {"reason": "max_seconds"})
    finally:
        pubsub.close()


def _parse(message: dict) -> dict | None:
    try:
        record = json.loads(message.get("data") or "")
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("worker"), str) else None


@blp.route("/pull-jobs/<job_id>/events")
class PullJobEvents(MethodView):
    @blp.arguments(EventQuerySchema, location="query")
    @blp.doc(responses={"200": {"description": "text/event-stream: snapshot, progress, keep-alive, done | end",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        "404": {"description": "no such job"}})
    def get(self, query: dict, job_id: str):
        """Live progress of one job as server-sent events (the dashboard's bars, `eldric pull`)."""
        client, stale, grace = redis_client(), stale_after(), offline_grace()
        if jobs.get_job(client, job_id, stale_after=stale, offline_grace=grace) is None:
            raise NotFoundError(f"no job {job_id!r}")

        def read_job() -> dict | None:
            return jobs.get_job(client, job_id, stale_after=stale, offline_grace=grace)

        stream = job_event_stream(client, job_id, read_job, heartbeat=query["heartbeat"],
                                  max_seconds=query["max_seconds"])
        return Response(stream, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

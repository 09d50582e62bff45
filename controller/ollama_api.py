"""Ollama's model-management endpoints on the controller, so Ollama tools manage the whole cluster.

`OLLAMA_HOST=controller:8880 ollama pull qwen2.5:0.5b` pulls to every inference and
cloud worker; `/api/tags` lists the cluster's models; `/api/show` and
`/api/delete` act on them. Shapes follow Ollama's docs/api.md and api/types.go.
Inference endpoints are not served here: this is the cluster's model manager.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, UTC
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from controller import agents, pull_jobs
from eldric.cluster.jobs import reads as jobs
from controller.models import cluster_models
from eldric.core.request_errors import BadRequestError, NotFoundError, RequestError
from eldric.cluster.jobs import state as jobstate
from controller.state import inventory_cache, job_limits, offline_grace, producer, redis_client, stale_after
from eldric import __version__
from eldric.core.formats import parameter_size_label
from eldric.web.json_bodies import read_json_body

bp = Blueprint("ollama", __name__)
POLL_SECONDS = 0.25


def _error(message: str, status: int):
    return jsonify(error=message), status


@bp.errorhandler(RequestError)
def _request_error(exc: RequestError):
    # Ollama clients read `{"error": "..."}` and raise it as ResponseError.
    return _error(str(exc), exc.status)


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError):
    return _error(f"cluster state store (Redis) unavailable: {exc}", 503)


def _model_field(body: dict) -> str:
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model is required")
    return model


def _body() -> dict:
    # JSON only (Content-Type: application/json): a browser cannot send that cross-site without CORS asking first.
    body = read_json_body(request) if request.is_json else None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object (Content-Type: application/json)")
    return body


@bp.get("/")
@bp.route("/", methods=["HEAD"])
def root():
    return Response("Eldric Model Manager (Ollama-compatible model management) is running", mimetype="text/plain")


@bp.get("/api/version")
def version():
    return jsonify(version=__version__)


@bp.post("/api/pull")
def pull():
    body = _body()
    if not isinstance(body.get("stream", True), bool):
        raise BadRequestError("stream must be true or false")
    client = redis_client()
    try:
        job_id = pull_jobs.start_pull(client, producer(), model=_model_field(body), workers=None, limits=job_limits())
    except NotFoundError as exc:  # upstream has no such manifest: Ollama's own words first, then what is there
        return _error(f"pull model manifest: file does not exist: {exc}", 404)
    events = _pull_events(job_id)
    if body.get("stream", True) is False:
        last = {}
        for event in events:
            last = event
        # 502: the workers (or the registry behind them) failed, not this service.
        return (jsonify(last), 200) if "error" not in last else _error(last["error"], 502)
    return Response(stream_with_context(_ndjson(events)), mimetype="application/x-ndjson")


def _ndjson(events: Iterator[dict]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event) + "\n"


def _pull_events(job_id: str) -> Iterator[dict]:
    """Ollama's status sequence, aggregated over the job's workers (one bar, 0 to 100 %)."""
    client = redis_client()
    stale, grace = stale_after(), offline_grace()
    yield {"status": "pulling manifest"}
    digest, last = None, None
    while True:
        job = jobs.get_job(client, job_id, stale_after=stale, offline_grace=grace)
        if job is None:
            yield {"error": "the pull job vanished (retention too short?)"}
            return
        workers = job["workers"]
        size = max((int(w.get("total") or 0) for w in workers), default=0)
        digest = digest or next((w.get("layer") for w in workers if w.get("layer")), None) or (
            next((w.get("digest") for w in workers if w.get("digest")), None))
        if size and digest:
            total = size * len(workers)
            completed = sum(min(size, int(w.get("completed") or 0)) for w in workers)
            event = {"status": f"pulling {digest.removeprefix('sha256:')[:12]}", "digest": digest,
                     "total": total, "completed": completed}
            if event != last:
                yield event
                last = event
        if job["state"] in jobstate.JOB_FINAL:  # skipped (offline) workers do not hold the pull open
            break
        time.sleep(POLL_SECONDS)
    failed = [w for w in job["workers"] if w["state"] == "failed"]
    if job["state"] == jobstate.JOB_CANCELLED:
        yield {"error": "the pull was cancelled"}
        return
    if failed:
        yield {"error": "pull failed on " + "; ".join(f"worker {w['worker']}: {w.get('error')}" for w in failed)}
        return
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield {"status": status}


@bp.get("/api/tags")
def tags():
    models, _eligible = cluster_models(redis_client(), cache=inventory_cache(),
                                                 forget_after=current_app.config["WORKER_FORGET_SECONDS"])
    return jsonify(models=[_tag(m) for m in models])


def _tag(model: dict) -> dict:
    """One /api/tags entry; file models (registry, URL) carry the registry's header facts instead.
    `details.status` (ours, beside Ollama's keys) says whether a backend of some worker serves it."""
    modified = datetime.fromtimestamp(model.get("modified_at") or 0, UTC).isoformat()
    d = model.get("details") or {}
    family = d.get("family") or d.get("architecture") or ""
    return {"name": model["name"], "model": model["name"], "modified_at": modified, "size": model.get("size", 0),
            "digest": (model.get("digest") or "").removeprefix("sha256:"),
            "details": {"parent_model": d.get("parent_model", ""),
                        "format": d.get("format") or model.get("format") or "",
                        "family": family, "families": d.get("families") or ([family] if family else None),
                        "parameter_size": d.get("parameter_size") or parameter_size_label(d.get("parameter_count")),
                        "quantization_level": d.get("quantization_level") or d.get("quantization") or "",
                        "status": model.get("status") or "served"}}  # or "stored, not served": no backend serves it


@bp.post("/api/show")
def show():
    name = pull_jobs.parse_model(_model_field(_body()))
    answer = agents.show_model(redis_client(), name, current_app.config["CLUSTER_SECRET"])
    answer.pop("worker", None)
    return jsonify(answer)


@bp.delete("/api/delete")
def delete():
    name = pull_jobs.parse_model(_model_field(_body()))
    client = redis_client()
    try:
        job_id = pull_jobs.start_delete(client, producer(), model=name.short, workers=None, limits=job_limits())
    except NotFoundError:
        return _error(f"model '{name.short}' not found", 404)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())
        if job and job["state"] == "failed":
            reasons = "; ".join(f"{w['worker']}: {w.get('error')}" for w in job["workers"] if w["state"] == "failed")
            return _error(f"delete failed on {reasons}", 500)
        if job and job["state"] in (jobstate.JOB_COMPLETED, jobstate.JOB_COMPLETED_WITH_SKIPPED):
            return Response(status=200)  # skipped (offline) workers get the delete as a catch-up
        time.sleep(POLL_SECONDS)
    return _error(f"delete of '{name.short}' still running (job {job_id})", 504)

"""Ollama's model-management endpoints on the controller, so Ollama tools manage the whole cluster.

`OLLAMA_HOST=controller:8880 ollama pull qwen2.5:0.5b` pulls to every inference and
cloud worker; `/api/tags` lists the cluster's models; `/api/show`, `/api/copy` and
`/api/delete` act on them. Shapes follow Ollama's docs/api.md and api/types.go
(controller/ollama_shapes.py completes them). `name` is taken wherever `model` is
(ollama-js still sends it). Inference is controller/ollama_route.py's, create and
push controller/ollama_create.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import redis
from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from controller import agents, copy_jobs, pull_jobs, shared_pulls
from controller.ollama_create import cluster_registry
from controller.ollama_shapes import show_answer, tag_entry
from eldric.core.names import DEFAULT_HOST, ModelName
from eldric.cluster.jobs import reads as jobs
from controller.models import cluster_models, models_of
from eldric.core.request_errors import BadRequestError, NotFoundError, RequestError
from eldric.cluster.jobs import state as jobstate
from controller.state import inventory_cache, job_limits, offline_grace, producer, redis_client, stale_after
from eldric import __version__
from eldric.web.json_bodies import read_json_body

bp = Blueprint("ollama", __name__)
POLL_SECONDS = 0.25
WAIT_SECONDS = 120.0  # copy and delete answer within this, else 504 naming the job (it runs on)


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
    try:  # a pull of this model still running for the same workers is followed, not started again
        job_id = shared_pulls.start_or_attach(client, producer(), model=_model_field(body), limits=job_limits(),
                                              stale_after=stale_after(), offline_grace=offline_grace(),
                                              in_cluster_registry=_in_cluster_registry).job_id
    except NotFoundError as exc:  # upstream has no such manifest: Ollama's own words first, then what is there
        return _error(f"pull model manifest: file does not exist: {exc}", 404)
    # A client that goes away only ends its stream: the job runs on (cancel is DELETE's or the dashboard's).
    events = _pull_events(job_id)
    if body.get("stream", True) is False:
        last = {}
        for event in events:
            last = event
        # 502: the workers (or the registry behind them) failed, not this service.
        return (jsonify(last), 200) if "error" not in last else _error(last["error"], 502)
    return Response(stream_with_context(_ndjson(events)), mimetype="application/x-ndjson")


def _in_cluster_registry(name: ModelName) -> bool:
    """Whether the data node's /v2/ holds `name` (a model created or pushed here); no registry set, or one
    that cannot answer, is a no: the pull's 404 stands."""
    if name.host != DEFAULT_HOST or not current_app.config.get("REGISTRY_URL"):
        return False
    try:
        return cluster_registry().manifest(name) is not None
    except RequestError:
        return False


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
    return jsonify(models=[tag_entry(m) for m in models])  # GET and HEAD (Flask answers HEAD for every GET)


@bp.post("/api/show")
def show():
    name = pull_jobs.parse_model(_model_field(_body()))
    answer = agents.show_model(redis_client(), name, current_app.config["CLUSTER_SECRET"])
    answer.pop("worker", None)
    return jsonify(show_answer(answer))


@bp.post("/api/copy")
def copy():
    """Ollama's copy, cluster-wide (controller/copy_jobs.py): 200 with an empty body once every holder has it."""
    body = _body()
    job_id = copy_jobs.start_copy(redis_client(), producer(), source=body.get("source"),
                                  destination=body.get("destination"), limits=job_limits())
    destination = pull_jobs.parse_model(body["destination"]).short
    return _wait_for(job_id, f"copy to '{destination}'", lambda held: destination in held)


@bp.delete("/api/delete")
def delete():
    name = pull_jobs.parse_model(_model_field(_body()))
    client = redis_client()
    # A running pull of it ends first (Open WebUI cancels a pull by aborting its stream, then deleting the model).
    cancelled = shared_pulls.cancel_running(client, name.short, stale_after=stale_after(), offline_grace=offline_grace())
    try:
        job_id = pull_jobs.start_delete(client, producer(), model=name.short, workers=None, limits=job_limits())
    except NotFoundError:
        if cancelled:
            return Response(status=200)  # only its pull was there: cancelled, its partial data goes with it
        return _error(f"model '{name.short}' not found", 404)
    return _wait_for(job_id, f"delete of '{name.short}'", lambda held: name.short not in held)


def _wait_for(job_id: str, what: str, listed: Callable[[set[str]], bool]):
    """Ollama answers copy and delete once done: 200 with no body, or the workers' reasons (502).

    Done means every online worker's part completed and publishes the result (`listed(its inventory's names)`:
    an agent refreshes its inventory just after its part's final record, and the client's next /api/tags must
    see it), and every other part waits on an offline worker (`offline`: its queued task runs when it returns
    within the grace; `skipped`: beat's catch-up does it when it returns), so a worker away does not hold the
    answer. A job whose parts all wait offline answers once it ends (completed_with_skipped), as before."""
    client = redis_client()
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        parts = job["workers"]
        failed = [w for w in parts if w["state"] == jobstate.FAILED]
        if failed or job["state"] == jobstate.JOB_CANCELLED:
            reasons = "; ".join(f"{w['worker']}: {w.get('error')}" for w in failed)
            return _error(f"{what} failed on {reasons or job['state']}", 502)  # the workers failed, not this service
        done = [w for w in parts if w["state"] == jobstate.COMPLETED]
        away = [w for w in parts if w["state"] in (jobstate.OFFLINE, jobstate.SKIPPED)]
        settled = job["state"] in (jobstate.JOB_COMPLETED, jobstate.JOB_COMPLETED_WITH_SKIPPED) or (
            done and len(done) + len(away) == len(parts))
        if settled and all(listed(models_of(client, w["worker"])) for w in done):
            return Response(status=200)
        time.sleep(POLL_SECONDS)
    return _error(f"{what} still running (job {job_id})", 504)

"""Ollama's model-building endpoints on the controller: blobs, create, push (issue 23).

`HEAD`/`POST /api/blobs/sha256:<hex>` ask and fill the cluster's registry (the data node's `/v2/`; the
body streamed through, verified there); `POST /api/create` builds the model once in that registry and
distributes it to every inference and cloud worker as a pull job from that registry (source `cluster`,
whatever ELDRIC_OLLAMA_REGISTRY says) whose progress is the create stream (controller/model_create.py);
`POST /api/push` puts a cluster model into that registry (controller/model_push.py). Everything a request
gets wrong is refused before anything is written, as Ollama's `{"error": "..."}` with the status; errors
after the stream started end it as an error line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from controller.cluster_registry import ClusterRegistry, RegistryRefusedError
from controller.file_create import create_file_model, prepare_files, run_files
from controller.model_create import Cluster, check_cluster_registry, prepare, run
from controller.model_push import prepare_push, push_name, run_push
from controller.registry_client import _chunks, _StreamBody
from controller.state import job_limits, offline_grace, producer, redis_client, registry_client, stale_after
from eldric.core.create_requests import parse_create
from eldric.core.digests import Digest
from eldric.core.errors import InvalidDigestError
from eldric.core.request_errors import BadRequestError, RequestError
from eldric.web.json_bodies import read_json_body

bp = Blueprint("ollama_create", __name__)


@bp.errorhandler(RequestError)
def _request_error(exc: RequestError):
    return jsonify(error=str(exc)), getattr(exc, "status", 500)


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError):
    return jsonify(error=f"cluster state store (Redis) unavailable: {exc}"), 503


def cluster_registry() -> ClusterRegistry:
    """This app's client of the data node's /v2/ (409 naming ELDRIC_REGISTRY_URL when it is empty)."""
    found = current_app.extensions.get("eldric.cluster_registry")
    if found is None:
        cfg = current_app.config
        check_cluster_registry(cfg["REGISTRY_URL"])  # 409 naming the setting, for blobs, create and push alike
        found = current_app.extensions["eldric.cluster_registry"] = ClusterRegistry(cfg["REGISTRY_URL"],
                                                                                    cfg.get("CLUSTER_SECRET", ""))
    return found


def _cluster() -> Cluster:
    return Cluster(redis=redis_client(), producer=producer(), registry=cluster_registry(),
                   secret=current_app.config.get("CLUSTER_SECRET", ""), limits=job_limits(),
                   stale_after=stale_after(), offline_grace=offline_grace())


def _body() -> dict:
    body = read_json_body(request) if request.is_json else None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object (Content-Type: application/json)")
    return body


def _digest(raw: str) -> Digest:
    try:
        return Digest.parse(raw if raw.startswith("sha256:") else "?")
    except InvalidDigestError:
        raise BadRequestError(f"invalid digest {raw!r}: expected sha256:<64 lowercase hex digits>") from None


@bp.route("/api/blobs/<digest>", methods=["HEAD"])
def head_blob(digest: str):
    found = cluster_registry().has_blob(_digest(digest))
    return Response(status=200 if found else 404)


@bp.post("/api/blobs/<digest>")
def post_blob(digest: str):
    wanted = _digest(digest)
    registry = cluster_registry()
    if registry.has_blob(wanted):
        return Response(status=200)  # as Ollama: already held, the body is not needed
    length = request.content_length
    body = _StreamBody(request.stream, length) if length is not None else _chunks(request.stream)
    registry.upload(wanted, body, length)
    return Response(status=201)


@bp.post("/api/create")
def create():
    spec = parse_create(_body())
    cluster = _cluster()
    if spec.format == "safetensors":  # served as uploaded by file backends: a registry model, distributed
        prepare_files(spec)
        prepare(spec, cluster)
        model = create_file_model(spec, registry_client())
        return _answer(_guarded(lambda: run_files(spec, model, cluster, registry_client())), spec.stream)
    plan = prepare(spec, cluster)
    return _answer(_guarded(lambda: run(plan, cluster)), spec.stream)


@bp.post("/api/push")
def push():
    body = _body()
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequestError("stream must be true or false", field="stream")
    name = push_name(body.get("model") or body.get("name"))
    cluster = _cluster()
    plan = prepare_push(name, cluster)
    return _answer(_guarded(lambda: run_push(plan, cluster)), stream)


def _guarded(events) -> Iterator[dict]:
    """The events; a refusal met once the stream has begun ends it as Ollama's error line."""
    try:
        yield from events()
    except (RequestError, RegistryRefusedError) as exc:
        yield {"error": str(exc)}
    except redis.RedisError as exc:
        yield {"error": f"cluster state store (Redis) unavailable: {exc}"}


def _answer(events: Iterator[dict], stream: bool):
    if stream:
        return Response(stream_with_context(json.dumps(e) + "\n" for e in events), mimetype="application/x-ndjson")
    last: dict = {}
    for event in events:
        last = event
        if "error" in event:
            return jsonify(error=event["error"]), 502  # as /api/pull: the workers or the registry failed
    return jsonify(last)

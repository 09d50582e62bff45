"""The agent's HTTP face: health, readiness, local inventory, and blobs for peers (served by http_process)."""

from __future__ import annotations

import functools

import redis
from flask import Flask, jsonify, request

from eldric.core.digests import Digest
from eldric.core.errors import InvalidDigestError, InvalidNameError
from eldric.web.file_responses import file_response
from eldric.web.auth import require_bearer
from eldric.web.problems import error_response, register_error_handlers
from eldric.transfer.partials import servable
from eldric.transfer.ranges import RangeNotSatisfiableError, parse_range
from eldric.transfer.ratelimit import bucket
from eldric.core.names import ModelName
from worker_agent.catalog import entry_files
from worker_agent.model_info import show_file_model, show_model
from worker_agent import eviction, inference_proxy, serving
from worker_agent.runtime import Agent


def create_agent_app(agent: Agent) -> Flask:
    app = Flask("eldric-agent")

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", worker=agent.worker_id, type=agent.settings.worker_type)

    @app.get("/readyz")
    def readyz():
        try:
            agent.redis.ping()
        except redis.RedisError as exc:
            return jsonify(status="unavailable", reason=f"redis: {exc}"), 503
        return jsonify(status="ready")

    @app.get("/api/inventory")
    def inventory():
        return jsonify(worker=agent.worker_id, models=serving.local_models(agent))

    # Everything but health checks is for this cluster's controller and agents only.
    require_bearer(app, lambda: agent.settings.cluster_secret, is_open=lambda path: path in ("/healthz", "/readyz"),
                   refuse=lambda path: error_response(401, "cluster secret required"))

    @app.get("/api/show")
    def show():
        entry = agent.catalog.get(request.args.get("model", ""))
        if entry is not None:
            return jsonify(show_file_model(entry, entry_files(entry, agent.store.blobs)))
        try:
            name = ModelName.parse(request.args.get("model", ""))
        except InvalidNameError as exc:
            return error_response(400, str(exc))
        found = show_model(agent.store, name)
        if found is None:
            return error_response(404, f"model '{name.short}' not found")
        return jsonify(found)

    @app.get("/api/eviction-plan")
    def eviction_plan():
        """What eviction would remove now and why, and what it may not (worker_agent/eviction.py); changes nothing."""
        return jsonify(eviction.plan(agent))

    @app.get("/api/models/export")
    def export():
        """What a peer needs to copy a model from this node: its manifest, or its file list."""
        model = request.args.get("model", "")
        entry = agent.catalog.get(model)
        if entry is not None:
            if entry.get("shared"):
                return error_response(409, f"'{model}' lives on shared storage here; "
                                           "distribute it from the registry")
            return jsonify(kind="files", entry=entry)
        try:
            name = ModelName.parse(model)
        except InvalidNameError as exc:
            return error_response(400, str(exc))
        found = agent.store.read_manifest(name) if agent.store.has_model(name) else None
        if found is None:
            return error_response(404, f"model '{model}' not found")
        return jsonify(kind="ollama", model=name.short, manifest=found[0].decode())

    @functools.cache
    def upload_cap():  # ELDRIC_MAX_PEER_UPLOAD_RATE: one bucket for all the server's threads
        return bucket(agent.settings.max_peer_upload_rate)

    @app.get("/blobs/<digest>")
    def blob(digest: str):
        """A blob for peers, with Range: a verified blob of the store, or the whole parts of one downloading.

        A download in progress serves only ranges inside parts its resume state calls whole
        (eldric.transfer.partials.servable); anything else is 416, and the peer asks elsewhere.
        """
        try:
            d = Digest.parse(digest)
            wanted = parse_range(request.headers.get("Range"), 1 << 62) if request.headers.get("Range") else None
            if wanted is None:
                path = agent.store.blobs.path(d)
            else:
                path = servable(agent.store.blobs, agent.store.partial_dir, d, wanted.start, wanted.end)
                if path is None:
                    return error_response(416, f"bytes {wanted.start}-{wanted.end} of {digest} "
                                               "are not on this node (yet)")
            try:
                return file_response(request, path, etag=str(d), limiter=upload_cap())
            except FileNotFoundError:
                # A download's data, renamed into the store since servable looked: the same bytes are there.
                if path == agent.store.blobs.path(d):
                    raise
                return file_response(request, agent.store.blobs.path(d), etag=str(d), limiter=upload_cap())
        except InvalidDigestError as exc:
            return error_response(400, str(exc))
        except FileNotFoundError:
            return error_response(404, f"blob {digest} not on this node")
        except RangeNotSatisfiableError as exc:
            return error_response(416, str(exc))

    inference_proxy.register(app, agent)  # POST /inference/<backend>/<endpoint>: routed inference (issue 23)
    register_error_handlers(app)  # 405 and unexpected errors as JSON too (tracebacks to the log)

    @app.errorhandler(404)
    def not_found(_):
        return error_response(404, "no such endpoint on this agent")

    return app


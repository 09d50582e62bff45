"""The agent's HTTP face: health, readiness and local inventory."""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

import redis
from flask import Flask, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from registry.digests import Digest
from registry.errors import InvalidDigestError, InvalidNameError
from registry.file_responses import file_response
from registry.ranges import RangeNotSatisfiableError
from registry.names import ModelName
from worker_agent.model_info import show_file_model, show_model
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
        return jsonify(worker=agent.worker_id, models=agent.store.list_models() + agent.catalog.inventory())

    @app.before_request
    def require_cluster_secret():
        """Everything but health checks is for this cluster's controller and agents only."""
        secret = agent.settings.cluster_secret
        if not secret or request.path in ("/healthz", "/readyz"):
            return None
        sent = request.headers.get("Authorization", "")
        if sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), secret.encode()):
            return None
        return jsonify(code=401, status="Unauthorized", message="cluster secret required"), 401

    @app.get("/api/show")
    def show():
        entry = agent.catalog.get(request.args.get("model", ""))
        if entry is not None:
            return jsonify(show_file_model(entry, local_files(agent, entry)))
        try:
            name = ModelName.parse(request.args.get("model", ""))
        except InvalidNameError as exc:
            return jsonify(code=400, status="Bad Request", message=str(exc)), 400
        found = show_model(agent.store, name)
        if found is None:
            return jsonify(code=404, status="Not Found", message=f"model '{name.short}' not found"), 404
        return jsonify(found)

    @app.get("/api/models/export")
    def export():
        """What a peer needs to copy a model from this node: its manifest, or its file list."""
        model = request.args.get("model", "")
        entry = agent.catalog.get(model)
        if entry is not None:
            if entry.get("shared"):
                return jsonify(code=409, status="Conflict",
                               message=f"'{model}' lives on shared storage here; distribute it from the registry"), 409
            return jsonify(kind="files", entry=entry)
        try:
            name = ModelName.parse(model)
        except InvalidNameError as exc:
            return jsonify(code=400, status="Bad Request", message=str(exc)), 400
        found = agent.store.read_manifest(name) if agent.store.has_model(name) else None
        if found is None:
            return jsonify(code=404, status="Not Found", message=f"model '{model}' not found"), 404
        return jsonify(kind="ollama", model=name.short, manifest=found[0].decode())

    @app.get("/blobs/<digest>")
    def blob(digest: str):
        """A verified blob of this node's store, with Range support (peers resume from it)."""
        try:
            d = Digest.parse(digest)
            return file_response(request, agent.store.blobs.path(d), etag=str(d))
        except InvalidDigestError as exc:
            return jsonify(code=400, status="Bad Request", message=str(exc)), 400
        except FileNotFoundError:
            return jsonify(code=404, status="Not Found", message=f"blob {digest} not on this node"), 404
        except RangeNotSatisfiableError as exc:
            return jsonify(code=416, status="Range Not Satisfiable", message=str(exc)), 416

    @app.errorhandler(404)
    def not_found(_):
        return jsonify(code=404, status="Not Found", message="no such endpoint on this agent"), 404

    return app


def local_files(agent: Agent, entry: dict) -> dict[str, Path]:
    """Where a catalog model's files are on this node: the shared tree, or the blob store."""
    if entry.get("shared") and entry.get("shared_path"):
        return {f["path"]: Path(entry["shared_path"]) / f["path"] for f in entry.get("files", [])}
    return {f["path"]: agent.store.blobs.path(Digest.parse(f["sha256"])) for f in entry.get("files", [])}


def start_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    server = make_server(host, port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="agent-http", daemon=True).start()
    return server

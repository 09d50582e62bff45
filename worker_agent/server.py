"""The agent's HTTP face: health, readiness and local inventory."""

from __future__ import annotations

import threading

import redis
from flask import Flask, jsonify
from werkzeug.serving import BaseWSGIServer, make_server

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
        return jsonify(worker=agent.worker_id, models=agent.store.list_models())

    @app.errorhandler(404)
    def not_found(_):
        return jsonify(code=404, status="Not Found", message="no such endpoint on this agent"), 404

    return app


def start_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    server = make_server(host, port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="agent-http", daemon=True).start()
    return server

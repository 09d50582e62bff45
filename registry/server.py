"""`eldric registry`: the data worker's model registry service (HTTP)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify
from werkzeug.serving import run_simple

from registry.problems import register_error_handlers


def create_registry_app(storage: str | Path) -> Flask:
    app = Flask("eldric-registry")
    root = Path(storage)
    root.mkdir(parents=True, exist_ok=True)
    app.config["STORAGE"] = root

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", storage=str(root))

    register_error_handlers(app)
    return app


def serve(host: str, port: int, storage: str | Path) -> None:
    run_simple(host, port, create_registry_app(storage), threaded=True, use_reloader=False)

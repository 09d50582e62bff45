"""The controller: a stateless Flask app (the REST API in api/ over one domain module per resource, the dashboard,
the Ollama-compatible API, metrics); every job and cluster fact lives in Redis."""

from __future__ import annotations


import redis
from flask import Flask, jsonify
from flask_smorest import Api

from controller import api_docs, cors, view_cache
from controller import config as settings
from eldric.cluster.dispatch import create_producer
from eldric import __version__
from eldric.cluster.redisconn import redis_client
from eldric.core.request_errors import BadRequestError, RequestError
from eldric.web.auth import require_bearer
from eldric.web.problems import error_response, register_error_handlers


def create_app(overrides: dict | None = None) -> Flask:
    app = Flask("eldric-controller")
    app.config.update(settings.from_env())
    app.config.update(overrides or {})
    app.config.update(
        API_TITLE="Eldric Model Manager", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1", OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs", OPENAPI_SWAGGER_UI_URL=api_docs.URL,  # served here: no CDN
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    # Every request thread may hold a pool connection for a moment; redis-py's default cap of 100
    # answered "Too many connections" (503) once hundreds of job streams and API calls ran at once.
    app.extensions["eldric.redis"] = redis_client(app.config["REDIS_URL"], decode_responses=True,
                                                  socket_timeout=10, socket_connect_timeout=5,
                                                  max_connections=REDIS_POOL_SIZE)
    app.extensions["eldric.celery"] = create_producer(app.config["REDIS_URL"])
    view_cache.install(app)

    api = Api(app)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    from controller.api import distribute, events, gc, model_registry, models, pins, pull_jobs, workers
    for module in (pull_jobs, events, models, distribute, workers, model_registry, pins, gc):
        api.register_blueprint(module.blp)
    from controller import ollama_api, ollama_create, ollama_route
    for module in (ollama_api, ollama_create, ollama_route):  # Ollama's and OpenAI's shapes, not /api/v1's
        app.register_blueprint(module.bp)
    from controller.dashboard import bp as dashboard_bp
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(api_docs.bp)
    register_error_handlers(app)
    _register_domain_errors(app)
    cors.install(app, app.config["CORS_ORIGINS"])  # before the bearer check: it answers preflights, which carry no token
    _register_auth(app)
    _register_health(app)
    from controller.metrics import register_metrics
    register_metrics(app)
    return app


def _register_domain_errors(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        errors = {"json": {exc.field: [str(exc)]}} if isinstance(exc, BadRequestError) and exc.field else None
        return error_response(exc.status, str(exc), errors)

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError):
        return error_response(503, f"cluster state store (Redis) unavailable: {exc}")


REDIS_POOL_SIZE = 2048  # connections the controller process may open to Redis (its maxclients is 10000)


def _register_auth(app: Flask) -> None:
    message = "missing or wrong bearer token (Authorization: Bearer <ELDRIC_API_TOKEN>)"

    def is_open(path: str) -> bool:  # the page, health, metrics and the docs are public; the calls are not
        if path in ("/api/v1/openapi.json", "/api/v1/docs"):
            return True
        return not (path.startswith("/api/") or path.startswith("/v1/"))  # /v1: OpenAI's API (ollama_route)

    def refuse(path: str):
        if path.startswith("/v1/"):  # OpenAI clients read an error object
            return jsonify(error={"message": message, "type": "invalid_request_error", "param": None,
                                  "code": "invalid_api_key"}), 401
        if not path.startswith("/api/v1/"):  # Ollama's endpoints answer in Ollama's shape
            return jsonify(error=message), 401
        return error_response(401, message)

    require_bearer(app, lambda: str(app.config.get("API_TOKEN") or ""), is_open=is_open, refuse=refuse)


def _register_health(app: Flask) -> None:
    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", version=__version__)

    @app.get("/readyz")
    def readyz():
        try:
            app.extensions["eldric.redis"].ping()
        except redis.RedisError as exc:
            return error_response(503, f"redis unreachable: {exc}")
        return jsonify(status="ready")

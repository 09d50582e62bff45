"""`eldric registry`: the data worker's model registry service (HTTP).

Settings come as arguments (the CLI reads the environment); `create_registry_app`
is what tests and the CLI both build.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import redis
from flask import Flask, jsonify, request
from flask_smorest import Api

from eldric import __version__
from eldric.core.errors import DigestMismatchError, InvalidDigestError, InvalidNameError
from registry.imports import Importer
from registry.heartbeat import Heartbeat
from eldric.core.model_errors import ModelRegistryError, RangeNotSatisfiableError
from eldric.web.auth import require_bearer
from eldric.web.gunicorn_server import serve_with_gunicorn
from eldric.web.problems import error_response, register_error_handlers
from registry.service import RegistryService

log = logging.getLogger(__name__)
DRAIN_LIMIT = 64 << 20  # past this, a refused body is cut off: cheaper than reading it (nginx does the same)
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(raw: str | int) -> int:
    """Bytes from `1073741824`, `512M`, `20G`, `1TiB` (binary units: K = 1024)."""
    if isinstance(raw, int):
        return raw
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"not a size: {raw!r} (examples: 1048576, 512M, 20G, 1T)")
    number, unit = int(match.group(1)), (match.group(2) or "B")[0].upper()
    return number << {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


@dataclass(frozen=True)
class RegistrySettings:
    max_file_bytes: int = 1 << 40  # one file of a model
    max_model_bytes: int = 4 << 40  # all files of a model
    min_free_bytes: int = 1 << 30  # uploads that would leave less free space are refused (507)
    draft_ttl_seconds: float = 24 * 3600  # drafts untouched this long are deleted
    redis_url: str | None = None  # for job progress of URL imports started by the controller
    token: str = ""  # when set, every API call needs `Authorization: Bearer <token>` (the cluster secret)
    import_workers: int = 2


def create_registry_app(storage: str | Path, settings: RegistrySettings = RegistrySettings(), *,
                        background: bool = True) -> Flask:
    """The registry app over `storage`; `background` starts import workers, heartbeat and janitor."""
    app = Flask("eldric-registry")
    app.config.update(API_TITLE="Eldric Model Registry", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
                      OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json")
    app.json.sort_keys = False
    svc = RegistryService(storage, max_file_bytes=settings.max_file_bytes, max_model_bytes=settings.max_model_bytes,
                          min_free_bytes=settings.min_free_bytes, draft_ttl=settings.draft_ttl_seconds)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10,
                                  socket_connect_timeout=5) if settings.redis_url else None
    importer = Importer(svc, redis_client=client, workers=settings.import_workers)
    app.extensions["eldric.registry"] = svc
    app.extensions["eldric.importer"] = importer

    from registry.api import blp
    Api(app).register_blueprint(blp)
    register_error_handlers(app)
    _register_domain_errors(app)
    _register_auth(app, settings.token)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", storage=str(svc.root), fingerprint=svc.fingerprint)

    @app.after_request
    def drain_refused_body(resp):
        """Read what is left of a refused upload (bounded), so the client gets our error, not a reset connection."""
        if resp.status_code >= 400 and 0 < (request.content_length or 0) <= DRAIN_LIMIT:
            try:
                while request.stream.read(1 << 20):
                    pass
            except OSError:
                pass
        return resp

    if background:
        svc.startup_cleanup()
        importer.start().resume_unfinished()
        if client is not None:
            Heartbeat(client).start()
        _start_janitor(svc)
    return app


def _register_domain_errors(app: Flask) -> None:
    @app.errorhandler(ModelRegistryError)
    def registry_error(exc: ModelRegistryError):
        body, code = error_response(exc.status, str(exc), {exc.field: [str(exc)]} if exc.field else None)
        if isinstance(exc, RangeNotSatisfiableError) and exc.size is not None:
            if request.method in ("PATCH", "PUT"):  # an upload chunk at the wrong offset
                body.headers.update({"Upload-Offset": str(exc.size), "Range": f"0-{max(exc.size - 1, 0)}"})
            else:
                body.headers["Content-Range"] = f"bytes */{exc.size}"
        return body, code

    @app.errorhandler(DigestMismatchError)
    @app.errorhandler(InvalidDigestError)
    @app.errorhandler(InvalidNameError)
    def bad_input(exc: Exception):
        field = "digest" if isinstance(exc, (DigestMismatchError, InvalidDigestError)) else "name"
        return error_response(400, str(exc), {field: [str(exc)]})


def _register_auth(app: Flask, token: str) -> None:
    require_bearer(app, lambda: token, is_open=lambda path: path == "/healthz", refuse=lambda path: error_response(
        401, "missing or wrong bearer token (Authorization: Bearer <cluster secret>)"))


def _start_janitor(svc: RegistryService, every: float = 600.0) -> None:
    def run() -> None:
        while not stop.wait(every):
            try:
                svc.expire_drafts()
            except Exception:
                log.exception("draft expiry failed")
    stop = threading.Event()
    threading.Thread(target=run, name="registry-janitor", daemon=True).start()


def serve(host: str, port: int, storage: str | Path, settings: RegistrySettings = RegistrySettings(),
          threads: int = 32) -> None:
    """Serve under gunicorn (gthread): uploads stream in, files go out with sendfile(2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_with_gunicorn(lambda: create_registry_app(storage, settings), host=host, port=port, threads=threads,
                        name="eldric-registry")

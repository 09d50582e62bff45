"""`eldric registry`: the data worker's model registry service (HTTP).

Settings come as arguments (the CLI reads the environment); `create_registry_app`
is what tests and the CLI both build.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flask import Flask, jsonify, request
from flask_smorest import Api
from pydantic import Field

from eldric import __version__, logging_setup
from eldric.cluster.redisconn import redis_client
from eldric.cluster.shared_settings import DEFAULT_OLLAMA_REGISTRY, AddressPolicySettings, OptionalRedisSettings
from eldric.core.settings import Duration, Size, UserPath
from eldric.core.errors import DigestMismatchError, InvalidDigestError, InvalidNameError
from eldric.transfer.oci_client import MANIFEST_TIMEOUT
from eldric.transfer.upstreams import AddressPolicy
from eldric.transfer.urlfetch import FetchOptions
from registry.imports import Importer
from registry.heartbeat import Heartbeat
from eldric.core.request_errors import RequestError, RangeNotSatisfiableError
from eldric.web.auth import require_bearer
from eldric.web.client_limits import HttpLimitsSettings
from eldric.web.gunicorn_server import serve_with_gunicorn
from eldric.web.problems import error_response, register_error_handlers
from registry.oci.api import is_oci_path
from registry.oci.pushes import Pushes
from registry.oci.setup import install_oci
from registry.oci.upstream import DEFAULT_TIMEOUT as DEFAULT_UPSTREAM_TIMEOUT
from registry.service import RegistryService

log = logging.getLogger(__name__)
DRAIN_LIMIT = 64 << 20  # past this, a refused body is cut off: cheaper than reading it (nginx does the same)


class RegistrySettings(HttpLimitsSettings, AddressPolicySettings, OptionalRedisSettings):
    """The registry's settings: `from_env` reads ELDRIC_REGISTRY_* (the CLI); tests construct them directly.

    Shared blocks: Redis (optional, for URL-import progress), the allow-list every hop of a URL import
    is checked against (issue 11), and the HTTP server's slow-client limits (issue 21).
    """

    host: str = Field("127.0.0.1", validation_alias="ELDRIC_REGISTRY_HOST", description="listen address")
    port: int = Field(8892, ge=0, le=65535, validation_alias="ELDRIC_REGISTRY_PORT", description="listen port")
    storage: UserPath = Field(Path.home() / ".eldric" / "registry", validation_alias="ELDRIC_REGISTRY_STORAGE",
                              description="storage root: drafts, committed models, the catalog")
    max_file_bytes: Size = Field(1 << 40, validation_alias="ELDRIC_REGISTRY_MAX_FILE_SIZE",
                                 description="largest file of a model, e.g. 200G")
    max_model_bytes: Size = Field(4 << 40, validation_alias="ELDRIC_REGISTRY_MAX_MODEL_SIZE",
                                  description="largest model, all files")
    min_free_bytes: Size = Field(1 << 30, validation_alias="ELDRIC_REGISTRY_MIN_FREE",
                                 description="uploads that would leave less free space are refused (507)")
    draft_ttl_seconds: float = Field(24 * 3600, gt=0, validation_alias="ELDRIC_REGISTRY_DRAFT_TTL_SECONDS",
                                     description="drafts untouched this long are deleted")
    token: str = Field("", validation_alias="ELDRIC_CLUSTER_SECRET",
                       description="when set, every API call needs `Authorization: Bearer <token>` (the cluster secret)")
    import_workers: int = Field(2, ge=1, validation_alias="ELDRIC_REGISTRY_IMPORT_WORKERS", description="URL imports run at once")
    log_level: str = Field("INFO", description="log level of the registry process")
    # Issue 15: the /v2/ API (registry/oci/) and its pull-through cache.
    api_token: str = Field("", validation_alias="ELDRIC_API_TOKEN",
                           description="when set, /v2/ also accepts this token (besides the cluster secret)")
    mirror_upstream: str = Field(DEFAULT_OLLAMA_REGISTRY, validation_alias="ELDRIC_MIRROR_UPSTREAM",
                                 description="registry the /v2/ pull-through cache fetches missing models from; none turns it off")
    mirror_tag_ttl: Duration = Field(3600.0, validation_alias="ELDRIC_MIRROR_TAG_TTL",
                                     description="a mirrored tag is asked upstream again after this long (e.g. 90s, 30m, 1h)")
    mirror_max_bytes: Size = Field(0, validation_alias="ELDRIC_MIRROR_MAX_SIZE",
                                   description="mirrored blobs past this size are evicted, least recently used first (0: no limit)")
    # Issue 21: under the agents' manifest timeout (MANIFEST_TIMEOUT), so they hear the cached answer.
    mirror_upstream_timeout: Duration = Field(DEFAULT_UPSTREAM_TIMEOUT, gt=0, le=MANIFEST_TIMEOUT - 5,
                                              validation_alias="ELDRIC_MIRROR_UPSTREAM_TIMEOUT",
                                              description="longest wait for upstream to connect or send the next bytes "
                                                          "of a manifest or HEAD answer; a cached tag is served then")


def create_registry_app(storage: str | Path, settings: RegistrySettings = RegistrySettings(), *,
                        background: bool = True) -> Flask:
    """The registry app over `storage`; `background` starts import workers, heartbeat and janitor."""
    app = Flask("eldric-registry")
    app.config.update(API_TITLE="Eldric Model Registry", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
                      OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json")
    app.json.sort_keys = False
    svc = RegistryService(storage, max_file_bytes=settings.max_file_bytes, max_model_bytes=settings.max_model_bytes,
                          min_free_bytes=settings.min_free_bytes, draft_ttl=settings.draft_ttl_seconds)
    client = redis_client(settings.redis_url, decode_responses=True, socket_timeout=10,
                          socket_connect_timeout=5) if settings.redis_url else None
    importer = Importer(svc, redis_client=client, workers=settings.import_workers,
                        fetch_options=FetchOptions(max_bytes=settings.max_file_bytes,
                                                   url_policy=AddressPolicy.parse(settings.url_allowlist)))
    app.extensions["eldric.registry"] = svc
    app.extensions["eldric.importer"] = importer

    from registry.api import blp
    Api(app).register_blueprint(blp)
    register_error_handlers(app)
    _register_domain_errors(app)
    _register_auth(app, settings.token)
    install_oci(app, svc, upstream_url=settings.mirror_upstream, tag_ttl=settings.mirror_tag_ttl,
                max_mirror_bytes=settings.mirror_max_bytes, policy=AddressPolicy.parse(settings.url_allowlist),
                secrets=(settings.token, settings.api_token), upstream_timeout=settings.mirror_upstream_timeout)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", storage=str(svc.root), fingerprint=svc.fingerprint)

    @app.after_request
    def drain_refused_body(resp):
        """Read what is left of a refused upload (bounded), so the client gets our error, not a reset connection.

        Chunked bodies too (a refused streamed push): gunicorn drains at most 64 KiB itself and
        then closes the connection it has just answered as keep-alive, which a client reusing it
        sees as "connection aborted" on its next request.
        """
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if resp.status_code >= 400 and (chunked or 0 < (request.content_length or 0) <= DRAIN_LIMIT):
            drained = 0
            try:
                while drained <= DRAIN_LIMIT and (block := request.stream.read(1 << 20)):
                    drained += len(block)
            except Exception as exc:  # noqa: BLE001 - a client gone mid-body or a broken chunk: the answer stands
                log.debug("stopped draining a refused body: %s", exc)
        return resp

    if background:
        svc.startup_cleanup()
        importer.start().resume_unfinished()
        if client is not None:
            Heartbeat(client).start()
        _start_janitor(svc, app.extensions["eldric.oci.pushes"])
    return app


def _register_domain_errors(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def registry_error(exc: RequestError):
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
    # /v2/ has its own check (registry/oci/auth.py: OCI error format, Basic credentials too).
    require_bearer(app, lambda: token, is_open=lambda path: path == "/healthz" or is_oci_path(path),
                   refuse=lambda path: error_response(
        401, "missing or wrong bearer token (Authorization: Bearer <cluster secret>)"))


def _start_janitor(svc: RegistryService, pushes: Pushes, every: float = 600.0) -> None:
    def run() -> None:
        while not stop.wait(every):
            try:
                svc.expire_drafts()
                pushes.expire(svc.draft_ttl)  # /v2/ push sessions untouched as long as a draft
            except Exception:
                log.exception("draft expiry failed")
    stop = threading.Event()
    threading.Thread(target=run, name="registry-janitor", daemon=True).start()


def serve(host: str, port: int, storage: str | Path, settings: RegistrySettings = RegistrySettings(),
          threads: int = 32) -> None:
    """Serve under gunicorn (gthread): uploads stream in, files go out with sendfile(2)."""
    logging_setup.configure_logging(settings.log_level, logging_setup.format_from_env())
    log.info("effective configuration: %s", settings.effective())
    serve_with_gunicorn(lambda: create_registry_app(storage, settings), host=host, port=port, threads=threads,
                        name="eldric-registry", limits=settings.client_limits())

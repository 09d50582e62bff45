"""/api/v1/model-registry: the data worker's model registry, through the controller.

Every route mirrors the registry's route of the same path (streamed proxy, see
controller.registry_client). Two add cluster rules: DELETE refuses (409) while a
distribute job of the model is pending or running, and an import becomes a job
in Redis (kind "import", target "registry") that lists with the pulls.
"""

from __future__ import annotations

from urllib.parse import quote

import math

import redis
from flask import current_app, request
from flask.views import MethodView

from eldric.cluster.jobs import reads as jobs
from eldric.cluster.jobs.start import start_job
from controller.registry_client import RegistryClient, error_message, to_flask
from controller.schemas import JobSchema
from controller.state import offline_grace, registry_client, redis_client, stale_after
from eldric.cluster.jobs import state as jobstate
from eldric.core.errors import EldricError
from eldric.core.identifiers import validate_file_path, validate_model_name, validate_version
from eldric.cluster.jobs.store import REGISTRY_WORKER_ID as WORKER_ID
from eldric.core.request_errors import BadRequestError, ConflictError
from eldric.cluster.registry_api import (FILE_DOWNLOAD_RESPONSES, FILE_PATH_PARAMETER, JOB_ID_PARAMETER, MODEL_ID_PARAMETER,
                                         UPLOAD_ID_PARAMETER, DigestQuerySchema, DraftRequestSchema, FileSchema,
                                         ImportRequestSchema, ImportSchema, ModelListSchema, ModelQuerySchema,
                                         ModelSchema, StorageSchema, TrainingRequestSchema, UploadQuerySchema,
                                         MirrorCheckSchema, MirrorSchema,
                                         UploadSessionRequestSchema, UploadSessionSchema, install_converters,
                                         parse_import_request)
from eldric.transfer.model_registry import API_PREFIX, IMPORTS_PATH
from eldric.core.redaction import redact_url
from eldric.web.blueprints import Blueprint

blp = Blueprint("model_registry", __name__, url_prefix=API_PREFIX,
                description="The cluster's own models on the data worker: upload, import, list, download, delete")
blp.record_once(install_converters)  # before the routes below use <hex_id:...>
ACTIVE = (jobstate.JOB_PENDING, jobstate.JOB_RUNNING)


def proxy(json_body: bool = False):
    """Forward this request to the same path on the registry; stream the body each way."""
    if json_body:
        body, length = request.get_data(), None  # small, and already read by the schema validation
    elif request.method in ("POST", "PUT", "PATCH"):
        body, length = request.stream, request.content_length
    else:
        body, length = None, None
    resp = registry_client().send(request.method, upstream_path(), query=request.query_string, headers=dict(request.headers),
                          body=body, length=length)
    return to_flask(resp)


def upstream_path() -> str:
    """The registry path for this request, rebuilt from the checked and re-escaped route arguments.

    Forwarding `request.path` (already percent-decoded) would let `ID%23` or `%2e%2e`
    reach another registry path than the one the controller checked.
    """
    path = rule = request.url_rule.rule
    for name, value in (request.view_args or {}).items():
        placeholder = next(p for p in (f"<{name}>", f"<path:{name}>", f"<hex_id:{name}>") if p in rule)
        if placeholder.startswith("<path:"):
            validate_file_path(value, name)  # the registry's own rule: 400 for '..', NUL, '\\', ...
        elif "/" in value or value in (".", "..") or any(ch in value for ch in "\x00\\#?%"):
            raise BadRequestError(f"invalid {name} {value!r}: no '/', '..', NUL, '\\', '#', '?' or '%'", field=name)
        # Re-escaped, so a '#', '?' or '%' in a file name is that character at the registry, not a URL part.
        path = path.replace(placeholder, quote(value, safe="/" if placeholder.startswith("<path:") else ""))
    return path


def active_distributions(client: redis.Redis, model_id: str, *, stale_after: float, scan: int,
                         offline_grace: float = math.inf) -> list[str]:
    """Ids of pending or running distribute jobs of the registry model `model_id`."""
    found, _total = jobs.list_jobs(client, stale_after=stale_after, offline_grace=offline_grace, limit=scan,
                                   kind="distribute")
    return [job["id"] for job in found
            if job["state"] in ACTIVE and (job.get("options") or {}).get("registry_model_id") == model_id]


def start_import(client: redis.Redis, registry: RegistryClient, body: dict, raw: dict, *,
                 deadline_seconds: float) -> str:
    """Record an import job (target "registry") and hand it to the registry; return the job id."""
    try:
        spec, _token = parse_import_request(body)
        validate_model_name(body["name"])
        if body.get("version"):
            validate_version(body["version"])
    except EldricError as exc:  # a RequestError too
        raise BadRequestError(str(exc), getattr(exc, "field", None)) from None
    options = {"name": spec["name"], "version": spec["version"], "format": spec["format"],
               "files": [{"url": redact_url(f["url"]), "path": f["path"]} for f in spec["files"]]}
    refused: list[Exception] = []

    def hand_over(_task: str, args: list, _targets: list[str]) -> dict[str, str]:
        """The import's "dispatch": the registry runs it (its progress comes back through the job store)."""
        try:
            resp = registry.send("POST", IMPORTS_PATH, json={**raw, "job_id": args[0]})
        except Exception as exc:  # noqa: BLE001 (any failure: the API answers it, 503 ..., once the part is failed)
            refused.append(exc)
            return {WORKER_ID: f"could not hand the import to the registry: {exc}"}
        with resp:
            if resp.status_code >= 400:
                return {WORKER_ID: f"the registry refused the import: {error_message(resp)}"}
        return {}

    job_id = start_job(client, hand_over, kind="import", task="import", model=spec["name"], targets=[WORKER_ID],
                       source=spec["source"], deadline_seconds=deadline_seconds, options=options)
    if refused:
        raise refused[0]
    return job_id


@blp.route("")
class Models(MethodView):
    @blp.arguments(ModelQuerySchema, location="query")
    @blp.response(200, ModelListSchema)
    def get(self, _query: dict):
        """Committed models, newest first; filter by format, source or name; paginated."""
        return proxy()

    @blp.arguments(DraftRequestSchema)
    @blp.response(201, ModelSchema)
    def post(self, _body: dict):
        """Create a draft model; put files into it (whole or by upload session), then commit it."""
        return proxy(json_body=True)


@blp.route("/training")
class TrainingOutputs(MethodView):
    @blp.arguments(TrainingRequestSchema)
    @blp.response(201, ModelSchema)
    def post(self, _body: dict):
        """The Training Worker's call: a draft with source=training and lineage (base model, run id)."""
        return proxy(json_body=True)


@blp.route("/upload")
class OneShotUpload(MethodView):
    @blp.arguments(UploadQuerySchema, location="query")
    @blp.response(201, ModelSchema)
    def post(self, _query: dict):
        """Register a single-file model in one request; the body is the file (streamed)."""
        return proxy()


@blp.route("/storage")
class Storage(MethodView):
    @blp.response(200, StorageSchema)
    def get(self):
        """The registry storage's fingerprint (compare with <NFS mount>/.eldric-fingerprint) and space."""
        return proxy()


@blp.route("/mirror")
class MirrorListing(MethodView):
    @blp.response(200, MirrorSchema)
    def get(self):
        """The data node's /v2/ pull-through cache: mirrored models and blobs, sizes, last use, update checks."""
        return proxy()


@blp.route("/mirror/check")
class MirrorCheck(MethodView):
    @blp.response(200, MirrorCheckSchema)
    def post(self):
        """Ask upstream where each mirrored tag points now and record it; never pulls."""
        return proxy()


@blp.route("/imports")
class Imports(MethodView):
    @blp.arguments(ImportRequestSchema)
    @blp.response(202, JobSchema)
    def post(self, body: dict):
        """Import from URLs as a job (kind "import"): progress in /api/v1/models/pull-jobs/{id}."""
        client = redis_client()
        job_id = start_import(client, registry_client(), body, request.get_json(),
                              deadline_seconds=current_app.config["JOB_DEADLINE_SECONDS"])
        job = jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())
        return job, 202, {"Location": f"/api/v1/models/pull-jobs/{job_id}"}


@blp.route("/imports/<job_id>", parameters=[JOB_ID_PARAMETER])
class Import(MethodView):
    @blp.response(200, ImportSchema)
    def get(self, job_id: str):
        """The registry's own view of an import."""
        return proxy()


@blp.route("/<hex_id:model_id>", parameters=[MODEL_ID_PARAMETER])
class Model(MethodView):
    @blp.response(200, ModelSchema)
    def get(self, model_id: str):
        """One model: files with sha256 and storage location, details, lineage."""
        return proxy()

    @blp.response(204)
    def delete(self, model_id: str):
        """Delete a model; 409 while a distribute job of it is pending or running."""
        busy = active_distributions(redis_client(), model_id, stale_after=stale_after(), offline_grace=offline_grace(),
                                    scan=int(current_app.config["JOB_HISTORY_MAX"]))
        if busy:
            raise ConflictError(f"model {model_id} is being distributed (job {', '.join(busy)}); "
                                "delete it when the job has finished")
        return proxy()


@blp.route("/<hex_id:model_id>/commit", parameters=[MODEL_ID_PARAMETER])
class Commit(MethodView):
    @blp.response(200, ModelSchema)
    def post(self, model_id: str):
        """Commit a draft: format checked, headers read, version assigned; it becomes listed."""
        return proxy()


@blp.route("/<hex_id:model_id>/files/<path:file_path>", parameters=[MODEL_ID_PARAMETER, FILE_PATH_PARAMETER])
class ModelFile(MethodView):
    @blp.doc(responses=FILE_DOWNLOAD_RESPONSES)
    def get(self, model_id: str, file_path: str):
        """Download a file; one HTTP Range (206), ETag = sha256."""
        return proxy()

    @blp.arguments(DigestQuerySchema, location="query")
    @blp.response(201, FileSchema)
    def put(self, _query: dict, model_id: str, file_path: str):
        """Put a whole file into a draft (streamed)."""
        return proxy()


@blp.route("/<hex_id:model_id>/uploads", parameters=[MODEL_ID_PARAMETER])
class Uploads(MethodView):
    @blp.arguments(UploadSessionRequestSchema)
    @blp.response(201, UploadSessionSchema)
    def post(self, _body: dict, model_id: str):
        """Open a resumable upload session for one file of a draft."""
        return proxy(json_body=True)


@blp.route("/uploads/<hex_id:upload_id>", parameters=[UPLOAD_ID_PARAMETER])
class Upload(MethodView):
    @blp.response(200, UploadSessionSchema)
    def get(self, upload_id: str):
        """The session's offset (bytes received)."""
        return proxy()

    @blp.response(202, UploadSessionSchema)
    def patch(self, upload_id: str):
        """Append a chunk at `Content-Range: bytes <first>-<last>/*`; 416 with the offset if it does not fit."""
        return proxy()

    @blp.arguments(DigestQuerySchema, location="query")
    @blp.response(201, FileSchema)
    def put(self, _query: dict, upload_id: str):
        """Finish the session (optional last chunk): size and digest checked, file added to the draft."""
        return proxy()

    @blp.response(204)
    def delete(self, upload_id: str):
        """Cancel the session."""
        return proxy()

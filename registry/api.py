"""HTTP face of the model registry: /api/v1/model-registry (the controller mirrors it path for path).

Views parse the request, call one RegistryService/Importer method and shape the
answer. Bodies of uploads are read from `request.stream` chunk by chunk, never
buffered, so a 20 GiB upload costs the same memory as a 2 KiB one.
"""

from __future__ import annotations

import re

from flask import Response, current_app, request
from flask.views import MethodView

from eldric.cluster.registry_api import (FILE_DOWNLOAD_RESPONSES, FILE_PATH_PARAMETER, JOB_ID_PARAMETER, MODEL_ID_PARAMETER,
                                         UPLOAD_ID_PARAMETER, DigestQuerySchema, DraftRequestSchema, FileSchema,
                                         ImportRequestSchema, ImportSchema, ModelListSchema, ModelQuerySchema,
                                         ModelSchema, StorageSchema, TrainingRequestSchema, UploadQuerySchema,
                                         UploadSessionRequestSchema, UploadSessionSchema, install_converters,
                                         MirrorCheckSchema, MirrorSchema)
from eldric.core.request_errors import BadRequestError, NotFoundError
from eldric.transfer.model_registry import API_PREFIX, IMPORTS_PATH
from eldric.transfer.ranges import parse_content_range
from eldric.web.blueprints import Blueprint
from eldric.web.file_responses import file_response
from registry.imports import Importer
from registry.service import RegistryService

_BYTE_COUNT = re.compile(r"[0-9]{1,19}", re.ASCII)

blp = Blueprint("model_registry", __name__, url_prefix=API_PREFIX,
                description="Models the cluster owns: upload, import, list, download, delete")
blp.record_once(install_converters)  # before the routes below use <hex_id:...>


def service() -> RegistryService:
    return current_app.extensions["eldric.registry"]


def importer() -> Importer:
    return current_app.extensions["eldric.importer"]


def _upload_headers(session: dict) -> dict:
    """OCI-style offset headers: `Range: 0-<last byte>` plus tus-style `Upload-Offset`."""
    offset = session["offset"]
    return {"Location": session["location"], "Upload-Offset": str(offset),
            "Range": f"0-{max(offset - 1, 0)}", "Docker-Upload-UUID": session["id"]}


@blp.route("")
class Models(MethodView):
    @blp.arguments(ModelQuerySchema, location="query")
    @blp.response(200, ModelListSchema)
    def get(self, query: dict):
        """Committed models, newest first; filter by format, source or name; paginated."""
        found, total = service().list_models(state=query["state"], fmt=query.get("format"),
                                             source=query.get("source"), name=query.get("name"),
                                             limit=query["limit"], offset=query["offset"])
        return {"models": found, "total": total, "limit": query["limit"], "offset": query["offset"]}

    @blp.arguments(DraftRequestSchema)
    @blp.response(201, ModelSchema)
    def post(self, body: dict):
        """Create a draft model; put files into it, then commit it (multi-file models, resumable uploads)."""
        model = service().create_draft(name=body["name"], version=body.get("version"), fmt=body.get("format"),
                                       source=body["source"], description=body.get("description"),
                                       lineage=body.get("lineage"))
        return model, 201, {"Location": model["links"]["self"]}


@blp.route("/mirror")
class MirrorListing(MethodView):
    @blp.response(200, MirrorSchema)
    def get(self):
        """The /v2/ pull-through cache: mirrored models and blobs with sizes, last use and update checks."""
        return current_app.extensions["eldric.mirror"].listing()


@blp.route("/mirror/check")
class MirrorCheck(MethodView):
    @blp.response(200, MirrorCheckSchema)
    def post(self):
        """Ask upstream where each mirrored tag points now (HEAD) and record it; never pulls (beat calls this)."""
        return {"checked": current_app.extensions["eldric.mirror"].check_updates()}


@blp.route("/training")
class TrainingOutputs(MethodView):
    @blp.arguments(TrainingRequestSchema)
    @blp.response(201, ModelSchema)
    def post(self, body: dict):
        """The Training Worker's call: a draft with source=training and lineage (base model, run id)."""
        lineage = {**(body.get("lineage") or {}), "base_model": body["base_model"], "run_id": body["run_id"]}
        model = service().create_draft(name=body["name"], version=body.get("version"), fmt=body.get("format"),
                                       source="training", description=body.get("description"), lineage=lineage)
        return model, 201, {"Location": model["links"]["self"]}


@blp.route("/upload")
class OneShotUpload(MethodView):
    @blp.arguments(UploadQuerySchema, location="query")
    @blp.response(201, ModelSchema)
    def post(self, query: dict):
        """Register a single-file model in one request; the body is the file's bytes (streamed)."""
        lineage = {k: query[k] for k in ("base_model", "run_id") if query.get(k)} or None
        model = service().upload_model(
            name=query["name"], filename=query["filename"], stream=request.stream, length=request.content_length,
            digest=query.get("digest"), version=query.get("version"), fmt=query.get("format"),
            source=query["source"], description=query.get("description"), lineage=lineage)
        return model, 201, {"Location": model["links"]["self"]}


@blp.route("/storage")
class Storage(MethodView):
    @blp.response(200, StorageSchema)
    def get(self):
        """The storage root's fingerprint (compare with <mount>/.eldric-fingerprint) and space."""
        return service().storage_info()


@blp.route("/<hex_id:model_id>", parameters=[MODEL_ID_PARAMETER])
class Model(MethodView):
    @blp.response(200, ModelSchema)
    def get(self, model_id: str):
        """One model (drafts too): files with sha256 and location, details, lineage."""
        return service().get_model(model_id)

    @blp.response(204)
    def delete(self, model_id: str):
        """Delete a model or draft; blobs another model shares stay."""
        service().delete_model(model_id)
        return ""


@blp.route("/<hex_id:model_id>/commit", parameters=[MODEL_ID_PARAMETER])
class Commit(MethodView):
    @blp.response(200, ModelSchema)
    def post(self, model_id: str):
        """Check the draft's format, read its headers, assign its version: it becomes listed."""
        return service().commit(model_id)


@blp.route("/<hex_id:model_id>/files/<path:file_path>", parameters=[MODEL_ID_PARAMETER, FILE_PATH_PARAMETER])
class ModelFile(MethodView):
    @blp.doc(responses=FILE_DOWNLOAD_RESPONSES)
    def get(self, model_id: str, file_path: str):
        """Download a file; one HTTP Range (206), ETag = sha256, If-Range and If-None-Match honoured."""
        return _send_file(model_id, file_path)

    @blp.arguments(DigestQuerySchema, location="query")
    @blp.response(201, FileSchema)
    def put(self, query: dict, model_id: str, file_path: str):
        """Put a whole file into a draft. An empty body with `digest` of a stored blob links it (no upload)."""
        return service().put_file(model_id, file_path, request.stream, digest=query.get("digest"),
                                  length=request.content_length)


@blp.route("/<hex_id:model_id>/uploads", parameters=[MODEL_ID_PARAMETER])
class Uploads(MethodView):
    @blp.arguments(UploadSessionRequestSchema)
    @blp.response(201, UploadSessionSchema)
    def post(self, body: dict, model_id: str):
        """Open a resumable upload session for one file of a draft."""
        session = service().start_upload(model_id, body["path"], size=body.get("size"), digest=body.get("digest"))
        return session, 201, _upload_headers(session)


@blp.route("/uploads/<hex_id:upload_id>", parameters=[UPLOAD_ID_PARAMETER])
class Upload(MethodView):
    @blp.response(200, UploadSessionSchema)
    def get(self, upload_id: str):
        """Where the session is: `offset` bytes received (also in Upload-Offset and Range)."""
        session = service().upload_status(upload_id)
        return session, 200, _upload_headers(session)

    @blp.response(202, UploadSessionSchema)
    def patch(self, upload_id: str):
        """Append a chunk at `Content-Range: bytes <first>-<last>/*` (or `Upload-Offset: <first>`)."""
        session = service().append_upload(upload_id, request.stream, _chunk_start(), request.content_length)
        return session, 202, _upload_headers(session)

    @blp.arguments(DigestQuerySchema, location="query")
    @blp.response(201, FileSchema)
    def put(self, query: dict, upload_id: str):
        """Finish: append the body if any, check size and digest, add the file to the draft."""
        if request.content_length or request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            service().append_upload(upload_id, request.stream, _chunk_start(), request.content_length)
        return service().finish_upload(upload_id, query.get("digest"))

    @blp.response(204)
    def delete(self, upload_id: str):
        """Cancel the session and drop its bytes."""
        service().upload_status(upload_id)
        service().cancel_upload(upload_id)
        return ""


@blp.route("/imports")
class Imports(MethodView):
    @blp.arguments(ImportRequestSchema)
    @blp.response(202, ImportSchema)
    def post(self, body: dict):
        """Import from URLs (HuggingFace resolve URLs with a token, S3 presigned, plain HTTP) as a job."""
        status = importer().submit(body)
        return status, 202, {"Location": f"{IMPORTS_PATH}/{status['id']}"}


@blp.route("/imports/<job_id>", parameters=[JOB_ID_PARAMETER])
class Import(MethodView):
    @blp.response(200, ImportSchema)
    def get(self, job_id: str):
        """Progress of an import."""
        return importer().status(job_id)


def _chunk_start() -> int | None:
    content_range, upload_offset = request.headers.get("Content-Range"), request.headers.get("Upload-Offset")
    if content_range:
        try:
            first, last, _total = parse_content_range(content_range)
        except ValueError as exc:
            raise BadRequestError(str(exc), "Content-Range") from None
        if request.content_length is not None and request.content_length != last - first + 1:
            raise BadRequestError(f"Content-Range covers {last - first + 1} bytes, the body has "
                                  f"{request.content_length}", "Content-Range")
        return first
    if upload_offset:
        if not _BYTE_COUNT.fullmatch(upload_offset):  # not str.isdigit: it takes "²", which int() refuses
            raise BadRequestError("Upload-Offset must be a byte count", "Upload-Offset")
        return int(upload_offset)
    return None


def _send_file(model_id: str, file_path: str) -> Response:
    blob, _size, digest = service().open_file(model_id, file_path)
    try:
        resp = file_response(request, blob, etag=digest, filename=file_path.rsplit("/", 1)[-1])
    except FileNotFoundError:
        raise NotFoundError(f"the bytes of {file_path} are missing from the registry storage") from None
    resp.headers["X-Content-Digest"] = digest
    return resp

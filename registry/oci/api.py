"""The /v2/ blueprint: the OCI distribution API (read, push, catalog), errors in the OCI JSON format.

Views parse the request, call one Resolver/Pushes/OCIStore method and shape the
answer; every error is `{"errors": [{"code", "message", "detail"}]}` with the spec's
status (OCIError), never a 500 page.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from eldric.core.manifests import MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST
from eldric.core.oci_layout import to_oci_manifest
from eldric.core.request_errors import RangeNotSatisfiableError
from eldric.transfer.ranges import parse_range
from eldric.web.file_responses import file_response
from registry.oci.auth import CHALLENGE
from registry.oci.resolver import Resolver, LocalBlob
from registry.oci.errors import OCIError
from registry.oci.pushes import Pushes, parse_chunk_range
from registry.oci.store import OCIStore, check_reference, check_repo, parse_digest

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
MAX_LIST = 10000

blp = Blueprint("oci", __name__, url_prefix="/v2")


def door() -> Resolver:
    return current_app.extensions["eldric.oci"]


def pushes() -> Pushes:
    return current_app.extensions["eldric.oci.pushes"]


def store() -> OCIStore:
    return door().store


@blp.get("/")
def base():
    return jsonify({}), 200, API_VERSION


@blp.get("/_catalog")
def catalog():
    repos = _page(door().repositories())
    return _with_link(jsonify(repositories=repos), repos, "/v2/_catalog")


@blp.get("/<path:name>/tags/list")
def tags(name: str):
    found = _page(door().tags(check_repo(name)))
    return _with_link(jsonify(name=name, tags=found), found, f"/v2/{name}/tags/list")


@blp.route("/<path:name>/manifests/<reference>", methods=["GET", "HEAD"])
def get_manifest(name: str, reference: str):
    found = door().manifest(check_repo(name), check_reference(reference))
    body, media_type, digest = found.body, found.media_type, found.digest
    if media_type == MANIFEST_V2 and prefers_oci(request.headers.get("Accept", "")):
        body, media_type = to_oci_manifest(body), OCI_MANIFEST
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"', **API_VERSION}
    resp = Response(b"" if request.method == "HEAD" else body, content_type=media_type, headers=headers)
    resp.content_length = len(body)
    return resp


def prefers_oci(accept: str) -> bool:
    """Whether a client lists the OCI manifest type before Docker's schema 2 (or accepts only OCI).

    Ollama's client asks for schema 2 only and the agents list it first: they get the manifest
    byte for byte as upstream serves it. skopeo and other containers/image clients list OCI first,
    and they refuse Ollama's layer types inside a schema-2 manifest; the OCI form of the same
    manifest (only the manifest's and the config's media types differ, every blob is the same) is
    what they can copy. Its digest is that of the bytes sent.
    """
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if OCI_MANIFEST not in kinds:
        return False
    return MANIFEST_V2 not in kinds or kinds.index(OCI_MANIFEST) < kinds.index(MANIFEST_V2)


@blp.put("/<path:name>/manifests/<reference>")
def put_manifest(name: str, reference: str):
    name, reference = check_repo(name), check_reference(reference)
    if (request.content_length or 0) > MAX_MANIFEST_BYTES:
        raise OCIError("MANIFEST_INVALID", "manifest larger than 4 MiB", status=413)
    body = request.stream.read(MAX_MANIFEST_BYTES + 1)  # bounded, with or without a Content-Length
    digest = door().put_manifest(name, reference, body, request.content_type)
    return Response(status=201, headers={"Location": f"/v2/{name}/manifests/{digest}",
                                         "Docker-Content-Digest": digest, **API_VERSION})


@blp.route("/<path:name>/blobs/<digest>", methods=["GET", "HEAD"])
def get_blob(name: str, digest: str):
    check_repo(name)
    wanted = parse_digest(digest)
    blob = door().blob(name, wanted, head=request.method == "HEAD")
    headers = {"Docker-Content-Digest": str(wanted), **API_VERSION}
    if isinstance(blob, LocalBlob):
        try:
            resp = file_response(request, blob.path, etag=str(wanted))
        except RangeNotSatisfiableError as exc:
            raise OCIError("RANGE_INVALID", str(exc), {"size": blob.size}) from None
        except FileNotFoundError:
            raise OCIError("BLOB_UNKNOWN", f"blob unknown to registry: {wanted}", {"digest": str(wanted)}) from None
        resp.headers.update(headers)
        return resp
    headers.update({"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", "ETag": f'"{wanted}"'})
    if blob.read is None:
        return Response(status=200, headers={**headers, "Content-Length": str(blob.size)})
    try:
        span = parse_range(request.headers.get("Range"), blob.size)
    except RangeNotSatisfiableError as exc:
        raise OCIError("RANGE_INVALID", str(exc), {"size": blob.size}) from None
    start, length = (span.start, span.length) if span else (0, blob.size)
    resp = Response(blob.read(start, length), status=206 if span else 200, headers=headers, direct_passthrough=True)
    resp.content_length = length
    if span:
        resp.headers["Content-Range"] = span.content_range(blob.size)
    return resp


@blp.post("/<path:name>/blobs/uploads/")
def start_upload(name: str):
    name = check_repo(name)
    mount = request.args.get("mount")
    if mount:  # cross-repository mount: one blob store, so any blob held here mounts
        digest = parse_digest(mount)
        if store().blob_size(digest) is not None:
            return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                                 "Docker-Content-Digest": str(digest), **API_VERSION})
    upload_id = pushes().start()
    if "digest" in request.args:  # monolithic upload in the POST itself
        digest = pushes().finish(upload_id, request.args["digest"], request.stream, request.content_length,
                                 has_body=_has_body())
        return _blob_created(name, digest)
    return _upload_answer(name, upload_id, 0, 202)


@blp.route("/<path:name>/blobs/uploads/<upload_id>", methods=["GET", "HEAD"])
def upload_status(name: str, upload_id: str):
    name = check_repo(name)
    return _upload_answer(name, upload_id, pushes().offset(upload_id), 204)


@blp.patch("/<path:name>/blobs/uploads/<upload_id>")
def upload_chunk(name: str, upload_id: str):
    name = check_repo(name)
    span = parse_chunk_range(request.headers.get("Content-Range"))
    offset = pushes().append(upload_id, request.stream, span, request.content_length)
    return _upload_answer(name, upload_id, offset, 202)


@blp.put("/<path:name>/blobs/uploads/<upload_id>")
def finish_upload(name: str, upload_id: str):
    name = check_repo(name)
    digest = pushes().finish(upload_id, request.args.get("digest"), request.stream, request.content_length,
                             has_body=_has_body())
    return _blob_created(name, digest)


@blp.delete("/<path:name>/blobs/uploads/<upload_id>")
def cancel_upload(name: str, upload_id: str):
    check_repo(name)
    pushes().cancel(upload_id)
    return Response(status=204, headers=API_VERSION)


def _has_body() -> bool:
    """A body to read: a Content-Length above 0, or a chunked one (no length until it ends)."""
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _blob_created(name: str, digest) -> Response:
    return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                         "Docker-Content-Digest": str(digest), **API_VERSION})


def _upload_answer(name: str, upload_id: str, offset: int, status: int) -> Response:
    return Response(status=status, headers={"Location": f"/v2/{name}/blobs/uploads/{upload_id}",
                                            "Range": f"0-{max(offset - 1, 0)}", "Docker-Upload-UUID": upload_id,
                                            "Content-Length": "0", **API_VERSION})


def _page(items: list[str]) -> list[str]:
    """`?last=` (exclusive) then `?n=` (at most MAX_LIST), as the spec's pagination."""
    last = request.args.get("last")
    if last:
        items = [i for i in items if i > last]
    raw = request.args.get("n", "")
    n = int(raw) if raw.isdigit() else MAX_LIST
    return items[:min(n, MAX_LIST)]


def _with_link(resp: Response, page: list[str], path: str) -> Response:
    raw = request.args.get("n", "")
    if raw.isdigit() and page and len(page) == int(raw):
        resp.headers["Link"] = f'<{path}?n={raw}&last={page[-1]}>; rel="next"'
    resp.headers.update(API_VERSION)
    return resp


def oci_error_response(exc: OCIError) -> Response:
    resp = jsonify(exc.body())
    resp.status_code = exc.status
    resp.headers.update(API_VERSION)
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = CHALLENGE
    if exc.status == 416 and "offset" in detail:
        resp.headers["Range"] = f"0-{max(int(detail['offset']) - 1, 0)}"
    if exc.status == 416 and "size" in detail:
        resp.headers["Content-Range"] = f"bytes */{detail['size']}"
    return resp


_HTTP_CODES = {404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 401: "UNAUTHORIZED", 413: "SIZE_INVALID"}


def is_oci_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def register(app: Flask) -> None:
    """Mount /v2/; errors under /v2/ answer in the OCI format, others as the app's own handlers do (call last)."""
    app.register_blueprint(blp)
    app.register_error_handler(OCIError, oci_error_response)
    own = dict(app.error_handler_spec[None][None])

    def http_error(exc: HTTPException):
        if not is_oci_path(request.path):
            return own[HTTPException](exc)
        code = _HTTP_CODES.get(exc.code or 0, "UNSUPPORTED")
        return oci_error_response(OCIError(code, exc.description or "", status=exc.code or 500))

    def unexpected(exc: Exception):
        resp = own[Exception](exc)  # logs the traceback
        if not is_oci_path(request.path):
            return resp
        return oci_error_response(OCIError("UNKNOWN", "internal error; see the registry's log", status=500))

    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)

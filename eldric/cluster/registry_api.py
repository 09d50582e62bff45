"""The model registry API's contract: its path, marshmallow schemas and import-request rules.

The registry serves them; the controller documents and validates its mirror of the API with the
same ones, so the two cannot drift. Neither service imports the other.
"""

from __future__ import annotations

from posixpath import basename
from urllib.parse import unquote, urlsplit

from marshmallow import Schema, fields, validate

from eldric.core.digests import Digest
from eldric.core.formats import FORMATS
from eldric.core.identifiers import validate_file_path
from eldric.core.model_errors import BadRequestError
from eldric.transfer.urlfetch import is_http_url, redact, source_kind

API_PREFIX = "/api/v1/model-registry"
SOURCES = ("upload", "training", "import")
MAX_IMPORT_FILES = 1000

_NAME = {"description": "model name: `model` or `namespace/model`, parts [A-Za-z0-9_][A-Za-z0-9_.-]*"}
_VERSION = {"description": "version/tag; default: the next free v<n> of that name, chosen at commit"}
_DIGEST = {"description": "expected sha256, `sha256:<64 hex>`; the upload fails (400) if the bytes differ"}
_FORMAT = {"description": "gguf, safetensors, lora or other; default: detected from the files"}


class ModelQuerySchema(Schema):
    format = fields.String(validate=validate.OneOf(FORMATS))
    source = fields.String(validate=validate.OneOf(SOURCES))
    name = fields.String(validate=validate.Length(min=1, max=161))
    state = fields.String(load_default="ready", validate=validate.OneOf(["ready", "draft"]),
                          metadata={"description": "drafts are listed only when asked for"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class DraftRequestSchema(Schema):
    name = fields.String(required=True, metadata=_NAME)
    version = fields.String(metadata=_VERSION)
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    source = fields.String(load_default="upload", validate=validate.OneOf(SOURCES))
    description = fields.String(validate=validate.Length(max=4096))
    lineage = fields.Dict(keys=fields.String(), metadata={
        "description": "flat object; training output needs base_model and run_id"})


class TrainingRequestSchema(Schema):
    name = fields.String(required=True, metadata=_NAME)
    version = fields.String(metadata=_VERSION)
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    description = fields.String(validate=validate.Length(max=4096))
    base_model = fields.String(required=True, validate=validate.Length(min=1, max=512),
                               metadata={"description": "the model the run started from (registry id or name)"})
    run_id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    lineage = fields.Dict(keys=fields.String(), metadata={"description": "more lineage facts (dataset, epochs...)"})


class UploadQuerySchema(Schema):
    name = fields.String(required=True, metadata=_NAME)
    filename = fields.String(required=True, metadata={"description": "the file's path in the model, e.g. model.gguf"})
    version = fields.String(metadata=_VERSION)
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    digest = fields.String(metadata=_DIGEST)
    source = fields.String(load_default="upload", validate=validate.OneOf(["upload", "training"]))
    description = fields.String(validate=validate.Length(max=4096))
    base_model = fields.String(validate=validate.Length(min=1, max=512))
    run_id = fields.String(validate=validate.Length(min=1, max=256))


class DigestQuerySchema(Schema):
    digest = fields.String(metadata=_DIGEST)


class UploadSessionRequestSchema(Schema):
    path = fields.String(required=True, metadata={"description": "the file's path in the model"})
    size = fields.Integer(validate=validate.Range(min=0), metadata={"description": "total bytes, if known"})
    digest = fields.String(metadata=_DIGEST)


class ImportFileSchema(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=8192))
    path = fields.String(metadata={"description": "path in the model; default: the URL's last segment"})
    digest = fields.String(metadata=_DIGEST)


class ImportRequestSchema(Schema):
    name = fields.String(required=True, metadata=_NAME)
    version = fields.String(metadata=_VERSION)
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    description = fields.String(validate=validate.Length(max=4096))
    url = fields.String(validate=validate.Length(min=1, max=8192), metadata={"description": "a single-file import"})
    path = fields.String()
    digest = fields.String(metadata=_DIGEST)
    files = fields.List(fields.Nested(ImportFileSchema), validate=validate.Length(min=1, max=1000))
    token = fields.String(load_only=True, metadata={"description": "bearer token (HuggingFace); never stored"})
    job_id = fields.String(validate=validate.Length(min=1, max=64),
                           metadata={"description": "set by the controller: report progress on this Redis job"})


class FileSchema(Schema):
    path = fields.String()
    size = fields.Integer()
    sha256 = fields.String(metadata={"description": "sha256:<hex>; also the download's ETag"})
    location = fields.String(metadata={"description": "where the bytes are, relative to the storage root"})


class ModelSchema(Schema):
    id = fields.String()
    name = fields.String()
    version = fields.String(allow_none=True)
    reference = fields.String(allow_none=True, metadata={"description": "name:version"})
    state = fields.String(metadata={"description": "draft or ready; only ready models are listed by default"})
    format = fields.String(allow_none=True)
    source = fields.String()
    size = fields.Integer()
    created_at = fields.String()
    committed_at = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    lineage = fields.Dict(allow_none=True)
    origin = fields.Dict(allow_none=True)
    details = fields.Dict(metadata={"description": "facts read from the headers: architecture, parameters, ..."})
    files = fields.List(fields.Nested(FileSchema))
    storage = fields.Dict(metadata={"description": "fingerprint of the storage and the model's tree directory"})
    links = fields.Dict()


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class UploadSessionSchema(Schema):
    id = fields.String()
    model_id = fields.String()
    path = fields.String()
    offset = fields.Integer(metadata={"description": "bytes received so far: send the next chunk from here"})
    size = fields.Integer(allow_none=True)
    digest = fields.String(allow_none=True)
    location = fields.String()


class ImportSchema(Schema):
    id = fields.String()
    state = fields.String(metadata={"description": "pending, running, completed or failed"})
    status = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    completed = fields.Integer()
    total = fields.Integer()
    percent = fields.Float()
    model_id = fields.String(allow_none=True)
    draft_id = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    version = fields.String(allow_none=True)
    source = fields.String()
    files = fields.List(fields.Dict())
    created_at = fields.String()
    updated_at = fields.String()


class StorageSchema(Schema):
    fingerprint = fields.String(metadata={"description": "content of the fingerprint file at the storage root"})
    fingerprint_file = fields.String()
    root = fields.String()
    blobs_dir = fields.String()
    trees_dir = fields.String()
    free_bytes = fields.Integer()
    total_bytes = fields.Integer()
    max_file_bytes = fields.Integer()
    max_model_bytes = fields.Integer()

def parse_import_request(body: dict) -> tuple[dict, str | None]:
    """(spec kept on disk, token kept in memory) of an import request; raise BadRequestError."""
    files = body.get("files") or ([{"url": body["url"], "path": body.get("path"), "digest": body.get("digest")}]
                                  if body.get("url") else [])
    if not files or len(files) > MAX_IMPORT_FILES:
        raise BadRequestError(f"give `url` or `files` (1 to {MAX_IMPORT_FILES} entries of url, path, digest)", "files")
    clean, seen = [], set()
    for entry in files:
        url = entry.get("url") or ""
        if not is_http_url(url):
            raise BadRequestError(f"not an http(s) URL: {redact(url)!r}", "url")
        path = validate_file_path(entry.get("path") or unquote(basename(urlsplit(url).path)), "path")
        if path in seen:
            raise BadRequestError(f"two files have the path {path!r}", "path")
        seen.add(path)
        digest = entry.get("digest")
        clean.append({"url": url, "path": path, "digest": str(Digest.parse(digest)) if digest else None})
    spec = {"name": body.get("name"), "version": body.get("version"), "format": body.get("format"),
            "description": body.get("description"), "files": clean, "has_token": bool(body.get("token")),
            "source": source_kind(clean[0]["url"])}
    return spec, body.get("token") or None

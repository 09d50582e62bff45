"""The model registry API's contract: its marshmallow schemas and import-request rules.

The registry serves them; the controller documents and validates its mirror of the API with the
same ones, so the two cannot drift. Neither service imports the other. Where the API lives and
its routes' paths: eldric/transfer/model_registry.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from posixpath import basename
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from marshmallow import Schema, fields, validate
from werkzeug.routing import BaseConverter

from eldric.core.digests import Digest
from eldric.core.formats import FORMATS
from eldric.core.identifiers import (FILE_PATH_PATTERN, MAX_PATH_LENGTH, NAME_PATTERN, VERSION_PATTERN,
                                     validate_file_path)
from eldric.core.redaction import redact_url
from eldric.core.request_errors import BadRequestError
from eldric.transfer.upstreams import is_http_url
from eldric.transfer.urlfetch import source_kind

SOURCES = ("upload", "training", "import")
MAX_IMPORT_FILES = 1000
MAX_OFFSET = 2**31 - 1  # list offsets: far past any catalog, far below SQLite's 64-bit integers
MAX_SIZE = 2**62  # byte counts: over every size limit (413), under SQLite's 64-bit integers

# NAME_PATTERN, VERSION_PATTERN and FILE_PATH_PATTERN, the grammars' OpenAPI patterns, are built in
# eldric.core.identifiers from the pieces its validators check with, so the two cannot drift.
DIGEST_PATTERN = r"^sha256[:-][0-9a-f]{64}$"
ID_PATTERN = r"^[0-9a-f]{32}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

_NAME = ("model name: `model` or `namespace/model`, parts [A-Za-z0-9_][A-Za-z0-9_.-]* (no '.' in the namespace), "
         "80 characters each")
_VERSION = "version/tag; default: the next free v<n> of that name, chosen at commit"
_DIGEST = "expected sha256, `sha256:<64 hex>`; the upload fails (400) if the bytes differ; empty: none"
_FORMAT = {"description": "gguf, safetensors, lora or other; default: detected from the files"}
_TRUTHY = {"not": {"enum": [None, False, 0, ""]}}
_LINEAGE_VALUE = {"nullable": True, "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}


def grammar_field(pattern: str, max_length: int, description: str, *, empty_means_none: bool = False,
                  **kw) -> fields.String:
    """A string with a grammar, documented here and checked by the service's own validator (400 naming the field,
    as the README promises). Empty fails the schema (422), unless the service reads "" as "not given"."""
    if empty_means_none:
        pattern = f"^(?:{pattern[1:-1]})?$"
    return fields.String(validate=None if empty_means_none else validate.Length(min=1), metadata={
        "description": description, "pattern": pattern, "maxLength": max_length}, **kw)


def _path_field(description: str, **kw) -> fields.String:
    """A file path inside a model (eldric.core.identifiers grammar)."""
    return grammar_field(FILE_PATH_PATTERN, MAX_PATH_LENGTH, description, **kw)


def _name_field(**kw) -> fields.String:
    return grammar_field(NAME_PATTERN, 161, _NAME, **kw)


def _version_field() -> fields.String:
    return grammar_field(VERSION_PATTERN, 80, _VERSION)


def _digest_field() -> fields.String:
    return grammar_field(DIGEST_PATTERN, 71, _DIGEST, empty_means_none=True)


def _lineage_field(description: str) -> fields.Dict:
    return fields.Dict(keys=fields.String(), metadata={"description": description,
                                                        "additionalProperties": _LINEAGE_VALUE})


class HexIdConverter(BaseConverter):
    """Route segment of a model or upload id (uuid4 hex).

    Only ids match, so `/storage` or `/training` is never also `/<model_id>`: every
    path has one resource, and `Allow` lists exactly that resource's methods.
    """

    regex = "[0-9a-f]{32}"


ID_CONVERTER = "hex_id"


def install_converters(state: Any) -> None:
    """Blueprint `record_once` hook: the app learns `<hex_id:...>` before any route uses it."""
    state.app.url_map.converters.setdefault(ID_CONVERTER, HexIdConverter)


def path_parameter(name: str, pattern: str, description: str) -> dict:
    """The OpenAPI description of a route argument (flask-smorest documents route arguments as plain strings)."""
    return {"in": "path", "name": name, "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


MODEL_ID_PARAMETER = path_parameter("model_id", ID_PATTERN, "the model's id (from the model's `id`)")
UPLOAD_ID_PARAMETER = path_parameter("upload_id", ID_PATTERN, "the upload session's id")
JOB_ID_PARAMETER = path_parameter("job_id", JOB_ID_PATTERN, "the import's job id")
FILE_PATH_PARAMETER = {**path_parameter("file_path", FILE_PATH_PATTERN, "the file's path in the model"),
                       "schema": {"type": "string", "pattern": FILE_PATH_PATTERN, "maxLength": MAX_PATH_LENGTH}}


_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
FILE_DOWNLOAD_RESPONSES = {
    "200": {"description": "the file's bytes; ETag is its sha256", "content": _BYTES},
    "206": {"description": "the one range asked for (Range), with Content-Range", "content": _BYTES},
    "304": {"description": "not modified (If-None-Match matched the ETag)"},
}


def path_conflict(path: str, others: Iterable[str]) -> str | None:
    """A path among `others` that cannot live next to `path` in one directory tree, or None.

    `a` and `a/b` conflict (either order): `a` would have to be a file and a directory at once.
    """
    for other in others:
        if other != path and (other.startswith(path + "/") or path.startswith(other + "/")):
            return other
    return None


def find_path_conflict(paths: Iterable[str]) -> tuple[str, str] | None:
    """Two of `paths` that conflict (see path_conflict), or None; linear in the number of paths."""
    known = set(paths)
    for path in known:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory in known:
                return directory, path
    return None


class ModelQuerySchema(Schema):
    format = fields.String(validate=validate.OneOf(FORMATS))
    source = fields.String(validate=validate.OneOf(SOURCES))
    name = fields.String(validate=validate.Length(min=1, max=161))
    state = fields.String(load_default="ready", validate=validate.OneOf(["ready", "draft"]),
                          metadata={"description": "drafts are listed only when asked for"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))


class DraftRequestSchema(Schema):
    # Documented in OpenAPI (eldric.web.blueprints); RegistryService.check_draft enforces it (400).
    OPENAPI_RULES: ClassVar[dict] = {"anyOf": [
        {"properties": {"source": {"enum": ["upload", "import"]}}},
        {"required": ["source", "lineage"], "properties": {"source": {"enum": ["training"]}, "lineage": {
            "required": ["base_model", "run_id"], "properties": {"base_model": _TRUTHY, "run_id": _TRUTHY}}}},
    ]}

    name = _name_field(required=True)
    version = _version_field()
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    source = fields.String(load_default="upload", validate=validate.OneOf(SOURCES), metadata={
        "description": "training needs lineage.base_model and lineage.run_id (or use POST /training)"})
    description = fields.String(validate=validate.Length(max=4096))
    lineage = _lineage_field("flat object of strings, numbers, booleans (at most 16 KiB); "
                             "training output needs base_model and run_id")


class TrainingRequestSchema(Schema):
    name = _name_field(required=True)
    version = _version_field()
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    description = fields.String(validate=validate.Length(max=4096))
    base_model = fields.String(required=True, validate=validate.Length(min=1, max=512),
                               metadata={"description": "the model the run started from (registry id or name)"})
    run_id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    lineage = _lineage_field("more lineage facts (dataset, epochs...): strings, numbers, booleans")


class UploadQuerySchema(Schema):
    name = _name_field(required=True)
    filename = _path_field("the file's path in the model, e.g. model.gguf", required=True)
    version = _version_field()
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    digest = _digest_field()
    source = fields.String(load_default="upload", validate=validate.OneOf(["upload", "training"]),
                           metadata={"description": "training needs base_model and run_id"})
    description = fields.String(validate=validate.Length(max=4096))
    base_model = fields.String(validate=validate.Length(min=1, max=512))
    run_id = fields.String(validate=validate.Length(min=1, max=256))


class DigestQuerySchema(Schema):
    digest = _digest_field()


class UploadSessionRequestSchema(Schema):
    path = _path_field("the file's path in the model", required=True)
    size = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_SIZE),
                          metadata={"description": "total bytes, if known"})
    digest = _digest_field()


class ImportFileSchema(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=8192))
    path = _path_field("path in the model; default (also when empty): the URL's last segment", empty_means_none=True)
    digest = _digest_field()


class ImportRequestSchema(Schema):
    name = _name_field(required=True)
    version = _version_field()
    format = fields.String(validate=validate.OneOf(FORMATS), metadata=_FORMAT)
    description = fields.String(validate=validate.Length(max=4096))
    url = fields.String(validate=validate.Length(min=1, max=8192), metadata={"description": "a single-file import"})
    path = _path_field("path in the model; default (also when empty): the URL's last segment", empty_means_none=True)
    digest = _digest_field()
    files = fields.List(fields.Nested(ImportFileSchema), validate=validate.Length(min=1, max=MAX_IMPORT_FILES))
    token = fields.String(load_only=True, validate=validate.Length(max=4096),
                          metadata={"description": "bearer token (HuggingFace); never stored"})
    job_id = fields.String(validate=validate.Length(min=1, max=64), metadata={
        "description": "set by the controller: report progress on this Redis job", "pattern": JOB_ID_PATTERN})


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

class MirrorModelSchema(Schema):
    name = fields.String(metadata={"description": "repository:tag as pulled through /v2/, e.g. library/qwen2.5:0.5b"})
    repository = fields.String()
    tag = fields.String()
    digest = fields.String(metadata={"description": "the cached manifest's digest"})
    size = fields.Integer(metadata={"description": "bytes of all its blobs"})
    cached_bytes = fields.Integer(metadata={"description": "bytes of its blobs held here (blobs arrive when first pulled)"})
    complete = fields.Boolean()
    resolved_at = fields.String(allow_none=True, metadata={"description": "when the tag was last asked upstream"})
    last_used = fields.String(allow_none=True)
    upstream_digest = fields.String(allow_none=True, metadata={"description": "what the tag pointed at upstream at the last update check"})
    checked_at = fields.String(allow_none=True)
    check_error = fields.String(allow_none=True)
    update_available = fields.Boolean(metadata={"description": "upstream's tag points at another manifest than the cached one"})


class MirrorBlobSchema(Schema):
    digest = fields.String()
    size = fields.Integer()
    last_used = fields.String(allow_none=True)


class MirrorSchema(Schema):
    upstream = fields.String(allow_none=True, metadata={"description": "the pull-through cache's upstream; null when off"})
    tag_ttl_seconds = fields.Float()
    max_bytes = fields.Integer(allow_none=True, metadata={"description": "size limit of the mirrored blobs; null: none"})
    total_bytes = fields.Integer()
    updates_available = fields.Integer()
    models = fields.List(fields.Nested(MirrorModelSchema))
    blobs = fields.List(fields.Nested(MirrorBlobSchema))


class MirrorCheckResultSchema(Schema):
    name = fields.String()
    digest = fields.String()
    upstream_digest = fields.String(allow_none=True)
    update_available = fields.Boolean()
    error = fields.String(allow_none=True)


class MirrorCheckSchema(Schema):
    checked = fields.List(fields.Nested(MirrorCheckResultSchema))


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
            raise BadRequestError(f"not an http(s) URL: {redact_url(url)!r}", "url")
        path = validate_file_path(entry.get("path") or unquote(basename(urlsplit(url).path)), "path")
        if path in seen:
            raise BadRequestError(f"two files have the path {path!r}", "path")
        other = path_conflict(path, seen)
        if other is not None:
            raise BadRequestError(f"the paths {other!r} and {path!r} conflict: one is a directory of the other", "path")
        seen.add(path)
        digest = entry.get("digest")
        clean.append({"url": url, "path": path, "digest": str(Digest.parse(digest)) if digest else None})
    spec = {"name": body.get("name"), "version": body.get("version"), "format": body.get("format"),
            "description": body.get("description"), "files": clean, "has_token": bool(body.get("token")),
            "source": source_kind(clean[0]["url"])}
    return spec, body.get("token") or None

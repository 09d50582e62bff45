"""The data worker's model registry: drafts, uploads, commit, listing, download, delete.

A model is created as a *draft*; files are put into it (whole, or through
resumable upload sessions); *commit* checks the format, reads the headers,
assigns the version and makes it visible. Only committed ("ready") models are
listed, so an interrupted or rejected upload never shows up. Each file is stored
once per sha256 in `blobs/` and linked by path from the models that hold it; a
blob goes when the last link does.

Storage root layout (exportable over NFS)::

    .eldric-fingerprint   random id: a worker seeing the same id sees the same storage
    blobs/sha256-<hex>    file contents
    trees/<model id>/...  per model, relative symlinks from its file paths to blobs/
    uploads/<id>.part     bytes of unfinished upload sessions
    imports/<job id>/     partial downloads of URL imports
    registry.db           metadata (SQLite; local to the registry process)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from functools import partial
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable

from registry import trees, views
from eldric.core.blobstore import BlobStore
from registry.catalog import DRAFT, READY, Catalog
from eldric.cluster.registry_api import SOURCES
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError
from eldric.core.formats import FORMATS, check_head, detect_format, inspect_file, model_details
from eldric.core.identifiers import validate_file_path, validate_model_name, validate_version
from eldric.core.request_errors import (BadRequestError, ConflictError, InvalidFormatError,
                                   NotFoundError, TooLargeError)
from registry.uploads import FreeSpace, UploadSessions, copy_stream, storage_full_as_507

log = logging.getLogger(__name__)

FINGERPRINT_FILE = ".eldric-fingerprint"
EMPTY_DIGEST = Digest(hashlib.sha256(b"").hexdigest())


def ensure_fingerprint(root: Path) -> str:
    """The storage's random id, created once (O_EXCL: two starting processes agree on one)."""
    path = root / FINGERPRINT_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(uuid.uuid4().hex + "\n")
    return path.read_text().strip()


def _parse_digest(raw: str | None) -> Digest | None:
    return None if raw in (None, "") else Digest.parse(raw)


class RegistryService:
    def __init__(self, root: str | os.PathLike, *, max_file_bytes: int = 1 << 40, max_model_bytes: int = 4 << 40,
                 min_free_bytes: int = 1 << 30, draft_ttl: float = 24 * 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes, self.max_model_bytes = max_file_bytes, max_model_bytes
        self.draft_ttl, self.clock = draft_ttl, clock
        self.blobs = BlobStore(self.root / "blobs")
        self.blobs.root.mkdir(exist_ok=True)
        self.catalog = Catalog(self.root / "registry.db")
        self.space = FreeSpace(self.root, min_free_bytes)  # --min-free, for every way bytes come in
        self.sessions = UploadSessions(self.root / "uploads", max_file_bytes, self.space)
        self.trees = self.root / "trees"
        self.fingerprint = ensure_fingerprint(self.root)

    # -- reading ---------------------------------------------------------------------------------

    def list_models(self, *, state: str = READY, fmt: str | None = None, source: str | None = None,
                    name: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        found, total = self.catalog.list_models(state=state, fmt=fmt, source=source, name=name,
                                                limit=limit, offset=offset)
        return [views.model_view(m, self.fingerprint) for m in found], total

    def get_model(self, model_id: str) -> dict:
        return views.model_view(self._model(model_id), self.fingerprint)

    def _model(self, model_id: str) -> dict:
        model = self.catalog.model(model_id)
        if model is None:
            raise NotFoundError(f"no model {model_id!r}", "id")
        return model

    def open_file(self, model_id: str, path: str) -> tuple[Path, int, str]:
        """(blob path, size, digest) of a ready model's file."""
        path = validate_file_path(path)
        model = self._model(model_id)
        if model["state"] != READY:
            raise NotFoundError(f"model {model_id} is a draft; commit it first", "id")
        entry = next((f for f in model["files"] if f["path"] == path), None)
        if entry is None:
            raise NotFoundError(f"model {model_id} has no file {path!r}", "path")
        return self.blobs.path(Digest.parse(entry["digest"])), entry["size"], entry["digest"]

    def storage_info(self) -> dict:
        usage = shutil.disk_usage(self.root)
        return {"fingerprint": self.fingerprint, "fingerprint_file": FINGERPRINT_FILE, "root": str(self.root),
                "blobs_dir": "blobs", "trees_dir": "trees", "free_bytes": usage.free, "total_bytes": usage.total,
                "max_file_bytes": self.max_file_bytes, "max_model_bytes": self.max_model_bytes}

    # -- drafts and files ------------------------------------------------------------------------

    def check_draft(self, *, name: str, version: str | None = None, fmt: str | None = None,
                    source: str = "upload", lineage: dict | None = None) -> dict | None:
        """Validate a new model's fields (400) and its version's availability (409); return clean lineage."""
        validate_model_name(name)
        if version is not None:
            validate_version(version)
            with self.catalog.transaction() as tx:
                if tx.version_taken(name, version):
                    raise ConflictError(f"model {name}:{version} already exists", "version")
        if fmt is not None and fmt not in FORMATS:
            raise BadRequestError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}", "format")
        if source not in SOURCES:
            raise BadRequestError(f"unknown source {source!r}; one of {', '.join(SOURCES)}", "source")
        return views.clean_lineage(lineage, required=source == "training")

    def create_draft(self, *, name: str, version: str | None = None, fmt: str | None = None,
                     source: str = "upload", description: str | None = None, lineage: dict | None = None,
                     origin: dict | None = None) -> dict:
        lineage = self.check_draft(name=name, version=version, fmt=fmt, source=source, lineage=lineage)
        now = self.clock()
        record = {"id": uuid.uuid4().hex, "name": name, "requested_version": version, "state": DRAFT,
                  "format": fmt, "source": source, "description": description, "lineage": lineage,
                  "origin": origin, "created_at": now, "updated_at": now}
        with self.catalog.transaction() as tx:
            if version is not None and tx.version_taken(name, version):
                raise ConflictError(f"model {name}:{version} already exists", "version")
            tx.insert_model(record)
        return self.get_model(record["id"])

    def _require_draft(self, model: dict | None, model_id: str) -> dict:
        if model is None:
            raise NotFoundError(f"no model {model_id!r}", "id")
        if model["state"] != DRAFT:
            raise ConflictError(f"model {model_id} is committed; its files cannot change", "id")
        return model

    def _check_limits(self, model_id: str, path: str, size: int, *, disk: bool = True) -> None:
        if size > self.max_file_bytes:
            raise TooLargeError(f"{path}: {size} bytes is over the file size limit of {self.max_file_bytes}", "size")
        model = self._model(model_id)
        others = sum(f["size"] for f in model["files"] if f["path"] != path)
        if others + size > self.max_model_bytes:
            raise TooLargeError(f"the model would have {others + size} bytes, over the model size limit of "
                                f"{self.max_model_bytes}", "size")
        if disk:
            self.space.check(size)

    def put_file(self, model_id: str, path: str, stream: BinaryIO, *, digest: str | None = None,
                 length: int | None = None) -> dict:
        """Store the body as `path` of the draft; an empty body with the digest of a stored blob links it."""
        path = validate_file_path(path)
        expected = _parse_digest(digest)
        model = self._require_draft(self.catalog.model(model_id), model_id)
        trees.refuse_conflict(path, (f["path"] for f in model["files"]))  # before the bytes; _attach checks again
        if length is not None:
            self._check_limits(model_id, path, length)
        if length == 0 and expected not in (None, EMPTY_DIGEST) and self.blobs.has(expected):
            size = self.blobs.size(expected)
            self._check_limits(model_id, path, size, disk=False)  # a link takes no space
            return self._attach(model_id, path, None, expected, size)
        f, tmp = self.blobs.temp_file()
        try:
            hasher = hashlib.sha256()
            with f, storage_full_as_507():
                size = copy_stream(stream, f, hasher, limit=self.max_file_bytes, head_check=partial(check_head, path),
                                   length=length, space=self.space)
            actual = Digest(hasher.hexdigest())
            if expected is not None and actual != expected:
                raise DigestMismatchError(f"{path}: digest mismatch: expected {expected}, got {actual}")
            self._check_limits(model_id, path, size, disk=False)  # the bytes are on the disk: checked as they came
            return self._attach(model_id, path, tmp, actual, size)
        finally:
            tmp.unlink(missing_ok=True)

    def add_local_file(self, model_id: str, path: str, file: Path, digest: Digest, size: int) -> dict:
        """Move an already hashed local file (same filesystem) into the draft as `path`."""
        path = validate_file_path(path)
        self._require_draft(self.catalog.model(model_id), model_id)
        self._check_limits(model_id, path, size, disk=False)  # the bytes are on this disk already
        return self._attach(model_id, path, file, digest, size)

    def _attach(self, model_id: str, path: str, tmp: Path | None, digest: Digest, size: int) -> dict:
        """Check the file is what its name says, move it into the blob store and link it, atomically."""
        info = inspect_file(path, tmp if tmp is not None else self.blobs.path(digest))
        with self.catalog.transaction() as tx:
            self._require_draft(tx.model(model_id), model_id)
            trees.refuse_conflict(path, (f["path"] for f in tx.files(model_id)))
            if self.blobs.has(digest, size):
                pass  # stored once per digest: the new copy is dropped below
            elif tmp is None:
                raise NotFoundError(f"no stored blob {digest} to link", "digest")
            else:
                self.blobs.commit(tmp, digest)
            old = tx.put_file(model_id, path, str(digest), size, info, self.clock())
            if old and old != str(digest) and not tx.is_referenced(old):
                self.blobs.delete(Digest.parse(old))
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return views.file_view({"path": path, "digest": str(digest), "size": size})

    # -- upload sessions -------------------------------------------------------------------------

    def start_upload(self, model_id: str, path: str, *, size: int | None = None, digest: str | None = None) -> dict:
        path = validate_file_path(path)
        expected = _parse_digest(digest)
        self._require_draft(self.catalog.model(model_id), model_id)
        if size is not None:
            self._check_limits(model_id, path, size)
        record = {"id": uuid.uuid4().hex, "model_id": model_id, "path": path, "size": size,
                  "digest": str(expected) if expected else None, "created_at": self.clock()}
        self.sessions.open_new(record["id"])
        try:
            with self.catalog.transaction() as tx:
                self._require_draft(tx.model(model_id), model_id)
                trees.refuse_conflict(path, [f["path"] for f in tx.files(model_id)] + [u["path"] for u in tx.uploads_of(model_id)])
                tx.insert_upload(record)
                tx.touch(model_id, self.clock())
        except BaseException:
            self.sessions.discard(record["id"])
            raise
        return views.upload_view(record, 0)

    def _upload(self, upload_id: str) -> dict:
        record = self.catalog.upload(upload_id)
        if record is None:
            raise NotFoundError(f"no upload {upload_id!r}", "upload_id")
        return record

    def upload_status(self, upload_id: str) -> dict:
        return views.upload_view(self._upload(upload_id), self.sessions.offset(upload_id))

    def append_upload(self, upload_id: str, stream: BinaryIO, start: int | None, length: int | None = None) -> dict:
        record = self._upload(upload_id)
        offset = self.sessions.append(upload_id, stream, start, head_check=partial(check_head, record["path"]),
                                      limit=record["size"], length=length)
        with self.catalog.transaction() as tx:
            tx.touch(record["model_id"], self.clock())
        return views.upload_view(record, offset)

    def finish_upload(self, upload_id: str, digest: str | None = None) -> dict:
        """Check size and digest, then move the session's bytes into the draft."""
        record = self._upload(upload_id)
        expected = _parse_digest(digest) or _parse_digest(record["digest"])

        def attach(data: Path, actual: Digest, size: int) -> dict:  # under the session's lock (uploads.py)
            if record["size"] is not None and size != record["size"]:
                raise BadRequestError(f"upload has {size} of the {record['size']} bytes announced; "
                                      "send the rest first", "size")
            if expected is not None and actual != expected:
                raise DigestMismatchError(f"{record['path']}: digest mismatch: expected {expected}, got {actual}")
            try:
                self._check_limits(record["model_id"], record["path"], size, disk=False)
                return self._attach(record["model_id"], record["path"], data, actual, size)
            except (InvalidFormatError, TooLargeError, NotFoundError, ConflictError):
                self.cancel_upload(upload_id)  # these bytes can never become part of the model
                raise

        result = self.sessions.finish(upload_id, attach)
        self.cancel_upload(upload_id)
        return result

    def cancel_upload(self, upload_id: str) -> None:
        with self.catalog.transaction() as tx:
            tx.delete_upload(upload_id)
        self.sessions.discard(upload_id)

    # -- commit, one-shot upload, delete ---------------------------------------------------------

    def commit(self, model_id: str) -> dict:
        """Make a draft `ready`: only once its tree is built and holds every file, so what is listed can be served."""
        model = self._require_draft(self.catalog.model(model_id), model_id)
        if self.catalog.uploads_of(model_id):
            raise ConflictError("the model has unfinished uploads; finish or cancel them first", "uploads")
        files = model["files"]
        if not files:
            raise InvalidFormatError("the model has no files", "files")
        trees.refuse_conflicts(f["path"] for f in files)  # drafts from before paths were checked at upload time
        fmt = detect_format([f["path"] for f in files], model["format"])
        details = model_details(fmt, {f["path"]: f["info"] or {} for f in files})
        lineage = model["lineage"]
        if fmt == "lora" and details.get("base_model") and not (lineage or {}).get("base_model"):
            lineage = {**(lineage or {}), "base_model": details["base_model"]}
        snapshot = {(f["path"], f["digest"]) for f in files}
        staged = trees.stage_tree(self.trees, self.blobs, model_id, files)  # complete and checked, or 409
        final = self.trees / model_id
        try:
            with self.catalog.transaction() as tx:
                self._require_draft(tx.model(model_id), model_id)
                if {(f["path"], f["digest"]) for f in tx.files(model_id)} != snapshot:
                    raise ConflictError("the model's files changed during the commit; commit again", "files")
                if tx.uploads_of(model_id):
                    raise ConflictError("the model has unfinished uploads; finish or cancel them first", "uploads")
                if model["requested_version"] is None and (twin := tx.ready_twin(model["name"], snapshot)):
                    # The same bytes again under the next v<n> would be a second name for one model, made
                    # silently (issue 22); an explicit version is the operator asking for exactly that.
                    raise ConflictError(f"model {model['name']}:{twin['version']} ({twin['id']}) already holds "
                                        "these files (the same paths and sha256); nothing new was stored. Give a "
                                        "version to register them again under another", "files")
                version = model["requested_version"] or tx.next_version(model["name"])
                if tx.version_taken(model["name"], version):
                    raise ConflictError(f"model {model['name']}:{version} already exists", "version")
                tx.mark_ready(model_id, version=version, fmt=fmt, details=details, lineage=lineage,
                              size=sum(f["size"] for f in files), now=self.clock())
                shutil.rmtree(final, ignore_errors=True)  # left by a crash; the model is a draft until this commits
                try:  # the last step of the transaction: if it fails, the model stays a draft
                    os.rename(staged, final)
                except OSError as exc:
                    raise ConflictError(f"the model's tree could not be put in place ({exc.strerror}); "
                                        "the model stays a draft, commit again", "files") from None
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            if (self.catalog.model(model_id) or {}).get("state") != READY:  # e.g. the COMMIT itself failed
                shutil.rmtree(final, ignore_errors=True)
            raise
        return self.get_model(model_id)

    def upload_model(self, *, name: str, filename: str, stream: BinaryIO, length: int | None = None,
                     digest: str | None = None, **draft: object) -> dict:
        """Register a single-file model in one request; on any failure nothing remains.

        The file is the whole model, so its name and the declared format are checked before a byte of the
        body is read (issue 22: `x.bin` declared gguf was refused only after the whole body had arrived)."""
        path = validate_file_path(filename, "filename")
        self.check_draft(name=name, version=draft.get("version"), fmt=draft.get("fmt"),
                         source=draft.get("source", "upload"), lineage=draft.get("lineage"))
        detect_format([path], draft.get("fmt"))
        model = self.create_draft(name=name, **draft)
        try:
            self.put_file(model["id"], path, stream, digest=digest, length=length)
            return self.commit(model["id"])
        except BaseException:
            self.delete_model(model["id"])
            raise

    def delete_model(self, model_id: str) -> None:
        with self.catalog.transaction() as tx:
            if tx.model(model_id) is None:
                raise NotFoundError(f"no model {model_id!r}", "id")
            uploads = tx.uploads_of(model_id)
            for upload in uploads:
                tx.delete_upload(upload["id"])
            for digest in tx.delete_model(model_id):
                if not tx.is_referenced(digest):  # still linked by another model: it stays
                    self.blobs.delete(Digest.parse(digest))
        for upload in uploads:
            self.sessions.discard(upload["id"])
        shutil.rmtree(self.trees / model_id, ignore_errors=True)

    # -- housekeeping ----------------------------------------------------------------------------

    def expire_drafts(self) -> int:
        stale = self.catalog.stale_drafts(self.clock() - self.draft_ttl)
        for model_id in stale:
            log.info("removing draft %s: untouched for %d s", model_id, self.draft_ttl)
            try:
                self.delete_model(model_id)
            except NotFoundError:
                pass
        return len(stale)

    def startup_cleanup(self) -> None:
        """Before serving: drop temp files, session files without a record and unreferenced blobs."""
        for tmp in self.blobs.root.glob(".incoming-*"):
            tmp.unlink(missing_ok=True)
        trees.remove_staged(self.trees)
        known = {u["id"] for u in self.catalog.all_uploads()}
        for orphan in self.sessions.orphans(known):
            self.sessions.discard(orphan)
        referenced = self.catalog.referenced_digests()
        for digest in list(self.blobs.digests()):
            if str(digest) not in referenced:
                log.info("removing unreferenced blob %s", digest)
                self.blobs.delete(digest)
        self.expire_drafts()


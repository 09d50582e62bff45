"""Import a model from URLs: an asynchronous job with progress, resumable, committed like an upload.

`POST /imports` names the files (each a URL and its path in the model); a small
pool of threads downloads them into `imports/<job id>/` with the agent's download
engine (urlfetch: parallel ranges, resume, sha256 computed while the bytes land),
moves each into a draft model, then commits it, so a failed import never shows
up in the model list. Progress goes to the local `imports` table
(GET /imports/<id>) and, when the job came from the controller, to the job's
Redis record (eldric.cluster.jobstore), so it shows in /api/v1/models/pull-jobs like a pull.

Tokens are kept in memory only: after a restart, imports that need one fail
with a message saying so; token-less ones resume where their files stopped.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable

import redis
import requests

from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.jobs.store import REGISTRY_WORKER_ID
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.request_errors import (BadRequestError, ConflictError, RequestError, NotFoundError,
                                   UnavailableError)
from registry.service import RegistryService
from eldric.cluster.registry_api import parse_import_request
from eldric.transfer.http import bearer, http_session
from eldric.core.redaction import redact_url
from eldric.transfer.urlfetch import FetchOptions, fetch
from registry.views import iso_time

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")



def import_view(record: dict) -> dict:
    spec = record["spec"]
    return {"id": record["id"], "state": record["state"], "status": record["status"], "error": record["error"],
            "completed": record["completed"], "total": record["total"],
            "percent": jobstate.percent(record["completed"], record["total"]),
            "model_id": record["model_id"], "draft_id": record["draft_id"], "name": spec["name"],
            "version": spec["version"], "source": spec["source"],
            "files": [{"url": redact_url(f["url"]), "path": f["path"]} for f in spec["files"]],
            "created_at": iso_time(record["created_at"]), "updated_at": iso_time(record["updated_at"])}


class Importer:
    def __init__(self, service: RegistryService, *, redis_client: redis.Redis | None = None, workers: int = 2,
                 fetch_options: FetchOptions | None = None,
                 session_factory: Callable[[], requests.Session] = http_session) -> None:
        self.service, self.redis = service, redis_client
        self.options = fetch_options or FetchOptions(max_bytes=service.max_file_bytes)
        self.session_factory = session_factory
        self.dir = service.root / "imports"
        self._tokens: dict[str, str] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"import-{i}", daemon=True) for i in range(workers)]

    def start(self) -> Importer:
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, body: dict) -> dict:
        spec, token = parse_import_request(body)
        # Fail on a bad name/version/format now, not minutes later in the job.
        self.service.check_draft(name=spec["name"], version=spec["version"], fmt=spec["format"], source="import")
        job_id = body.get("job_id") or uuid.uuid4().hex
        if not _JOB_ID.match(job_id):
            raise BadRequestError("job_id must be 1-64 characters of [A-Za-z0-9_-]", "job_id")
        if body.get("job_id") and self.redis is None:
            raise UnavailableError("this registry has no Redis URL (--redis-url), so it cannot report job progress")
        existing = self.service.catalog.import_record(job_id)
        if existing is not None:
            return import_view(existing)  # a retried request: the job is already there
        now = time.time()
        record = {"id": job_id, "spec": spec, "state": jobstate.JOB_PENDING, "status": "queued",
                  "completed": 0, "total": 0, "created_at": now, "updated_at": now}
        with self.service.catalog.transaction() as tx:
            tx.save_import(record)
        if token:
            self._tokens[job_id] = token
        self._queue.put(job_id)
        return self.status(job_id)

    def status(self, job_id: str) -> dict:
        record = self.service.catalog.import_record(job_id)
        if record is None:
            raise NotFoundError(f"no import {job_id!r}", "id")
        return import_view(record)

    def resume_unfinished(self) -> int:
        """Queue the imports a previous run of the registry left unfinished."""
        unfinished = self.service.catalog.unfinished_imports()
        for record in unfinished:
            self._queue.put(record["id"])
        return len(unfinished)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                self._run(job_id)
            except Exception:
                log.exception("import %s crashed", job_id)

    def _progress(self, job_id: str) -> Progress:
        def save(record: dict) -> None:
            with self.service.catalog.transaction() as tx:
                tx.update_import(job_id, status=record["status"], completed=int(record["completed"] or 0),
                                 total=int(record["total"] or 0), updated_at=time.time())
        return Progress(self.redis, job_id, REGISTRY_WORKER_ID, min_interval=0.5, on_write=save,
                        tolerate_redis_errors=True)

    def _run(self, job_id: str) -> None:
        record = self.service.catalog.import_record(job_id)
        spec = record["spec"]
        progress = self._progress(job_id)
        token = self._tokens.get(job_id)
        try:
            if spec["has_token"] and token is None:
                raise ConflictError("the registry restarted during this import and keeps no tokens on disk; "
                                         "start the import again")
            draft_id = record["draft_id"] or self._new_draft(job_id, spec)
            self._set(job_id, state=jobstate.JOB_RUNNING, draft_id=draft_id)
            progress.start(source=spec["source"], status="starting the import")
            model = self.service.get_model(draft_id)
            if model["state"] != "ready":  # else: committed just before a restart
                self._download_all(job_id, spec, draft_id, token, progress)
                progress.update(force=True, status="checking and committing the model")
                model = self.service.commit(draft_id)
            self._set(job_id, state=jobstate.JOB_COMPLETED, model_id=model["id"], error=None)
            progress.finish(status=f"imported as {model['reference']} ({model['id']})")
        except Exception as exc:
            reason = str(exc) if isinstance(exc, RequestError) else f"internal error: {exc}"
            if not isinstance(exc, RequestError):
                log.exception("import %s failed", job_id)
            self._abandon(job_id)
            self._set(job_id, state=jobstate.JOB_FAILED, error=reason)
            progress.fail(reason)
        finally:
            self._tokens.pop(job_id, None)
            shutil.rmtree(self.dir / job_id, ignore_errors=True)

    def _new_draft(self, job_id: str, spec: dict) -> str:
        origin = {"job_id": job_id, "source": spec["source"], "urls": [redact_url(f["url"]) for f in spec["files"]]}
        draft = self.service.create_draft(name=spec["name"], version=spec["version"], fmt=spec["format"],
                                          source="import", description=spec["description"], origin=origin)
        return draft["id"]

    def _download_all(self, job_id: str, spec: dict, draft_id: str, token: str | None,
                      progress: Progress) -> None:
        done_bytes = 0
        have = {f["path"]: f for f in self.service.get_model(draft_id)["files"]}
        headers = {"User-Agent": "eldric-registry", **bearer(token)}
        session = self.session_factory()
        session.trust_env = False
        for index, entry in enumerate(spec["files"]):
            label = f"{entry['path']} ({index + 1}/{len(spec['files'])})"
            if entry["path"] in have and entry["digest"] in (None, have[entry["path"]]["sha256"]):
                done_bytes += have[entry["path"]]["size"]  # fetched before a restart
                continue

            def on_bytes(size: int, total: int | None, base: int = done_bytes, label: str = label) -> None:
                progress.update(status=f"downloading {label}", layer=label, completed=base + size,
                                total=base + max(size, total or 0))
            # A partial download stays in imports/<job>/partial until the job ends, so an import
            # the registry's restart interrupted resumes there (resume_unfinished).
            staging = self.dir / job_id
            expected = Digest.parse(entry["digest"]) if entry["digest"] else None
            path, digest, size = fetch(session, entry["url"], BlobStore(staging / "done"), staging / "partial",
                                       key=str(index), expected=expected, headers=headers, options=self.options,
                                       on_bytes=on_bytes)
            self.service.add_local_file(draft_id, entry["path"], path, digest, size)
            done_bytes += size

    def _abandon(self, job_id: str) -> None:
        record = self.service.catalog.import_record(job_id)
        if record and record["draft_id"]:
            try:
                self.service.delete_model(record["draft_id"])
            except NotFoundError:
                pass

    def _set(self, job_id: str, **fields: object) -> None:
        with self.service.catalog.transaction() as tx:
            tx.update_import(job_id, updated_at=time.time(), **fields)

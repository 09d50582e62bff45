"""A pull: one model from the Ollama registry (or its mirror, the cluster's registry, or a peer) into the node's
Ollama store, and its GGUF into every other backend of the node that serves it (worker_agent/serving.py)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eldric.cluster.jobs import state as jobstate
from eldric.core.manifests import OLLAMA_MODEL, Manifest
from eldric.core.names import ModelName
from eldric.transfer.diskspace import ensure_space, is_disk_full, no_space_error
from eldric.transfer.download import DownloadOptions, download_blob
from eldric.transfer.partials import resumable_bytes
from worker_agent.fanout import Fanout
from worker_agent.installers import UnsupportedModelError
from worker_agent.installing import install_entry, placement_summary, roll_back
from worker_agent.runtime import Agent
from worker_agent import eviction, serving
from worker_agent.ollama_store import OllamaStore
from eldric.cluster.jobs.progress import Progress
from worker_agent.sources import BlobSource, RegistrySource
from worker_agent.verifying import verify_blobs_present

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullResult:
    model: str
    digest: str
    size: int
    downloaded: int

    def to_json(self) -> dict:
        return {"model": self.model, "digest": self.digest, "size": self.size, "downloaded": self.downloaded}


def manifest_digest(raw: bytes) -> str:
    """A model's digest as inventories record it: the sha256 of its manifest's bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def upstream_digest(source: BlobSource, name: ModelName) -> str:
    """The digest of the manifest the tag points at now (pins' update check)."""
    raw, _manifest = source.fetch_manifest(name)
    return manifest_digest(raw)


class BackendInstalls:
    """The node's backends for one pull: planned from the manifest before any download, the GGUF
    installed into the file backends (llama.cpp, vLLM) before the manifest is written, so a
    model Ollama lists is in every backend that serves it; then each backend's API is asked."""

    def __init__(self, agent: Agent, name: ModelName, progress: Progress) -> None:
        self.agent, self.name, self.progress = agent, name, progress
        self.plan: serving.BackendPlan | None = None
        self.installed: dict[str, dict] = {}

    def check(self, manifest: Manifest) -> None:
        """UnsupportedModelError naming every backend and why, when none of them can serve it."""
        self.plan = serving.plan_pull(self.agent.settings, self.name, manifest,
                                      serving.catalog_claims(self.agent, self.name))

    def install(self, manifest: Manifest) -> None:
        plan = self.plan
        if serving.OLLAMA in plan.serving:
            self.installed[serving.OLLAMA] = serving.ollama_store_install(
                self.name, str(self.agent.store.manifest_path(self.name)))
        files = plan.without(serving.OLLAMA)
        if not files.serving:
            return  # an Ollama-only node: the manifest is the install, as it always was
        self.progress.update(force=True, state=jobstate.INSTALLING, status="installing")
        previous = self.agent.store.read_manifest(self.name)  # a re-pull: what the store lists until ours is written
        try:
            self.installed.update(install_entry(self.agent, self._entry(manifest), files))
        except UnsupportedModelError:
            if not self.installed:
                raise  # nothing serves it, not even Ollama's store
        except BaseException:
            # install_entry removed what it placed; a re-pull's file backends get the listed version back
            self._restore(previous, files)
            raise

    def undo(self, manifest: Manifest) -> None:
        """The manifest could not be written: every file backend goes back to what the store still lists
        (the earlier version of a re-pull, or nothing), so no backend serves a model Ollama does not list."""
        done = {b: r for b, r in self.installed.items() if b != serving.OLLAMA}
        if not done:
            return
        previous = self.agent.store.read_manifest(self.name)
        if previous is None or not self._restore(previous, self.plan.without(serving.OLLAMA)):
            roll_back(self.agent, self._entry(manifest), done)

    def _entry(self, manifest: Manifest) -> dict:
        layer = manifest.layer_of(OLLAMA_MODEL)
        return {"name": self.name.short, "format": "gguf",
                "files": [{"path": serving.pulled_file(self.name), "sha256": str(layer.digest), "size": layer.size}]}

    def _restore(self, previous: tuple[bytes, Manifest] | None, files: serving.BackendPlan) -> bool:
        """Install the GGUF of the manifest the store lists again, backend by backend (a failure is logged: the
        debris sweep reports what stayed); False when there is none to go back to."""
        if previous is None or previous[1].layer_of(OLLAMA_MODEL) is None:
            return False
        if not self.agent.store.blobs.has(previous[1].layer_of(OLLAMA_MODEL).digest):
            return False
        entry = self._entry(previous[1])
        for backend, config in files.serving.items():  # one by one: the backend that refused the new one may refuse this
            try:
                install_entry(self.agent, entry, serving.BackendPlan(files.name, files.format, {backend: config},
                                                                     {}, files.order))
            except Exception as exc:  # noqa: BLE001 - the pull's own error is what the job reports; the sweep sees the rest
                log.warning("%s: could not put the listed version back into %s: %s", self.name.short, backend, exc)
        return True

    def fields(self) -> dict:
        """The record's `placement` (every backend: how, or skipped why) and `ready` (each one's API)."""
        plan = self.plan
        return {"placement": placement_summary(self.installed, plan.skipped, plan.order),
                "ready": serving.readiness(plan, self.installed)}


def pull_model(name: ModelName, *, store: OllamaStore, source: BlobSource, progress: Progress,
               options: DownloadOptions = DownloadOptions(), reserve: int = 1 << 30,
               fanout: Fanout | None = None, backends: BackendInstalls | None = None,
               room: Callable[[Path, int, str, int], None] = ensure_space) -> PullResult:
    """Manifest, then every missing blob (verified), then the manifest file last.

    The manifest is what makes a model visible to Ollama, so it is written only
    after every blob it names is in place: a half-pulled model is never listed.
    Every blob the manifest names is leased before the pull looks at what is present
    and until the manifest is written (worker_agent/blob_leases.py), so a delete of
    another model sharing a blob cannot remove it meanwhile.
    The space check counts only the bytes still missing (a partial download of an
    earlier try is on the disk already); a disk that fills anyway is an
    InsufficientSpaceError, and the partial data of the blob that did not fit is deleted.
    With `fanout`, each blob is shared with the job's other workers (worker_agent/fanout.py).
    With `backends`, the manifest is first checked against the node's backends (none of them can
    serve it: fail before a byte is downloaded), and the model is installed into them before the
    manifest is written. `room`: the space check (eviction.room_check for a job with make_room).
    """
    store.ensure()
    progress.update(force=True, status="pulling manifest", source=source.describe())
    raw, manifest = source.fetch_manifest(name)
    if backends is not None:
        backends.check(manifest)
    progress.start(total=manifest.total_size, source=source.describe())
    with store.leases.hold(progress.job_id, [b.digest for b in manifest.blobs()]):
        downloaded = _fetch_missing(name, manifest, store, source, progress, options, reserve, fanout, room)
        progress.update(force=True, status="verifying sha256 digest", layer=None)
        verify_blobs_present(store, [(b.digest, b.size) for b in manifest.blobs()], name.short)
        if backends is not None:
            backends.install(manifest)
        progress.update(force=True, status="writing manifest")
        try:
            store.write_manifest(name, raw)
        except BaseException as exc:
            if backends is not None:
                backends.undo(manifest)
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise no_space_error(store.manifests_dir, len(raw), f"the manifest of {name.short}") from None
            raise
    return PullResult(model=name.short, digest=manifest_digest(raw),
                      size=manifest.total_size, downloaded=downloaded)


def _fetch_missing(name: ModelName, manifest: Manifest, store: OllamaStore, source: BlobSource, progress: Progress,
                   options: DownloadOptions, reserve: int, fanout: Fanout | None,
                   room: Callable[[Path, int, str, int], None] = ensure_space) -> int:
    """Download every blob of `manifest` the store lacks; the bytes that crossed the network."""
    blobs = manifest.blobs()
    present = [b for b in blobs if store.blobs.has(b.digest, b.size)]
    missing = sum(b.size - resumable_bytes(store.partial_dir, b.digest, b.size) for b in blobs if b not in present)
    room(store.partial_dir, missing, name.short, reserve)
    reused = sum(b.size for b in present)
    progress.update(reused=reused)  # on the node already: counted as done, not as network bytes (metrics)
    if present:
        progress.add_bytes(reused)
    downloaded = 0
    for blob in blobs:
        if blob in present:
            continue
        progress.update(status=f"pulling {blob.digest.hex[:12]}", layer=str(blob.digest))
        before = progress.moved()
        download_blob(
            lambda start, end, timeout, d=blob.digest: source.open_range(name, d, start, end, timeout),
            blob.digest, blob.size, store.blobs, store.partial_dir, options,
            on_bytes=fanout.on_bytes if fanout else progress.add_bytes, owner=progress.job_id,
            swarm=fanout.swarm(blob.digest) if fanout else None,
            upstream_take=fanout.upstream_take if fanout else None, on_resumed=progress.add_resumed,
        )
        downloaded += progress.moved() - before  # a resumed partial's bytes did not cross the network now
    return downloaded


def pull_from_ollama(agent: Agent, model: str, progress: Progress, options: dict | None = None,
                     job_source: str | None = None) -> dict:
    """A pull: the model from the Ollama registry (or the configured mirror) into Ollama's store; from the
    cluster's registry when the job's source says so (a created or pushed model: RegistrySource.for_job)."""
    name = ModelName.parse(model)
    source = RegistrySource.for_job(name, agent.settings, job_source)
    fanout = Fanout(agent, progress, options)
    fanout.pace(source.session)
    return pull_into_store(agent, name, source, progress, fanout)


def pull_into_store(agent: Agent, name: ModelName, source: BlobSource, progress: Progress, fanout: Fanout) -> dict:
    backends = BackendInstalls(agent, name, progress)
    try:
        result = pull_model(name, store=agent.store, source=source, progress=progress,
                            options=agent.download_options, reserve=agent.settings.disk_reserve_bytes, fanout=fanout,
                            backends=backends, room=eviction.room_check(agent, progress.job_id))
    finally:
        fanout.close()
    progress.finish(total=result.size, digest=result.digest, transferred=result.downloaded, **fanout.fields(),
                    **backends.fields())
    return result.to_json()

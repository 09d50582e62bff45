"""Distribution of one model to this node from any source: registry, peer worker, URL (an Ollama-registry
source is a pull: worker_agent/pulling.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.core.digests import Digest
from eldric.core.names import ModelName
from eldric.core.names import FileModelRef
from eldric.core.redaction import redact_url
from eldric.transfer.download import download_blob
from eldric.transfer.partials import resumable_bytes
from eldric.transfer.upstreams import AddressPolicy
from eldric.cluster.jobs.store import JobEndedError
from eldric.transfer.errors import DownloadStoppedError, SourceError, SourceUnavailableError
from worker_agent.blob_leases import BlobLease
from worker_agent.fanout import Fanout, leave_swarms
from worker_agent.installers import BackendUnavailableError
from worker_agent.file_sources import DataRegistrySource, HttpFileSource, PeerSource, RemoteFile
from worker_agent.installing import install_and_list, placement_summary
from eldric.cluster.jobs.progress import Progress
from worker_agent.pulling import pull_from_ollama, pull_into_store
from worker_agent.runtime import Agent
from worker_agent import eviction, serving
from worker_agent.verifying import verify_blobs_present

FINGERPRINT_FILE = ".eldric-fingerprint"
# What the distribute and pull tasks retry (worker_agent/tasks.py): the source or a backend's API unreachable.
RETRIED_ERRORS = (SourceUnavailableError, BackendUnavailableError)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One try of a worker's part: is it the last (no retry follows), and may it skip an unreachable backend."""

    last_try: bool = True
    partial_ok: bool = False

    @property
    def skip_unreachable(self) -> bool:
        return self.partial_ok and self.last_try


def distribute(agent: Agent, model: str, options: dict, secrets: dict, progress: Progress,
               last_try: bool = True) -> dict:
    """Bring `model` here from the job's source. All or nothing per worker (worker_agent/installing.py):
    with the job's `partial_ok`, a backend still unreachable on the `last_try` is skipped instead of failing it."""
    source = options.get("source")
    attempt = Attempt(last_try=last_try, partial_ok=bool(options.get("partial_ok")))
    if source == "ollama":
        return pull_from_ollama(agent, model, progress, options)  # a pull by another name
    if source == "worker":
        return _from_peer(agent, model, options, secrets, progress, attempt)
    if source == "registry":
        return _from_registry(agent, options, progress, attempt)
    if source == "url":
        return _from_url(agent, model, options, secrets, progress, attempt)
    raise SourceError(f"unknown source {source!r}")


def _from_peer(agent: Agent, model: str, options: dict, secrets: dict, progress: Progress, attempt: Attempt) -> dict:
    address = agent.redis.hget(keys.worker(options["from_worker"]), "address")
    if not address:
        raise SourceError(f"source worker {options['from_worker']} is not registered")
    peer = PeerSource(address, agent.settings.cluster_secret, name=f"worker {options['from_worker']}")
    exported = peer.export(model)
    fanout = Fanout(agent, progress, options, from_peer=options["from_worker"])
    if exported.get("kind") == "ollama":
        return pull_into_store(agent, ModelName.parse(model), peer, progress, fanout)
    entry = exported["entry"]
    entry = {k: entry[k] for k in ("name", "format", "details", "files", "source", "lineage") if k in entry}
    return _store_files(agent, entry, peer.files(entry), progress, f"worker {options['from_worker']}", fanout,
                        attempt=attempt)


def _from_registry(agent: Agent, options: dict, progress: Progress, attempt: Attempt) -> dict:
    """From the data node's registry (its NIC is an uplink too: the job's workers share what they fetched)."""
    src = DataRegistrySource(options["registry_url"], agent.settings.cluster_secret)
    model = src.model(options["registry_model_id"])
    entry = {"name": f"{model['name']}:{model['version']}", "format": model.get("format"),
             "details": model.get("details") or {}, "source": "registry", "registry_model_id": model["id"],
             "files": [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in model["files"]]}
    shared = shared_tree(agent.settings.shared_mounts, model.get("storage") or {}, model["files"])
    if shared is not None:
        return _use_shared(agent, entry, shared, progress, attempt)
    fanout = Fanout(agent, progress, options)
    fanout.pace(src.session)
    return _store_files(agent, entry, src.files(model), progress, "registry", fanout, attempt=attempt)


def _from_url(agent: Agent, model: str, options: dict, secrets: dict, progress: Progress, attempt: Attempt) -> dict:
    url = secrets.get("url") or ""
    src = HttpFileSource(url, token=secrets.get("token"), policy=AddressPolicy.parse(agent.settings.url_allowlist))
    filename = options.get("filename") or Path(redact_url(url)).name or "model.bin"
    expected = Digest.parse(options["sha256"]) if options.get("sha256") else None
    remote, ranged = src.remote_file(filename, expected)
    origin = redact_url(url)
    if remote.digest is None:  # a file this node fetched from there before, unchanged since, is not fetched again
        remote = replace(remote, digest=held_url_file(agent, origin, remote.size, src.validator))
    fmt = "gguf" if filename.lower().endswith(".gguf") else options.get("format") or "other"
    entry = {"name": model, "format": fmt, "details": {}, "source": "url", "origin": origin, "files": []}
    if src.validator:
        entry["validator"] = src.validator
    fanout = Fanout(agent, progress, options)
    fanout.pace(src.source.session)
    return _store_files(agent, entry, [remote], progress, redact_url(url), fanout, single_range=not ranged,
                        attempt=attempt)


def held_url_file(agent: Agent, origin: str, size: int, validator: str | None) -> Digest | None:
    """The digest of the file at `origin` this node already holds, verified (issue 22, finding 6): a catalog
    entry fetched from the same URL (query string aside: S3 signatures change) whose server validator (ETag,
    else Last-Modified) and size are the same now. Without a validator nothing says the file is unchanged."""
    if not validator:
        return None
    for entry in agent.catalog.entries():
        files = entry.get("files") or []
        if entry.get("source") != "url" or entry.get("origin") != origin or entry.get("validator") != validator \
                or len(files) != 1 or int(files[0].get("size", -1)) != size:
            continue
        digest = Digest.parse(files[0]["sha256"])
        if agent.store.blobs.has(digest, size):  # named by the sha256 it was verified against
            return digest
    return None


def _store_files(agent: Agent, entry: dict, files: list[RemoteFile], progress: Progress, origin: str,
                 fanout: Fanout, single_range: bool = False, attempt: Attempt = Attempt()) -> dict:
    """Fetch every missing file into the blob store, install for the backends, then list the model.

    A file of known digest is shared with the job's other workers (`fanout`); one from a server
    that ignores Range is fetched alone, in one stream. A part that fails for good (no retry
    follows) deletes the model's blobs nothing else uses: a failed distribution leaves nothing behind.
    """
    held: set[str] = set()  # every blob digest the part leased (hex), those learnt while downloading too
    try:  # leased before the store is looked at, until the catalog lists them (worker_agent/blob_leases.py)
        with agent.store.leases.hold(progress.job_id, [f.digest for f in files if f.digest is not None]) as lease:
            held = lease.digests
            return _fetch_and_install(agent, entry, files, progress, origin, fanout, single_range, lease, attempt)
    except (JobEndedError, DownloadStoppedError):
        raise  # cancelled, skipped or shutting down: the job runner decides about its data
    except Exception as exc:
        if attempt.last_try or not isinstance(exc, RETRIED_ERRORS):
            _drop_unlisted_blobs(agent, entry, held)
        raise
    finally:
        fanout.close()


def _drop_unlisted_blobs(agent: Agent, entry: dict, digests: set[str]) -> None:
    """The blobs of a part that failed for good, unless a manifest, a catalog entry or a running job uses them."""
    removed = agent.store.delete_blobs([Digest.parse(f"sha256:{d}") for d in sorted(digests)],
                                       keep=agent.catalog.referenced_digests)
    if removed:
        leave_swarms(agent.redis, agent.worker_id, agent.store.blobs, removed)
        log.info("%s: the part failed for good; removed %d blob(s) no model uses", entry["name"], len(removed))


def _fetch_and_install(agent: Agent, entry: dict, files: list[RemoteFile], progress: Progress, origin: str,
                       fanout: Fanout, single_range: bool, lease: BlobLease, attempt: Attempt) -> dict:
    FileModelRef.parse(entry["name"])  # refuse a name the catalog cannot hold before any byte moves
    # and a model none of the node's backends can serve (the reasons, per backend, are the error)
    plan = serving.plan_files(agent.settings, entry["name"], entry.get("format"), [f.path for f in files])
    blobs = agent.store.blobs
    missing = sum(f.size - resumable_bytes(agent.store.partial_dir, f.digest, f.size, f.key)
                  for f in files if f.digest is None or not blobs.has(f.digest, f.size))
    eviction.ensure_room(agent, progress.job_id, agent.store.partial_dir, missing, entry["name"],
                         agent.settings.disk_reserve_bytes)  # with the job's make_room: evict first
    progress.start(total=sum(f.size for f in files), source=origin)
    transferred, stored = 0, []
    progress.update(reused=sum(f.size for f in files if f.digest is not None and blobs.has(f.digest, f.size)))
    for f in files:
        if f.digest is not None and blobs.has(f.digest, f.size):
            progress.add_bytes(f.size)
            stored.append({"path": f.path, "sha256": str(f.digest), "size": f.size})
            continue
        options = agent.download_options
        if single_range:  # the server ignores Range: one stream, restarted from 0 on failure
            options = replace(options, part_bytes=max(1, f.size), parts=1)
        progress.update(status=f"downloading {f.path}", layer=f.path)
        before = progress.moved()
        path = download_blob(f.open_range, f.digest, f.size, blobs, agent.store.partial_dir, options,
                             on_bytes=fanout.on_bytes, key=f.key, owner=progress.job_id,
                             swarm=None if single_range else fanout.swarm(f.digest), upstream_take=fanout.upstream_take,
                             on_resumed=progress.add_resumed)
        transferred += progress.moved() - before
        if f.digest is None:
            lease.add([Digest.parse(path.name)])
        stored.append({"path": f.path, "sha256": str(Digest.parse(path.name)), "size": f.size})
    verify_blobs_present(agent.store, [(Digest.parse(f["sha256"]), f["size"]) for f in stored], entry["name"])
    entry = {**entry, "files": stored, "size": sum(f["size"] for f in stored), "digest": model_digest(stored),
             "shared": False}
    progress.update(force=True, state=jobstate.INSTALLING, status="installing")
    entry = install_and_list(agent, entry, plan, skip_unreachable=attempt.skip_unreachable)
    progress.finish(total=entry["size"], digest=entry["digest"], transferred=transferred,
                    placement=placement_summary(entry["installed"], plan.skipped, plan.order),
                    ready=serving.readiness(plan, entry["installed"]), **fanout.fields())
    return {"model": entry["name"], "digest": entry["digest"], "size": entry["size"], "downloaded": transferred}


def _use_shared(agent: Agent, entry: dict, tree: Path, progress: Progress, attempt: Attempt) -> dict:
    """The registry's export is mounted here: point the backends at it, move no bytes."""
    total = sum(int(f["size"]) for f in entry["files"])
    plan = serving.plan_files(agent.settings, entry["name"], entry.get("format"), [f["path"] for f in entry["files"]])
    progress.update(force=True, state=jobstate.INSTALLING, status="shared", total=total, source=str(tree))
    entry = {**entry, "size": total, "digest": model_digest(entry["files"]), "shared": True, "shared_path": str(tree)}
    entry = install_and_list(agent, entry, plan, skip_unreachable=attempt.skip_unreachable)
    progress.finish(total=total, digest=entry["digest"], transferred=0, status="shared", shared=True,
                    placement=placement_summary(entry["installed"], plan.skipped, plan.order),
                    ready=serving.readiness(plan, entry["installed"]))
    return {"model": entry["name"], "digest": entry["digest"], "size": total, "downloaded": 0, "shared": True}


def shared_tree(mounts: tuple[str, ...], storage: dict, files: list[dict]) -> Path | None:
    """The model's tree under a mount proven (by the fingerprint file) to be the registry's storage."""
    fingerprint, tree = storage.get("fingerprint"), storage.get("tree")
    if not fingerprint or not tree:
        return None
    for mount in mounts:
        root = Path(mount)
        try:
            if (root / FINGERPRINT_FILE).read_text().strip() != fingerprint:
                continue
        except OSError:
            continue
        candidate = root / tree
        if all((candidate / f["path"]).is_file() and (candidate / f["path"]).stat().st_size == int(f["size"])
               for f in files):
            return candidate
    return None


def model_digest(files: list[dict]) -> str:
    """A file model's identity: the sha256 of its sorted (path, sha256) list."""
    canonical = json.dumps(sorted((f["path"], str(f["sha256"])) for f in files), separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

"""A copy (Ollama's `/api/copy`): this node's store model gets a second name, in every backend that serves it.

Ollama's CopyModel writes the source's manifest bytes under the destination's name; the blobs are shared.
Done the same here, and laid out as a pull of the destination would have been (worker_agent/pulling.py
BackendInstalls): the GGUF is hard-linked into the file backends (llama.cpp `<slug>.gguf`, vLLM
`<slug>/<slug>.gguf`) under the destination's name before the manifest is written, so a name the store lists
is in every backend that serves it, and a failure leaves no destination anywhere. A delete of either name
later keeps the shared blobs while the other manifest references them (OllamaStore.delete_model).

File models (registry, URL, peer distributions in the catalog) are not copied: the controller refuses them
with 409 (controller/copy_jobs.py); their name is their registry reference.
"""

from __future__ import annotations

from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.progress import Progress
from eldric.core.errors import EldricError
from eldric.core.names import ModelName
from eldric.transfer.diskspace import is_disk_full, no_space_error
from worker_agent.pulling import BackendInstalls, manifest_digest
from worker_agent.runtime import Agent
from worker_agent.verifying import verify_blobs_present


class CopyError(EldricError):
    """The copy cannot be made on this node (no such source, a destination the catalog holds)."""


def copy_model(agent: Agent, source: str, destination: str, progress: Progress) -> dict:
    """Give store model `source` the name `destination` on this node (an existing destination is replaced,
    as Ollama does); idempotent, so a redelivered task does the same again."""
    src, dst = ModelName.parse(source), ModelName.parse(destination)
    progress.update(force=True, state=jobstate.INSTALLING, status=f"copying {src.short} to {dst.short}")
    found = agent.store.read_manifest(src)
    if found is None:
        raise CopyError(f"model '{src.short}' is not in this worker's store")
    raw, manifest = found
    if src != dst:
        _refuse_catalog_name(agent, dst)
        with agent.store.leases.hold(progress.job_id, [b.digest for b in manifest.blobs()]):
            verify_blobs_present(agent.store, [(b.digest, b.size) for b in manifest.blobs()], src.short)
            backends = BackendInstalls(agent, dst, progress)
            backends.check(manifest)
            backends.install(manifest)
            try:
                agent.store.write_manifest(dst, raw)
            except BaseException as exc:
                backends.undo(manifest)
                if isinstance(exc, OSError) and is_disk_full(exc):
                    raise no_space_error(agent.store.manifests_dir, len(raw), f"the manifest of {dst.short}") from None
                raise
        fields = backends.fields()
    else:
        fields = {"placement": "already under that name"}
    progress.finish(total=manifest.total_size, digest=manifest_digest(raw), transferred=0, **fields)
    return {"source": src.short, "destination": dst.short, "digest": manifest_digest(raw)}


def _refuse_catalog_name(agent: Agent, name: ModelName) -> None:
    """A destination that is a file model here would be listed twice under one name (store and catalog)."""
    try:
        held = agent.catalog.get(name.short)
    except EldricError:  # not a catalog name at all
        return
    if held is not None:
        raise CopyError(f"'{name.short}' is a file model on this worker ({held.get('source') or 'catalog'}); "
                        "delete it first or copy to another name")

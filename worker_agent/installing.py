"""Installing a file model into the backends this node serves (see worker_agent/installers/)."""

from __future__ import annotations

import logging

from worker_agent import installers
from worker_agent.catalog import entry_files
from worker_agent.installers import LocalModel, UnsupportedModelError
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)


def install_entry(agent: Agent, entry: dict) -> dict:
    """Install `entry` (its files in the blob store or shared tree) for every configured backend
    that can serve its format; return what each did.

    A backend that cannot serve the format is skipped with the reason; if none of
    them can, the job fails (a model no backend serves is of no use on the node).
    Other install errors propagate: BackendUnavailableError is retried by the task.
    """
    configs = installers.backend_configs(agent.settings)
    if not configs:
        return {}
    digests = {f["path"]: f["sha256"] for f in entry.get("files", [])}
    shared_path = entry.get("shared_path") if entry.get("shared") else None
    model = LocalModel.from_files(entry["name"], entry_files(entry, agent.store.blobs), format=entry.get("format"),
                                  digests=digests)
    done, skipped = {}, {}
    for name, config in configs.items():
        try:
            result = installers.install(model, config, shared_path=shared_path)
        except UnsupportedModelError as exc:
            skipped[name] = str(exc)
            continue
        done[name] = result.to_json()
    if not done:
        raise UnsupportedModelError("no backend on this node can serve it: " +
                                    "; ".join(f"{b}: {why}" for b, why in skipped.items()))
    for name, why in skipped.items():
        log.info("%s not installed for %s: %s", entry["name"], name, why)
    return done


def placement_summary(installed: dict) -> str:
    """How the files reached each backend, for the worker's progress: linked (one copy) or copied (and why)."""
    parts = []
    for backend, result in sorted(installed.items()):
        if result.get("shared"):
            parts.append(f"{backend}: shared storage")
        elif not result.get("changed"):
            parts.append(f"{backend}: already in place")
        elif result.get("bytes_copied"):
            why = " (other filesystem)" if not result.get("files_linked") else ""
            parts.append(f"{backend}: copied {result['bytes_copied'] / 2**30:.2f} GiB{why}")
        elif result.get("files_linked"):
            parts.append(f"{backend}: hard-linked, no copy")
        else:
            parts.append(f"{backend}: installed")
    return "installed for " + ", ".join(parts) if parts else "installed"


def uninstall_entry(agent: Agent, entry: dict) -> None:
    """Remove `entry` from every backend it was installed into."""
    configs = installers.backend_configs(agent.settings)
    for name in entry.get("installed", {}):
        if name in configs:
            installers.uninstall(entry["name"], configs[name])

"""Installing a file model into the backends this node serves (see worker_agent/installers/)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from worker_agent import installers
from worker_agent.catalog import entry_files
from eldric.core.errors import EldricError
from worker_agent.installers import BackendUnavailableError, LocalModel, UnsupportedModelError
from worker_agent.runtime import Agent
from worker_agent.serving import BackendPlan, plan_files

log = logging.getLogger(__name__)


def install_entry(agent: Agent, entry: dict, plan: BackendPlan | None = None, *,
                  skip_unreachable: bool = False) -> dict:
    """Install `entry` (its files in the blob store or shared tree) for every backend of `plan` (by default
    every configured backend that can serve its format, worker_agent/serving.py); return what each did.

    All or nothing (README "Distribution and backends"): a backend that cannot serve the format is
    skipped with the reason (in `plan.skipped`); any other failure (a backend refusing the model, or
    unreachable) first undoes what this call installed in the other backends (`roll_back`), then
    propagates naming the backend, so no backend keeps a model the catalog will not list.
    BackendUnavailableError is retried by the task; with `skip_unreachable` (a distribution's
    `partial_ok`, on its last try) an unreachable backend is skipped instead, the reason in `plan.skipped`.
    If no backend is left, the job fails (a model no backend serves is of no use on the node).
    """
    if plan is None:
        plan = plan_files(agent.settings, entry["name"], entry.get("format"), [f["path"] for f in entry.get("files", [])])
    configs = plan.serving
    if not configs:
        return {}
    model = _local_model(agent, entry)
    shared_path = entry.get("shared_path") if entry.get("shared") else None
    done: dict[str, dict] = {}
    unreachable: BackendUnavailableError | None = None
    for name, config in configs.items():
        try:
            result = installers.install(model, config, shared_path=shared_path)
        except UnsupportedModelError as exc:
            plan.skipped[name] = str(exc)
            continue
        except BackendUnavailableError as exc:
            if not skip_unreachable:
                raise _rolled_back(agent, entry, done, name, exc) from exc
            plan.skipped[name] = f"unreachable, skipped (partial_ok): {exc}"
            roll_back(agent, entry, {name: {"changed": True}})  # Triton may have its files, unloaded
            unreachable = exc
            continue
        except Exception as exc:
            raise _rolled_back(agent, entry, done, name, exc) from exc
        done[name] = result.to_json()
    if not done:
        if unreachable is not None:
            raise unreachable
        raise UnsupportedModelError(plan.refusal())
    for name, why in plan.skipped.items():
        log.info("%s not installed for %s: %s", entry["name"], name, why)
    return done


def install_and_list(agent: Agent, entry: dict, plan: BackendPlan, *, skip_unreachable: bool = False) -> dict:
    """Install `entry`, then list it in the catalog; a catalog that cannot take it (a full disk) rolls
    the installs back, so a backend never serves a model the node does not list. Returns the entry."""
    entry = {**entry, "installed": install_entry(agent, entry, plan, skip_unreachable=skip_unreachable)}
    try:
        agent.catalog.put(entry)
    except BaseException:
        roll_back(agent, entry, entry["installed"])
        raise
    return entry


def roll_back(agent: Agent, entry: dict, done: Mapping[str, dict]) -> list[str]:
    """Undo the installs in `done` (backend -> install result) of `entry`; return what could not be undone.

    Only what the install changed is undone (a backend that had it in place already keeps it). A backend
    that held an earlier version the catalog lists gets that version back; any other loses the model
    (Triton unloads it through its repository API). Failures are logged and returned, not raised: the
    install's own error is what the job reports, and the debris sweep finds what stayed.
    """
    configs = installers.backend_configs(agent.settings)
    previous = _catalog_entry(agent, entry["name"])
    failed = []
    for backend, result in done.items():
        if not result.get("changed") or backend not in configs:
            continue
        try:
            if previous is not None and backend in previous.get("installed", {}):
                installers.install(_local_model(agent, previous), configs[backend],
                                   shared_path=previous.get("shared_path") if previous.get("shared") else None)
            else:
                installers.uninstall(entry["name"], configs[backend])
        except Exception as exc:  # noqa: BLE001 - every backend gets its try; the sweep reports what stayed
            log.warning("%s: could not roll back its install in %s: %s", entry["name"], backend, exc)
            failed.append(f"{backend} ({exc})")
    return failed


def _rolled_back(agent: Agent, entry: dict, done: Mapping[str, dict], backend: str, exc: Exception) -> Exception:
    """`exc` of `backend`, after the other backends' installs were undone, saying so (same type: retries stay)."""
    undone = [b for b, r in done.items() if r.get("changed")]
    undo = dict(done)
    if isinstance(exc, BackendUnavailableError):  # its files may be in place, not loaded (Triton keeps them for a retry)
        undo[backend] = {"changed": True}
    failed = roll_back(agent, entry, undo)
    text = f"{backend}: {exc}"
    if undone:
        text += f"; rolled back its install in {', '.join(undone)}"
    if failed:
        text += f" (could not undo: {'; '.join(failed)})"
    try:
        return type(exc)(text)
    except TypeError:  # an exception class with another constructor: keep it, the log has the rest
        return exc


def _local_model(agent: Agent, entry: dict) -> LocalModel:
    digests = {f["path"]: f["sha256"] for f in entry.get("files", [])}
    return LocalModel.from_files(entry["name"], entry_files(entry, agent.store.blobs), format=entry.get("format"),
                                 digests=digests)


def _catalog_entry(agent: Agent, name: str) -> dict | None:
    try:
        return agent.catalog.get(name)
    except EldricError:  # a pulled model's name (hf.co/...) is no catalog name: the catalog has nothing of it
        return None


def placement_summary(installed: Mapping[str, dict], skipped: Mapping[str, str] | None = None,
                      order: tuple[str, ...] = ()) -> str:
    """How the model reached each backend, for the worker's record, in `order` (ELDRIC_BACKENDS'): linked
    (one copy), copied and why, already in place, Ollama's store, shared storage; or skipped and why."""
    how = {backend: _how_placed(result) for backend, result in installed.items()}
    how.update((backend, f"skipped ({why})") for backend, why in (skipped or {}).items())
    names = [b for b in order if b in how] + [b for b in how if b not in order]
    return "installed for " + ", ".join(f"{b}: {how[b]}" for b in names) if names else "installed"


def _how_placed(result: dict) -> str:
    if result.get("ollama_store"):
        return "Ollama store"
    if result.get("shared"):
        return "shared storage"
    if not result.get("changed"):
        return "already in place"
    if result.get("bytes_copied"):
        why = f" ({result['copy_reason']})" if result.get("copy_reason") else ""
        return f"copied {result['bytes_copied'] / 2**30:.2f} GiB{why}"
    if result.get("files_linked"):
        return "hard-linked, no copy"
    return "installed"


def uninstall_entry(agent: Agent, entry: dict) -> None:
    """Remove `entry` from every backend it was installed into."""
    configs = installers.backend_configs(agent.settings)
    for name in entry.get("installed", {}):
        if name in configs:
            installers.uninstall(entry["name"], configs[name])

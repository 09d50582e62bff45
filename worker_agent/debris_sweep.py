"""The debris sweep: backend entries that no model of this node owns, reported or removed.

An install is all or nothing (worker_agent/installing.py), but a node can still hold backend files
no catalog entry (nor Ollama store manifest) owns: an agent killed between a backend's rename and the
catalog write, a rollback whose backend was down, installs by versions before the rollback existed
(issue 22, finding 3: a vLLM directory and a loaded Triton model of `acme/st-notok:v1`, in no catalog,
so no delete could reach them). Nothing lists them, so nothing else would ever remove them.

Beat fans `maintenance.sweep_debris` out to every online inference and cloud worker (eldric/cluster/
maintenance.py); each looks at the entries of its backends' directories, by the backends' own layout:
llama.cpp `<dir>/<name>.gguf` or `<dir>/<name>/`, vLLM, TGI and Triton `<dir>/<name>/`, and the
Modelfile folders `<data dir>/backends/ollama/<name>/`. An entry is debris unless

- its name is the backend name (`model_slug`) of a catalog entry or a model in the Ollama store;
- a job this worker has not finished is about that model (it is being installed right now);
- one of its files is a blob a running job has leased (worker_agent/blob_leases.py);
- it was placed less than `grace` seconds ago (the mtime of Eldric's install record, written when
  the entry is placed: an install whose catalog entry is about to be written);
- its name starts with a dot (staging directories, install records, Ollama's own state).

`ELDRIC_DEBRIS_SWEEP` chooses what happens to debris: `report` (the default) lists it in the log
(WARNING) and in `eldric:worker:<id>:debris`, removes nothing; `remove` also removes each entry that
carries Eldric's install record (Triton's unloaded through its repository API first, an Ollama model
deleted through Ollama's API). An entry without Eldric's record (a model an operator placed by hand)
is only ever reported. Report is the default because a sweep that deletes acts on what it cannot
see: a data directory mounted late, or a catalog restored from an old backup, makes every model
look unowned, and on a GPU node that means re-fetching hundreds of GB; the report shows first what a
`remove` would take.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving
from eldric.core.digests import Digest
from eldric.core.errors import EldricError
from worker_agent import installers
from worker_agent.installers import BackendConfig, model_slug
from worker_agent.installers.staging import FILE_RECORDS, RECORD, remove_entry
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)

REPORT, REMOVE = "report", "remove"
ACTIONS = (REPORT, REMOVE)
GRACE_SECONDS = 3600.0  # placed this recently: maybe an install whose catalog entry is being written
OLLAMA_STATE = ".eldric-ollama.json"  # worker_agent/installers/ollama.py: what Eldric created in Ollama
_MODELFILE_HEADER = re.compile(r"^# (\S+): installed by Eldric")


@dataclass(frozen=True)
class Debris:
    """One backend entry no model of the node owns."""

    backend: str
    name: str  # the entry's name in the backend's directory (a model's `model_slug`)
    path: str
    bytes: int  # its files' sizes (a hard link to the blob store frees its bytes only with the last name)
    placed_by_eldric: bool  # carries Eldric's install record: only such an entry is ever removed
    placed_at: float
    loaded: bool | None = None  # Triton: the model is loaded (None: not asked, or no answer)
    removed: bool = False
    error: str | None = None  # why a removal failed

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class SweepResult:
    action: str
    found: list[Debris]

    def to_json(self) -> dict:
        return {"action": self.action, "found": [d.to_json() for d in self.found],
                "removed": sum(d.removed for d in self.found)}


@dataclass(frozen=True)
class _Entry:
    backend: str
    name: str
    path: Path
    record: Path | None  # Eldric's install record (or Ollama state); None: not placed by Eldric

    def files(self) -> Iterator[Path]:
        if self.path.is_dir() and not self.path.is_symlink():
            yield from (p for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())
        elif self.path.is_file() and not self.path.is_symlink():
            yield self.path


def sweep_debris(agent: Agent, action: str = REPORT, *, grace: float = GRACE_SECONDS,
                 now: float | None = None) -> SweepResult:
    """Find (and with `remove`, remove) this node's backend debris; publish what was found."""
    if action not in ACTIONS:
        raise ValueError(f"debris sweep action must be one of {', '.join(ACTIONS)}, not {action!r}")
    found = [remove_debris(agent, entry, debris, grace=grace) if action == REMOVE else debris
             for entry, debris in find_debris(agent, grace=grace, now=now)]
    for d in found:
        if d.removed:
            log.info("debris sweep removed %s's %s (%d bytes): no model of this node owns it", d.backend, d.path, d.bytes)
        else:  # a file an operator placed by hand is theirs to judge: listed, without a warning each hour
            log.log(logging.WARNING if d.placed_by_eldric else logging.INFO,
                    "debris: %s's %s (%d bytes%s) belongs to no model of this node%s", d.backend, d.path, d.bytes,
                    ", loaded" if d.loaded else "",
                    f"; not removed: {d.error}" if d.error else
                    "" if action == REPORT else "; not removed: not placed by Eldric")
    publish(agent.redis, agent.worker_id, found)
    return SweepResult(action, found)


def find_debris(agent: Agent, *, grace: float = GRACE_SECONDS, now: float | None = None) -> list[tuple[_Entry, Debris]]:
    """This node's debris, removing nothing (the GC sweep's look too: worker_agent/gc_sweep.py)."""
    if not is_model_serving(agent.settings.worker_type):
        return []
    now = time.time() if now is None else now
    configs = installers.backend_configs(agent.settings)
    owned = owned_names(agent)
    with agent.store.leases.exclusive():
        leased = agent.store.leases.leased()
    leased_inodes = _inodes(agent, leased)
    found = []
    for entry in (e for backend, config in configs.items() for e in _entries(backend, config)):
        if entry.name in owned or _is_leased(entry, leased, leased_inodes):
            continue
        placed_at = _placed_at(entry)
        if now - placed_at < grace:
            continue
        found.append((entry, Debris(entry.backend, entry.name, str(entry.path), _size(entry), entry.record is not None,
                                    placed_at, loaded=_is_loaded(entry, configs[entry.backend]))))
    return found


def remove_debris(agent: Agent, entry: _Entry, debris: Debris, *, grace: float = GRACE_SECONDS) -> Debris:
    """Remove one find if Eldric placed it and nothing claimed it since it was found; the Debris says what happened."""
    if not debris.placed_by_eldric or _claimed_meanwhile(agent, entry, grace):
        return debris
    return _remove(entry, installers.backend_configs(agent.settings)[entry.backend], debris)


def owned_names(agent: Agent) -> set[str]:
    """Backend names of every model of the node (catalog, store) and of every job it has not finished."""
    names = [e["name"] for e in agent.catalog.entries() if e.get("name")]
    names += [m["name"] for m in agent.store.list_models()]
    for job_id in agent.redis.smembers(keys.worker_jobs(agent.worker_id)):
        model = agent.redis.hget(keys.job(job_id), "model")
        if model:
            names.append(model)
    out = set()
    for name in names:
        try:
            out.add(model_slug(name))
        except EldricError:
            continue  # not a model name: owns no backend entry
    return out


def _claimed_meanwhile(agent: Agent, entry: _Entry, grace: float) -> bool:
    """Looked at again just before removing: a job that started installing it since the first look."""
    return entry.name in owned_names(agent) or time.time() - _placed_at(entry) < grace


def publish(client: redis.Redis, worker_id: str, found: list[Debris]) -> None:
    """Replace the worker's debris report: path -> JSON record."""
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker_debris(worker_id))
        remaining = {d.path: json.dumps(d.to_json()) for d in found if not d.removed}
        if remaining:
            pipe.hset(keys.worker_debris(worker_id), mapping=remaining)
        pipe.execute()


def _entries(backend: str, config: BackendConfig) -> Iterator[_Entry]:
    root = Path(config.models_dir) if config.models_dir else None
    if root is None or not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if backend == "ollama":
            state = path / OLLAMA_STATE
            if path.is_dir():
                yield _Entry(backend, path.name, path, state if state.is_file() else None)
        elif path.is_dir() and not path.is_symlink():
            yield _Entry(backend, path.name, path, path / RECORD if (path / RECORD).is_file() else None)
        elif backend == "llamacpp" and path.name.endswith(".gguf"):
            record = root / FILE_RECORDS / f"{path.name}.json"
            yield _Entry(backend, path.name.removesuffix(".gguf"), path, record if record.is_file() else None)


def _placed_at(entry: _Entry) -> float:
    try:
        return (entry.record or entry.path).lstat().st_mtime
    except OSError:
        return time.time()  # vanished meanwhile: treat as new, so it is left alone


def _size(entry: _Entry) -> int:
    seen, total = set(), 0
    for f in entry.files():
        st = f.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _inodes(agent: Agent, leased: set[str]) -> set[tuple[int, int]]:
    out = set()
    for hex_digest in leased:
        try:
            st = agent.store.blobs.path(Digest.parse(f"sha256:{hex_digest}")).stat()
        except (OSError, EldricError):
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def _is_leased(entry: _Entry, leased: set[str], inodes: set[tuple[int, int]]) -> bool:
    """A running job counts on one of its files: by the digest Eldric recorded, or as the same inode."""
    if entry.record is not None and entry.record.name != OLLAMA_STATE:
        try:
            doc = json.loads(entry.record.read_bytes())
        except (OSError, ValueError):
            doc = {}
        recorded = [*(doc.get("files") or {}).values(), doc.get("file") or {}] if isinstance(doc, dict) else []
        if any(str(r.get("digest", "")).removeprefix("sha256:") in leased for r in recorded if isinstance(r, dict)):
            return True
    for f in entry.files():
        try:
            st = f.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            return True
    return False


def _is_loaded(entry: _Entry, config: BackendConfig) -> bool | None:
    if entry.backend != "triton":
        return None
    try:
        return installers.installer_for(config).is_ready(entry.name, timeout=config.ready_timeout)
    except EldricError:
        return None


def _remove(entry: _Entry, config: BackendConfig, debris: Debris) -> Debris:
    try:
        if entry.backend == "triton":  # unloaded first, through the repository API
            installers.installer_for(config).remove(entry.name)
        elif entry.backend == "ollama":
            name = _ollama_name(entry.path)
            if name is None:
                raise EldricError("its Modelfile does not say which Ollama model it made")
            installers.installer_for(config).uninstall(name)
            remove_entry(entry.path)
        else:
            remove_entry(entry.path)
    except (EldricError, OSError) as exc:
        log.warning("debris sweep could not remove %s's %s: %s", entry.backend, entry.path, exc)
        return Debris(**{**asdict(debris), "error": str(exc)})
    return Debris(**{**asdict(debris), "removed": True})


def _ollama_name(folder: Path) -> str | None:
    try:
        with open(folder / "Modelfile", encoding="utf-8") as f:
            m = _MODELFILE_HEADER.match(f.readline())
    except OSError:
        return None
    return m.group(1) if m else None


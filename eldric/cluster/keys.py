"""Every Redis key the cluster uses, built here and nowhere else (documented in the README)."""

PREFIX = "eldric"

WORKERS = f"{PREFIX}:workers"  # SET of registered worker ids
JOBS = f"{PREFIX}:jobs"  # ZSET job id -> created_at (newest first listing)


def worker(worker_id: str) -> str:
    """HASH: id, type, address, backends (JSON), free_disk, data_dir, registered_at, last_seen."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_alive(worker_id: str) -> str:
    """STRING with a TTL, refreshed by the agent's heartbeat: present means online."""
    return f"{PREFIX}:worker:{worker_id}:alive"


def worker_models(worker_id: str) -> str:
    """HASH model name -> JSON inventory record, written by the agent."""
    return f"{PREFIX}:worker:{worker_id}:models"


def worker_loaded(worker_id: str) -> str:
    """STRING with a TTL of three heartbeats: JSON list of the models its backends have loaded now
    (Ollama's /api/ps entries, plus `backend`), written by the agent's loaded-models reporter."""
    return f"{PREFIX}:worker:{worker_id}:loaded"


def worker_served(worker_id: str) -> str:
    """HASH model name -> epoch seconds the agent's inference relay last served it (worker_agent/last_use.py)."""
    return f"{PREFIX}:worker:{worker_id}:served"


EVICTIONS = f"{PREFIX}:evictions"  # HASH worker id -> models its agent evicted (ever; worker_agent/eviction.py)


# ZSET "<worker id>|<request id>" -> start time: the inference requests the controllers are streaming now,
# one key for the cluster, so counting them costs one read however many workers there are.
ROUTE_IN_FLIGHT = f"{PREFIX}:route:in-flight"
ROUTE_REQUESTS = f"{PREFIX}:route:requests"  # HASH worker id -> inference requests routed to it (ever)
ROUTE_ERRORS = f"{PREFIX}:route:errors"  # HASH worker id -> routed requests that failed on it (ever)
# ZSET worker id -> when it last failed a routed request before the first byte (tried last for a while)
ROUTE_FAILED = f"{PREFIX}:route:failed"


def worker_jobs(worker_id: str) -> str:
    """SET of job ids assigned to the worker (lets a restarted agent resume its work)."""
    return f"{PREFIX}:worker:{worker_id}:jobs"


def worker_debris(worker_id: str) -> str:
    """HASH path -> JSON {backend, name, path, bytes, placed_by_eldric, placed_at, loaded, error}: the last debris sweep's finds."""
    return f"{PREFIX}:worker:{worker_id}:debris"


def worker_gc(worker_id: str) -> str:
    """HASH find id -> JSON {id, kind, path, digest, bytes, first_seen, removable_at}: what GC sweeps found (eldric/cluster/gc.py)."""
    return f"{PREFIX}:worker:{worker_id}:gc"


def worker_gc_sweep(worker_id: str) -> str:
    """HASH {swept_at, removed, removed_bytes, grace, error}: the worker's last GC sweep."""
    return f"{PREFIX}:worker:{worker_id}:gc:sweep"


GC_BYTES = f"{PREFIX}:gc:bytes"  # HASH worker id -> bytes its GC sweeps removed (ever): eldric_gc_bytes_total


def worker_catchups(worker_id: str) -> str:
    """HASH model -> JSON catch-up {job_id, kind, model, source, options, at}: work the worker missed while skipped."""
    return f"{PREFIX}:worker:{worker_id}:catchup"


def job(job_id: str) -> str:
    """HASH: id, kind, model, source, created_at, deadline_at, targets (JSON), options (JSON)."""
    return f"{PREFIX}:job:{job_id}"


def job_workers(job_id: str) -> str:
    """HASH worker id -> JSON progress record (see eldric.cluster.jobstate)."""
    return f"{PREFIX}:job:{job_id}:workers"


def job_states(job_id: str) -> str:
    """HASH per-worker state -> how many of the job's workers are in it (kept by the job store's one write path)."""
    return f"{PREFIX}:job:{job_id}:states"


def shared_pull(model: str) -> str:
    """STRING, TTL the job's deadline: the id of the running cluster-wide Ollama pull of `model` (short name),
    which a second `POST /api/pull` of it attaches to (controller/shared_pulls.py)."""
    return f"{PREFIX}:shared-pull:{model}"


def job_events(job_id: str) -> str:
    """Pub/sub channel: a message each time a worker's progress record changes."""
    return f"{PREFIX}:job:{job_id}:events"


def job_lock(job_id: str, worker_id: str) -> str:
    """STRING with TTL: held while one agent thread executes the job (no double runs)."""
    return f"{PREFIX}:job:{job_id}:lock:{worker_id}"


def job_secrets(job_id: str) -> str:
    """HASH of a job's secrets (source URL with signature, tokens): read by agents, never shown or logged."""
    return f"{PREFIX}:job:{job_id}:secrets"


def swarm(digest: str, part: str) -> str:
    """A blob's swarm (eldric.cluster.swarmboard), one key per `part`: `meta` HASH (size, range_bytes),
    `sha` HASH range -> sha256 hex, `holders` HASH range -> space-separated worker ids,
    `leases` HASH range -> "worker expiry_ms", `fetchers` HASH worker -> "worker expiry_ms" (upstream slots).
    Expire SWARM_TTL after the last write."""
    return f"{PREFIX}:swarm:{digest}:{part}"


def upstream_rate(job_id: str) -> str:
    """HASH tokens, stamp: the token bucket of a job's cap on the cluster's upstream rate."""
    return f"{PREFIX}:job:{job_id}:upstream-rate"

MIRROR_UPDATES = f"{PREFIX}:mirror:updates"  # HASH repository:tag -> JSON last upstream update check (mirror_updates.py)


PINS = f"{PREFIX}:pins"  # HASH model name (short form) -> JSON pin record (eldric/cluster/pins.py)


def pin_attempts(model: str) -> str:
    """HASH worker id -> JSON {job_id, at}: the last pull started for this pin on that worker."""
    return f"{PREFIX}:pin:{model}:attempts"


def maintenance_lock(name: str) -> str:
    """STRING with TTL: held while one agent runs scheduled job `name` (no concurrent runs)."""
    return f"{PREFIX}:maintenance:{name}:lock"


REDBEAT_PREFIX = f"{PREFIX}:redbeat:"  # RedBeat's keys: <prefix>:schedule, <prefix>:lock, <prefix><entry>

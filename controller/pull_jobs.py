"""Starting per-worker jobs (pull, delete): validate, pick targets, record the job, enqueue per worker."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery

from eldric.cluster.jobs import start
from eldric.cluster.dispatch import job_sender
from eldric.cluster.jobs.reads import prune_jobs
from controller.models import workers_with
from controller.target_placement import PlacementRequest, place_targets
from controller.workers import list_workers, select_targets
from eldric.core.request_errors import BadRequestError, ConflictError, NotFoundError, UpstreamUnavailableError
from eldric.cluster.queues import TASK_DELETE, TASK_PULL
from eldric.core.errors import InvalidNameError
from eldric.core.names import ModelName
from eldric.core.redaction import redact_url
from eldric.transfer.errors import HostNotAllowedError, ModelNotFoundError, TransferError
from eldric.transfer.registry_upstream import LOOKUP_CONNECT_TIMEOUT, RegistryUpstream, check_model, setting_of
from eldric.transfer.upstreams import AddressPolicy, RegistryAllowList


@dataclass(frozen=True)
class JobLimits:
    deadline_seconds: float
    retention_seconds: float
    keep_max: int
    forget_after: float | None = None
    # What a job may reach, checked before anything is queued (the agents check again on every hop).
    upstreams: RegistryAllowList | None = None
    url_policy: AddressPolicy | None = None
    # Where the agents pull registry names from: a pull's manifest is asked there once before it fans out.
    registry: RegistryUpstream | None = None
    # What placement leaves free on every worker's disk (ELDRIC_PLACEMENT_RESERVE_BYTES).
    placement_reserve: int = 1 << 30


def parse_model(model: str, upstreams: RegistryAllowList | None = None) -> ModelName:
    """The Ollama name, refused with 400 when it is malformed or names a registry outside the allow-list."""
    try:
        name = ModelName.parse(model)
        if upstreams is not None:
            upstreams.check(name)
    except (InvalidNameError, HostNotAllowedError) as exc:
        raise BadRequestError(str(exc), field="model") from None
    return name


def check_upstream(name: ModelName, registry: RegistryUpstream | None) -> int | None:
    """The model's manifest is where the agents will fetch it (one GET, short timeouts): 404 saying what is
    there instead (its tags, the lowercase name), 502 naming the setting when that registry cannot be asked.
    Returns the model's size as the manifest says it (None when not asked or not said), for placement."""
    if registry is None:
        return None
    client = registry.client(name, connect_timeout=LOOKUP_CONNECT_TIMEOUT)
    try:
        return check_model(client, name)
    except ModelNotFoundError as exc:
        raise NotFoundError(str(exc), field="model") from None
    except TransferError as exc:
        setting = f" ({setting_of(name)})" if setting_of(name) else ""
        raise UpstreamUnavailableError(f"cannot ask {redact_url(client.base)}{setting} for '{name.short}': {exc}; "
                                       "nothing was queued") from None


def choose_targets(client: redis.Redis, workers: list[str] | None, limits: JobLimits) -> list[str]:
    targets, refused, unknown = select_targets(
        list_workers(client, forget_after=limits.forget_after), workers)
    if unknown:
        raise NotFoundError(f"unknown worker(s): {', '.join(unknown)}")
    if refused:
        raise BadRequestError(f"not inference or cloud workers, they never take model work: {', '.join(refused)}",
                              field="workers")
    if not targets:
        raise ConflictError("no inference or cloud workers are registered")
    return [w["id"] for w in targets]


def start_pull(client: redis.Redis, producer: Celery, *, model: str, workers: list[str] | None,
               limits: JobLimits, caps: dict | None = None, placement: PlacementRequest | None = None) -> str:
    """`caps`: the job's transfer caps (max_upstream_rate, max_upstream_workers), kept in its options.
    `placement`: replicas / selector / spread (controller/target_placement.py), sized by the manifest."""
    name = parse_model(model, limits.upstreams)
    ids = choose_targets(client, workers, limits)
    size = check_upstream(name, limits.registry)
    return enqueue_placed(client, producer, kind="pull", task=TASK_PULL, model=name.short, targets=ids,
                          source="ollama", limits=limits, options=dict(caps or {}), placement=placement, size=size)


def enqueue_placed(client: redis.Redis, producer: Celery, *, kind: str, task: str, model: str, targets: list[str],
                   source: str, limits: JobLimits, options: dict, placement: PlacementRequest | None,
                   size: int | None, secrets: dict | None = None) -> str:
    """enqueue_job over `targets` as placement narrows them (all of them without a placement request)."""
    if placement is None:
        return enqueue_job(client, producer, kind=kind, task=task, model=model, targets=targets, source=source,
                           limits=limits, options=options, secrets=secrets)
    placed = place_targets(client, targets, placement, model=model, size=size, reserve=limits.placement_reserve)
    return enqueue_job(client, producer, kind=kind, task=task, model=model, targets=placed.targets, source=source,
                       limits=limits, options={**options, "placement": placed.options}, secrets=secrets,
                       reasons=placed.reasons, skipped=placed.skipped)


def start_cluster_pull(client: redis.Redis, producer: Celery, *, model: str, limits: JobLimits) -> str:
    """A pull to every inference and cloud worker of a model the cluster's registry holds (created or pushed
    through the Ollama API): source `cluster`, so the agents fetch it from the data node whatever their
    ELDRIC_OLLAMA_REGISTRY says; nothing is asked of that upstream."""
    name = parse_model(model)
    ids = choose_targets(client, None, limits)
    return enqueue_job(client, producer, kind="pull", task=TASK_PULL, model=name.short, targets=ids,
                       source=start.CLUSTER_REGISTRY, limits=limits)


def start_delete(client: redis.Redis, producer: Celery, *, model: str, workers: list[str] | None,
                 limits: JobLimits) -> str:
    """Delete from the listed workers, or from every worker whose inventory has the model."""
    name = parse_model(model)
    if workers is None:
        ids = workers_with(client, name.short)
        if not ids:
            raise NotFoundError(f"no worker has model '{name.short}'")
    else:
        ids = choose_targets(client, workers, limits)
    return enqueue_job(client, producer, kind="delete", task=TASK_DELETE, model=name.short, targets=ids,
                     source="local", limits=limits)


def enqueue_job(client: redis.Redis, producer: Celery, *, kind: str, task: str, model: str, targets: list[str],
              source: str, limits: JobLimits, options: dict | None = None, secrets: dict | None = None,
              reasons: dict[str, str] | None = None, skipped: dict[str, str] | None = None) -> str:
    """start_job (eldric/cluster/jobs/start.py) with Celery as its sender, then the history bound applied."""
    job_id = start.start_job(client, job_sender(producer), kind=kind, task=task, model=model, targets=targets,
                             source=source, deadline_seconds=limits.deadline_seconds, options=options, secrets=secrets,
                             reasons=reasons, skipped=skipped)
    prune_jobs(client, retention_seconds=limits.retention_seconds, keep_max=limits.keep_max)
    return job_id

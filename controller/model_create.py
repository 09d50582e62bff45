"""Building a model once in the cluster's registry and distributing it: `POST /api/create` below its view.

`prepare` checks everything a create needs before anything is written (the base model, every uploaded
blob, the GGUF header, target workers) and plans the build; `run` then copies what the registry lacks of
the base from a worker, stores the new small blobs, writes the manifest (the last write: a model is in
the registry whole or not at all) and distributes it as a pull job of every inference and cloud worker
with source `cluster` (the agents fetch it from the data node, not from ELDRIC_OLLAMA_REGISTRY), its
progress told as Ollama-style status lines. A worker lists the model (so `/api/tags` does) only once it
holds every blob, as for any pull.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from celery import Celery

from controller import pull_jobs
from controller.cluster_registry import ClusterRegistry
from controller.model_sources import WorkerCopy, worker_copy
from controller.pull_jobs import JobLimits
from eldric.cluster.jobs import reads as jobs
from eldric.cluster.jobs import state as jobstate
from eldric.core.create_requests import CreateSpec
from eldric.core.digests import Digest
from eldric.core.errors import InvalidNameError
from eldric.core.formats import _file_type_name
from eldric.core.manifests import CONFIG, OLLAMA_ADAPTER, OLLAMA_MODEL, OLLAMA_PARAMS, Layer, Manifest
from eldric.core.model_build import Base, Build, build_model
from eldric.core.names import ModelName
from eldric.core.request_errors import BadRequestError, ConflictError, NotFoundError

POLL_SECONDS = 0.25
SMALL_BLOB = 1 << 20  # a params or config blob read whole


@dataclass
class Cluster:
    """What a create reaches: Redis, the job producer, the data node's registry, the secret, job limits."""

    redis: redis.Redis
    producer: Celery
    registry: ClusterRegistry
    secret: str
    limits: JobLimits
    stale_after: float
    offline_grace: float


@dataclass
class Plan:
    spec: CreateSpec
    build: Build
    source: WorkerCopy | None = None               # where base blobs the registry lacks come from
    missing: list[Layer] = field(default_factory=list)


def check_cluster_registry(registry_url: str) -> None:
    """A created model is stored in, and reaches the agents from, the data node's registry: the controller
    must know where it is."""
    if not registry_url:
        raise ConflictError("the controller has no cluster registry: set ELDRIC_REGISTRY_URL to the data node's URL "
                            "(e.g. http://data-1:8892) on the controller and the agents; created models are stored "
                            "there and the workers pull them from it")


def prepare(spec: CreateSpec, cluster: Cluster) -> Plan:
    pull_jobs.choose_targets(cluster.redis, None, cluster.limits)  # 409 when no worker could take it
    if spec.format != "gguf":  # a registry file model (controller/file_create.py) once the blobs are known
        for digest in spec.files.values():
            if cluster.registry.blob_size(digest) is None:
                raise BadRequestError(f"blob {digest} is not in the cluster's registry: upload it first "
                                      f"(POST /api/blobs/{digest})", field="files")
        return Plan(spec, build_model(spec, Base()))
    adapters = [_uploaded(cluster.registry, d, OLLAMA_ADAPTER)[0] for d in spec.adapters.values()]
    if spec.base:
        base, source, missing = _base(spec.base, cluster)
        return Plan(spec, build_model(spec, base, adapters=adapters), source, missing)
    files, facts = [], {}
    for digest in spec.files.values():
        layer, header = _uploaded(cluster.registry, digest, OLLAMA_MODEL)
        files.append(layer)
        if header is not None and not facts:
            meta = header.metadata
            facts = {"architecture": meta.get("general.architecture"), "parameter_count": header.parameter_count,
                     "file_type": _file_type_name(meta.get("general.file_type"))}
    return Plan(spec, build_model(spec, Base(), files=files, adapters=adapters, facts=facts))


def _uploaded(registry: ClusterRegistry, digest: Digest, media_type: str):
    size = registry.blob_size(digest)
    if size is None:
        raise BadRequestError(f"blob {digest} is not in the cluster's registry: upload it first "
                              f"(POST /api/blobs/{digest})", field="files")
    return Layer(media_type, digest, size), registry.gguf_header(digest, size)


def _base(raw_name: str, cluster: Cluster) -> tuple[Base, WorkerCopy | None, list[Layer]]:
    """The `from` model: a worker's copy (a cluster model) first, else what the data node serves under that
    name (a pushed or created model, a registry GGUF model, the mirror). 404 when neither has it."""
    try:
        name = ModelName.parse(raw_name)
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="from") from None
    source = worker_copy(cluster.redis, name, cluster.secret)
    if source is not None:
        manifest = source.manifest
    else:
        found = cluster.registry.manifest(name) if name.is_default_host else None
        if found is None:
            raise NotFoundError(f"model '{raw_name}' not found", field="from")
        manifest = Manifest.parse(found[0])
    repo = name.repository
    missing = [b for b in manifest.blobs() if not cluster.registry.has_blob(b.digest, repo)]
    if missing and source is None:
        raise NotFoundError(f"model '{raw_name}': its blob {missing[0].digest} is in no registry or worker", field="from")

    def small(layer: Layer | None) -> dict:
        if layer is None or layer.size > SMALL_BLOB:
            return {}
        if layer in missing and source is not None:
            with source.open_blob(layer.digest, cluster.secret) as resp:
                data = resp.raw.read(SMALL_BLOB)
        else:
            data = cluster.registry.read_blob(layer.digest, SMALL_BLOB, repo)
        try:
            doc = json.loads(data)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    params = small(manifest.layer_of(OLLAMA_PARAMS))
    config = small(manifest.config) if manifest.config.media_type == CONFIG else {}
    return Base(layers=manifest.layers, params=params, config=config), source, missing


def run(plan: Plan, cluster: Cluster) -> Iterator[dict]:
    """Ollama's create statuses while the model is stored, then the distribution's progress, then success."""
    registry, name = cluster.registry, plan.spec.name
    repo = name.repository
    copied = set()
    for layer in plan.missing:  # a cluster model's blobs the registry lacks, from the worker that has them
        yield from _copy(plan.source, layer, registry, repo, cluster.secret)
        copied.add(layer.digest)
    for layer in plan.build.layers:  # the base's and the uploaded layers were found in prepare (or just copied)
        made = plan.build.blobs.get(str(layer.digest))
        held = made is None or layer.digest in copied or registry.has_blob(layer.digest, repo)
        yield {"status": f"{'using existing' if held else 'creating new'} layer {layer.digest}"}
        if not held:
            registry.upload(layer.digest, made, len(made), repo)
    registry.store_small(plan.build.blobs[str(plan.build.config.digest)], repo)
    yield {"status": "writing manifest"}
    registry.put_manifest(name, plan.build.manifest().to_bytes())
    job_id = pull_jobs.start_cluster_pull(cluster.redis, cluster.producer, model=name.short, limits=cluster.limits)
    manifest = plan.build.manifest()
    model = manifest.layer_of(OLLAMA_MODEL) or manifest.config
    yield from distribution(job_id, cluster, str(model.digest), manifest.total_size)


def _copy(source: WorkerCopy | None, layer: Layer, registry: ClusterRegistry, repo: str,
          secret: str) -> Iterator[dict]:
    assert source is not None
    status = f"copying {layer.digest.hex[:12]} from worker {source.worker}"
    yield {"status": status, "digest": str(layer.digest), "total": layer.size, "completed": 0}
    with source.open_blob(layer.digest, secret) as resp:
        for done in registry.copy(layer.digest, layer.size, resp.raw, repo):
            yield {"status": status, "digest": str(layer.digest), "total": layer.size, "completed": done}


def distribution(job_id: str, cluster: Cluster, digest: str, model_size: int) -> Iterator[dict]:
    """The job's progress summed over its workers (one bar, `digest` naming the model), then success or the
    workers' errors."""
    last = None
    while True:
        job = jobs.get_job(cluster.redis, job_id, stale_after=cluster.stale_after, offline_grace=cluster.offline_grace)
        if job is None:
            yield {"error": f"the distribution job {job_id} vanished (retention too short?)"}
            return
        workers = job["workers"]
        size = max((int(w.get("total") or 0) for w in workers), default=0) or model_size
        event = {"status": f"distributing to {len(workers)} worker{'s' if len(workers) != 1 else ''} (job {job_id})",
                 "digest": digest, "total": size * len(workers),
                 "completed": sum(min(size, int(w.get("completed") or 0)) for w in workers)}
        if event != last:
            yield event
            last = event
        if job["state"] in jobstate.JOB_FINAL:
            break
        time.sleep(POLL_SECONDS)
    failed = [w for w in job["workers"] if w["state"] == "failed"]
    if job["state"] == jobstate.JOB_CANCELLED:
        yield {"error": f"the distribution job {job_id} was cancelled"}
    elif failed:
        yield {"error": "distribution failed on " + "; ".join(f"worker {w['worker']}: {w.get('error')}" for w in failed)}
    else:
        yield {"status": "success"}

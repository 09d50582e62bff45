"""`POST /api/push` below its view: a cluster model into the cluster's registry (the data node's `/v2/`).

Push means: afterwards the data node serves the model under its name, as the workers hold it. The
manifest is the one a worker holds (byte for byte, so its digest is the cluster's); each blob the
registry lacks is copied from that worker (agents serve their blobs to holders of the cluster secret),
in chunks, with Ollama's `pushing <digest>` progress; the manifest is written last, so a push cut
half-way leaves blobs but no model. A model no worker holds but the registry already serves (created
there, pushed before) is already pushed. Ollama pushes to the name's own registry host; here the only
target is the cluster's registry: a model is stored there under its repository and tag
(`other-registry:5000/acme/x:v1` becomes `acme/x:v1`, which agents pulling through the data node know as
`acme/x:v1`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from controller.model_create import Cluster
from controller.model_sources import WorkerCopy, worker_copy
from eldric.core.errors import InvalidNameError
from eldric.core.names import DEFAULT_HOST, ModelName
from eldric.core.request_errors import BadRequestError, NotFoundError


@dataclass(frozen=True)
class PushPlan:
    name: ModelName            # as the workers hold it
    target: ModelName          # where it goes in the cluster's registry
    source: WorkerCopy | None  # None: the registry already serves it


def push_name(raw: object) -> ModelName:
    if not isinstance(raw, str) or not raw:
        raise BadRequestError("model is required", field="model")
    try:
        return ModelName.parse(raw)
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="model") from None


def prepare_push(name: ModelName, cluster: Cluster) -> PushPlan:
    target = ModelName(DEFAULT_HOST, name.namespace, name.model, name.tag)
    if target.repository != target.repository.lower():
        raise BadRequestError(f"model '{name.short}': the registry's repositories are lowercase", field="model")
    source = worker_copy(cluster.redis, name, cluster.secret)
    if source is None and (not name.is_default_host or cluster.registry.manifest(name) is None):
        raise NotFoundError(f"model '{name.short}' not found")
    return PushPlan(name, target, source)


def run_push(plan: PushPlan, cluster: Cluster) -> Iterator[dict]:
    registry, repo = cluster.registry, plan.target.repository
    yield {"status": "retrieving manifest"}
    if plan.source is not None:
        for layer in plan.source.manifest.blobs():
            status = {"status": f"pushing {layer.digest.hex[:12]}", "digest": str(layer.digest), "total": layer.size}
            if registry.has_blob(layer.digest, repo):
                yield {**status, "completed": layer.size}
                continue
            yield {**status, "completed": 0}
            with plan.source.open_blob(layer.digest, cluster.secret) as resp:
                for done in registry.copy(layer.digest, layer.size, resp.raw, repo):
                    yield {**status, "completed": done}
        yield {"status": "pushing manifest"}
        registry.put_manifest(plan.target, plan.source.raw, plan.source.manifest.media_type)
    yield {"status": "success"}

"""/api/v1/workers: cluster membership."""

from flask import current_app
from flask.views import MethodView
from eldric.web.blueprints import Blueprint

from controller import agents, workers as cluster_workers
from eldric.core.request_errors import NotFoundError
from controller.schemas import (RemoveWorkerQuerySchema, WorkerListSchema, WorkerModelsSchema, WorkerQuerySchema,
                                WorkerSchema)
from controller.state import redis_client
from controller.view_cache import cached_json

blp = Blueprint("workers", __name__, url_prefix="/api/v1/workers", description="Worker nodes of the cluster")


@blp.route("")
class Workers(MethodView):
    @blp.arguments(WorkerQuerySchema, location="query")
    @blp.response(200, WorkerListSchema)
    def get(self, query: dict):
        """Every registered worker (those whose labels match `selector`, when given): id, type, address,
        backends, labels, disk, GPUs, online, last seen (an answer at most ELDRIC_VIEW_CACHE_SECONDS old)."""
        selector = query.get("selector") or []

        def build() -> dict:
            workers = cluster_workers.list_workers(redis_client(), forget_after=current_app.config["WORKER_FORGET_SECONDS"])
            workers = cluster_workers.matching(workers, selector)
            return WorkerListSchema().dump({"workers": workers, "total": len(workers),
                                            "online": sum(w["online"] for w in workers)})
        return cached_json(("workers", *selector), build)


@blp.route("/<worker_id>")
class Worker(MethodView):
    @blp.response(200, WorkerSchema)
    def get(self, worker_id: str):
        """One worker."""
        worker = cluster_workers.get_worker(redis_client(), worker_id)
        if worker is None:
            raise NotFoundError(f"no worker {worker_id!r}")
        return worker

    @blp.arguments(RemoveWorkerQuerySchema, location="query")
    @blp.response(204)
    @blp.alt_response(404, description="no such worker")
    @blp.alt_response(409, description="the worker is online (pass force=true)")
    def delete(self, query: dict, worker_id: str):
        """Forget a decommissioned worker: its record, inventory, job assignments, catch-ups."""
        cluster_workers.remove_worker(redis_client(), worker_id, force=query["force"])


@blp.route("/<worker_id>/models")
class WorkerModels(MethodView):
    @blp.response(200, WorkerModelsSchema)
    def get(self, worker_id: str):
        """The worker's local models as its agent last reported them."""
        client = redis_client()
        if cluster_workers.get_worker(client, worker_id) is None:
            raise NotFoundError(f"no worker {worker_id!r}")
        return {"worker": worker_id, "models": cluster_workers.worker_models(client, worker_id)}


@blp.route("/<worker_id>/eviction-plan")
class WorkerEvictionPlan(MethodView):
    @blp.response(200, description="disk (total, used, free, percent), high_watermark and low_watermark (bytes used, "
                  "null when off), over_high, to_free, evict (least recently used first: name, size, last_used, why), "
                  "protected (name, why: pinned, a replica a pin needs, loaded, a running job needs it), kept, short")
    @blp.alt_response(404, description="no such worker")
    @blp.alt_response(503, description="the worker is offline or did not answer")
    def get(self, worker_id: str):
        """What eviction would remove on this worker now and why, and what it may not; changes nothing.

        The worker's agent answers (it alone knows its disk, its backends' loaded models and its running jobs' blobs)."""
        return agents.eviction_plan(redis_client(), worker_id, current_app.config["CLUSTER_SECRET"])

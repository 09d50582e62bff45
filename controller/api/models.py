"""/api/v1/models: the cluster's unified model list, show, delete."""

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields, post_dump, validate

from controller import agents, pull_jobs
from eldric.cluster.jobs import reads as jobs
from controller.models import ModelQuery, query_models
from controller.ollama_shapes import show_answer
from controller.schemas import MAX_OFFSET, JobSchema, model_name_field, worker_ids_field
from controller.view_cache import cached_json
from controller.state import inventory_cache, job_limits, producer, redis_client, offline_grace, stale_after
from eldric.cluster.mirror_updates import mirror_updates_by_model
from eldric.core.names import MAX_NAME_LENGTH
from eldric.web.blueprints import Blueprint

blp = Blueprint("models", __name__, url_prefix="/api/v1/models", description="Models across the cluster")


MAX_MODEL_PAGE = 1000


class WorkerIdList(fields.List):
    """A list of worker ids, documented as strings but dumped as it is: the view builds it from
    Redis's strings, and at 1,000 workers x 100 models a per-item field call costs more than the view."""

    def __init__(self, **kwargs) -> None:
        super().__init__(fields.String(), **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else list(value)


class DigestHolders(fields.Dict):
    """digest -> worker ids, dumped as it is (see WorkerIdList)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(keys=fields.String(), values=fields.List(fields.String()), **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else {str(k): list(v) for k, v in value.items()}


class ClusterModelSchema(Schema):
    name = fields.String()
    size = fields.Integer()
    digest = fields.String(allow_none=True)
    format = fields.String(allow_none=True)
    details = fields.Dict()
    modified_at = fields.Float(allow_none=True)
    workers = WorkerIdList(metadata={"description": "workers where at least one backend serves the model"})
    stored_not_served = WorkerIdList(metadata={
        "description": "workers holding it in their store that no backend of theirs serves (not counted in coverage)"})
    status = fields.String(metadata={"description": "served (some worker's backend serves it) or 'stored, not served'"})
    missing = WorkerIdList(metadata={"description": "inference/cloud workers where no backend serves it"})
    coverage = fields.Float(metadata={"description": "percent of inference/cloud workers where a backend serves it"})
    consistent = fields.Boolean(metadata={"description": "every worker holding it has the same digest"})
    digests = DigestHolders(metadata={"description": "digest -> the workers holding the model with it"})
    mirror_update = fields.Dict(metadata={
        "description": "only when the data node's mirror caches this model and upstream's tag has moved: "
                       "{digest (cached), upstream_digest, checked_at} (from eldric:mirror:updates)"})


class ClusterModelListSchema(Schema):
    models = fields.List(fields.Nested(ClusterModelSchema))
    total = fields.Integer(metadata={"description": "models matching q and coverage_below (all, without them)"})
    eligible_workers = fields.Integer()


class ClusterModelQuerySchema(Schema):
    """Without parameters: every model, sorted by name. Filters apply before the page is cut."""

    q = fields.String(validate=validate.Length(min=1, max=MAX_NAME_LENGTH),
                      metadata={"description": "only models whose name contains this (any case)"})
    coverage_below = fields.Float(validate=validate.Range(min=0, max=100),
                                  metadata={"description": "only models with coverage under this percent "
                                                           "(100: every model some worker lacks)"})
    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_MODEL_PAGE),
                           metadata={"description": "at most this many models (default: all)"})
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET),
                            metadata={"description": "skip this many matching models"})


class ModelRefSchema(Schema):
    model = model_name_field(required=True)


class ShowSchema(Schema):
    """Ollama's /api/show answer (api/types.go ShowResponse) from a worker that has the model, plus that worker;
    completed as /api/show's (details strings never null, families a list, model_info and capabilities present)."""

    modelfile = fields.String()
    parameters = fields.String()
    template = fields.String()
    system = fields.String()
    license = fields.String()
    details = fields.Dict(metadata={"description": "format, family, families, parameter_size, quantization_level, ..."})
    model_info = fields.Dict(metadata={"description": "header facts, e.g. general.architecture"})
    capabilities = fields.List(fields.String(), metadata={"description": "completion, embedding, vision, tools, insert, thinking"})
    modified_at = fields.String(metadata={"description": "RFC 3339 in UTC with fractional seconds"})
    worker = fields.String(metadata={"description": "the worker that answered"})

    @post_dump(pass_original=True)
    def keep_the_rest(self, data: dict, original: dict, **_kw) -> dict:
        """Fields Ollama adds later (capabilities, tensors...) pass through as the worker sent them."""
        return {**original, **data} if isinstance(original, dict) else data


class DeleteRequestSchema(Schema):
    model = model_name_field(required=True)
    workers = worker_ids_field("worker ids; default every worker whose inventory has the model")


@blp.route("")
class Models(MethodView):
    @blp.arguments(ClusterModelQuerySchema, location="query")
    @blp.response(200, ClusterModelListSchema)
    def get(self, query: dict):
        """Every model in the cluster with size, digest, format, the workers that have it and coverage;
        filtered by name and coverage, and paged, on request (an answer at most ELDRIC_VIEW_CACHE_SECONDS old)."""
        def build() -> dict:
            client = redis_client()
            models, matching, eligible = query_models(
                client, ModelQuery(**query), cache=inventory_cache(),
                forget_after=current_app.config["WORKER_FORGET_SECONDS"])
            updates = mirror_updates_by_model(client) if models else {}
            for entry in models:
                if entry["name"] in updates:
                    entry["mirror_update"] = updates[entry["name"]]
            return ClusterModelListSchema().dump({"models": models, "total": matching, "eligible_workers": eligible})
        return cached_json(("models", tuple(sorted(query.items()))), build)


@blp.route("/show")
class Show(MethodView):
    @blp.arguments(ModelRefSchema)
    @blp.response(200, ShowSchema)
    def post(self, body: dict):
        """Template, system prompt, parameters, license and details, shaped like Ollama's /api/show."""
        name = pull_jobs.parse_model(body["model"])
        # Completed as /api/show is (one owner, controller/ollama_shapes.py): an older agent's nulls never reach here.
        return show_answer(agents.show_model(redis_client(), name, current_app.config["CLUSTER_SECRET"]))


@blp.route("/delete")
class Delete(MethodView):
    @blp.arguments(DeleteRequestSchema)
    @blp.response(202, JobSchema)
    def post(self, body: dict):
        """Remove a model from the listed workers (default: every worker that has it), as a job."""
        client = redis_client()
        job_id = pull_jobs.start_delete(client, producer(), model=body["model"], workers=body.get("workers"),
                                    limits=job_limits())
        return jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())

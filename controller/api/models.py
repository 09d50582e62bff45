"""/api/v1/models: the cluster's unified model list, show, delete."""

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields, post_dump

from controller import agents, inventory, jobs, pulls
from controller.schemas import JobSchema, model_name_field, worker_ids_field
from controller.state import job_limits, producer, redis_client, offline_grace, stale_after
from eldric.web.blueprints import Blueprint

blp = Blueprint("models", __name__, url_prefix="/api/v1/models", description="Models across the cluster")


class ClusterModelSchema(Schema):
    name = fields.String()
    size = fields.Integer()
    digest = fields.String(allow_none=True)
    format = fields.String(allow_none=True)
    details = fields.Dict()
    modified_at = fields.Float(allow_none=True)
    workers = fields.List(fields.String(), metadata={"description": "workers that have the model"})
    missing = fields.List(fields.String(), metadata={"description": "inference/cloud workers that lack it"})
    coverage = fields.Float(metadata={"description": "percent of inference/cloud workers that have it"})
    consistent = fields.Boolean(metadata={"description": "every worker has the same digest"})
    digests = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class ClusterModelListSchema(Schema):
    models = fields.List(fields.Nested(ClusterModelSchema))
    total = fields.Integer()
    eligible_workers = fields.Integer()


class ModelRefSchema(Schema):
    model = model_name_field(required=True)


class ShowSchema(Schema):
    """Ollama's /api/show answer (api/types.go ShowResponse) from a worker that has the model, plus that worker."""

    modelfile = fields.String()
    parameters = fields.String()
    template = fields.String()
    system = fields.String()
    license = fields.String()
    details = fields.Dict(metadata={"description": "format, family, families, parameter_size, quantization_level, ..."})
    model_info = fields.Dict(metadata={"description": "header facts, e.g. general.architecture"})
    modified_at = fields.String()
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
    @blp.response(200, ClusterModelListSchema)
    def get(self):
        """Every model in the cluster with size, digest, format, the workers that have it and coverage."""
        models, eligible = inventory.cluster_models(redis_client(),
                                                    forget_after=current_app.config["WORKER_FORGET_SECONDS"])
        return {"models": models, "total": len(models), "eligible_workers": eligible}


@blp.route("/show")
class Show(MethodView):
    @blp.arguments(ModelRefSchema)
    @blp.response(200, ShowSchema)
    def post(self, body: dict):
        """Template, system prompt, parameters, license and details, shaped like Ollama's /api/show."""
        name = pulls.parse_model(body["model"])
        return agents.show_model(redis_client(), name, current_app.config["CLUSTER_SECRET"])


@blp.route("/delete")
class Delete(MethodView):
    @blp.arguments(DeleteRequestSchema)
    @blp.response(202, JobSchema)
    def post(self, body: dict):
        """Remove a model from the listed workers (default: every worker that has it), as a job."""
        client = redis_client()
        job_id = pulls.start_delete(client, producer(), model=body["model"], workers=body.get("workers"),
                                    limits=job_limits())
        return jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())

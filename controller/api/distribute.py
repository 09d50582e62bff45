"""/api/v1/models/distribute: copy a model to workers from the registry, another worker, a URL or Ollama."""

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from controller import distribution, jobs
from controller.schemas import JobSchema
from controller.state import job_limits, producer, redis_client, registry_client, stale_after

blp = Blueprint("distribute", __name__, url_prefix="/api/v1/models", description="Distribute models to workers")


class SourceSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(distribution.SOURCES))
    worker = fields.String(metadata={"description": "type=worker: the worker to copy from"})
    url = fields.String(validate=validate.Length(max=8192), metadata={
        "description": "type=url: HuggingFace resolve URL, S3 presigned URL or plain http(s); never shown back"})
    token = fields.String(load_only=True, validate=validate.Length(max=4096),
                          metadata={"description": "type=url: bearer token (e.g. HuggingFace); never shown back"})
    sha256 = fields.String(metadata={"description": "type=url: expected digest, checked after download"})
    filename = fields.String(validate=validate.Length(max=255), metadata={"description": "type=url: file name"})


class DistributeRequestSchema(Schema):
    model = fields.String(required=True, validate=validate.Length(min=1, max=512), metadata={
        "description": "ollama/worker: model name; registry: model id or name[:version]; url: name to give it"})
    source = fields.Nested(SourceSchema, required=True)
    workers = fields.List(fields.String(validate=validate.Length(min=1, max=63)), validate=validate.Length(min=1),
                          metadata={"description": "target worker ids; default every inference and cloud worker"})
    deadline_seconds = fields.Integer(validate=validate.Range(min=10, max=30 * 24 * 3600))


@blp.route("/distribute")
class Distribute(MethodView):
    @blp.arguments(DistributeRequestSchema)
    @blp.response(202, JobSchema)
    def post(self, body: dict):
        """Start a distribute job; progress per worker as for pulls (GET /api/v1/models/pull-jobs/{id})."""
        client = redis_client()
        job_id = distribution.start_distribute(
            client, producer(), registry_client(), model=body["model"], source=body["source"],
            workers=body.get("workers"), limits=job_limits(body.get("deadline_seconds")))
        return jobs.get_job(client, job_id, stale_after=stale_after())

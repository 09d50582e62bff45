"""/api/v1/models/distribute: copy a model to workers from the registry, another worker, a URL or Ollama."""

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from controller import distribute
from eldric.cluster.jobs import reads as jobs
from controller.schemas import (JobSchema, PlacementSchema, TransferCapsSchema, transfer_caps,
                                worker_ids_field)
from controller.target_placement import PlacementRequest
from controller.state import job_limits, producer, redis_client, registry_client, offline_grace, stale_after
from eldric.web.blueprints import Blueprint

blp = Blueprint("distribute", __name__, url_prefix="/api/v1/models", description="Distribute models to workers")


class SourceSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(distribute.SOURCES))
    worker = fields.String(validate=validate.Length(min=1, max=63),
                           metadata={"description": "type=worker: the worker to copy from"})
    url = fields.String(validate=validate.Length(min=1, max=8192), metadata={
        "description": "type=url: HuggingFace resolve URL, S3 presigned URL or plain http(s); never shown back",
        "pattern": r"^[hH][tT][tT][pP][sS]?://"})
    token = fields.String(load_only=True, validate=validate.Length(max=4096),
                          metadata={"description": "type=url: bearer token (e.g. HuggingFace); never shown back"})
    sha256 = fields.String(validate=validate.Length(min=1, max=71), metadata={
        "description": "type=url: expected digest, checked after download", "pattern": r"^sha256:[0-9a-f]{64}$"})
    filename = fields.String(validate=validate.Length(max=255), metadata={
        "description": "type=url: file name (no '/', '\\', NUL, no leading '.'); default (also when empty): the URL's",
        "pattern": r"^(?:[^/\\\x00.][^/\\\x00]*)?$"})


def _without(*names: str) -> dict:
    return {"not": {"anyOf": [{"required": [name]} for name in names]}}


# Which fields each source type takes (distribute.start_distribute answers 400 for the others).
_SOURCE_VARIANTS = [
    {"properties": {"type": {"enum": ["registry", "ollama"]}}, **_without("worker", "url", "token", "sha256", "filename")},
    {"properties": {"type": {"enum": ["worker"]}}, "required": ["worker"], **_without("url", "token", "sha256", "filename")},
    {"properties": {"type": {"enum": ["url"]}}, "required": ["url"], **_without("worker")},
]


class DistributeRequestSchema(TransferCapsSchema, PlacementSchema):
    model = fields.String(required=True, validate=validate.Length(min=1, max=512), metadata={
        "description": "ollama/worker: model name; registry: model id or name[:version]; url: name to give it"})
    source = fields.Nested(SourceSchema, required=True, metadata={"oneOf": _SOURCE_VARIANTS})
    workers = worker_ids_field("target worker ids; default every inference and cloud worker")
    deadline_seconds = fields.Integer(strict=True, validate=validate.Range(min=10, max=30 * 24 * 3600))
    partial_ok = fields.Boolean(load_default=False, metadata={
        "description": "a backend of a worker still unreachable after the retries is skipped (the reason in the "
                       "worker's placement) and the worker completes; default false: the worker fails naming it and "
                       "rolls back its other backends' installs"})


@blp.route("/distribute")
class Distribute(MethodView):
    @blp.arguments(DistributeRequestSchema)
    @blp.response(202, JobSchema)
    @blp.alt_response(404, description="an unknown worker or source model (for source type ollama: no such model "
                                       "upstream, with the tags there); nothing is queued")
    @blp.alt_response(502, description="source type ollama: the registry the agents pull from cannot be asked")
    @blp.alt_response(409, description="replicas/selector: no worker can take the model (each worker's reason); "
                                       "nothing is queued")
    def post(self, body: dict):
        """Start a distribute job; progress per worker as for pulls (GET /api/v1/models/pull-jobs/{id}).

        With `replicas`, `selector` or `spread` the cluster chooses the workers (as for pulls)."""
        client = redis_client()
        job_id = distribute.start_distribute(
            client, producer(), registry_client(), model=body["model"], source=body["source"],
            workers=body.get("workers"), limits=job_limits(body.get("deadline_seconds")), caps=transfer_caps(body),
            partial_ok=body.get("partial_ok", False), placement=PlacementRequest.from_body(body))
        return jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())

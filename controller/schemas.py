"""marshmallow request/response schemas of the /api/v1 API."""

from marshmallow import Schema, fields, validate


class PullRequestSchema(Schema):
    model = fields.String(required=True, metadata={"description": "Ollama model name, e.g. qwen2.5:0.5b"})
    workers = fields.List(fields.String(validate=validate.Length(min=1, max=63)), validate=validate.Length(min=1, max=10000),
                          metadata={"description": "worker ids; default every inference and cloud worker"})
    deadline_seconds = fields.Integer(validate=validate.Range(min=10, max=30 * 24 * 3600),
                                      metadata={"description": "fail workers not finished by then"})


class WorkerProgressSchema(Schema):
    worker = fields.String()
    state = fields.String(metadata={"description": "pending, pulling, retrying, offline, completed or failed"})
    status = fields.String(allow_none=True, metadata={"description": "what the worker is doing, Ollama's words"})
    completed = fields.Integer()
    total = fields.Integer()
    percent = fields.Float()
    layer = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    source = fields.String(allow_none=True)
    digest = fields.String(allow_none=True)
    transferred = fields.Integer(allow_none=True, metadata={"description": "bytes that crossed the network (0 when shared)"})
    shared = fields.Boolean(allow_none=True, metadata={"description": "served in place from the registry's shared storage"})
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    updated_at = fields.Float(allow_none=True)


class JobSchema(Schema):
    id = fields.String()
    kind = fields.String()
    model = fields.String()
    source = fields.String()
    state = fields.String(metadata={"description": "pending, running, completed or failed"})
    created_at = fields.Float()
    deadline_at = fields.Float()
    finished_at = fields.Float(allow_none=True)
    targets = fields.List(fields.String())
    summary = fields.Dict()
    options = fields.Dict()
    workers = fields.List(fields.Nested(WorkerProgressSchema))


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class JobQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))
    state = fields.String(validate=validate.OneOf(["pending", "running", "completed", "failed"]))
    kind = fields.String(validate=validate.Length(max=32))


class WorkerSchema(Schema):
    id = fields.String()
    type = fields.String()
    address = fields.String(allow_none=True)
    backends = fields.List(fields.String())
    backend_details = fields.Dict(metadata={"description": "per backend: its models directory and API address"})
    free_disk = fields.Integer()
    online = fields.Boolean()
    last_seen = fields.Float()
    registered_at = fields.Float()
    hostname = fields.String(allow_none=True)
    models = fields.Integer(metadata={"description": "number of models in the worker's inventory"})


class WorkerListSchema(Schema):
    workers = fields.List(fields.Nested(WorkerSchema))
    total = fields.Integer()
    online = fields.Integer()


class LocalModelSchema(Schema):
    name = fields.String()
    full_name = fields.String(allow_none=True)
    digest = fields.String()
    size = fields.Integer()
    modified_at = fields.Float()
    format = fields.String(allow_none=True)
    backend = fields.String(allow_none=True)


class WorkerModelsSchema(Schema):
    worker = fields.String()
    models = fields.List(fields.Nested(LocalModelSchema))

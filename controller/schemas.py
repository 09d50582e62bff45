"""marshmallow request/response schemas of the /api/v1 API."""

from marshmallow import Schema, ValidationError, fields, validate

from eldric.cluster.jobs.state import JOB_STATES
from eldric.cluster.labels import SELECTOR_PATTERN, parse_selector
from eldric.core.names import MAX_NAME_LENGTH, OLLAMA_NAME_PATTERN
from eldric.core.settings import parse_size

MAX_OFFSET = 2**31 - 1  # list offsets: far past any job history, far below Redis's 64-bit integers


class Records(fields.List):
    """A list of flat records (dicts) in `schema`'s shape: documented as a list of that nested schema,
    dumped field by field with the same results at a fraction of marshmallow's per-field cost.

    At fleet size (issue 13) a job view holds 900 worker records and the worker list 1,000 workers:
    marshmallow's generic path (accessor, defaults, a nested dump per record) cost more than reading
    them from Redis. A value that already has its field's type (a str for String, an int for Integer,
    a float for Float, a bool for Boolean, None) is kept as it is, which is what those fields' own
    `_serialize` returns for it; anything else goes through the field's `_serialize`. A key the
    record lacks is left out, as marshmallow does.
    """

    def __init__(self, schema: type[Schema], **kwargs) -> None:
        super().__init__(fields.Nested(schema), **kwargs)
        self._dump_one = record_dumper(schema())

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        dump = self._dump_one
        return [None if record is None else dump(record) for record in value]


# Types each field class's `_serialize` returns unchanged (None included); exact classes only.
_KEPT_AS_IS = {fields.String: (str, type(None)), fields.Integer: (int, type(None)),
               fields.Float: (float, type(None)), fields.Boolean: (bool, type(None))}


def record_dumper(schema: Schema):
    """A function dumping one dict as `schema.dump` would (schemas without hooks, attribute or
    data_key renames, or dump defaults; others keep schema.dump)."""
    plan = []
    for name, field in schema.dump_fields.items():
        if field.attribute is not None or field.data_key is not None or field.dump_default is not fields.missing_:
            return schema.dump
        kept = _KEPT_AS_IS.get(type(field), ())
        if isinstance(field, fields.Number) and field.as_string:
            kept = ()
        plan.append((name, kept, field._serialize))
    if any(schema._hooks.values()):
        return schema.dump

    def dump(record: dict) -> dict:
        out = {}
        for name, kept, serialize in plan:
            if name in record:
                value = record[name]
                out[name] = value if type(value) in kept else serialize(value, name, record)
        return out
    return dump


def model_name_field(description: str = "Ollama model name, e.g. qwen2.5:0.5b", **kw) -> fields.String:
    """A model named the way Ollama writes names (eldric.core.names.ModelName)."""
    # Only emptiness fails the schema (422); the rest is ModelName's to refuse, with 400 naming `model`.
    return fields.String(validate=validate.Length(min=1), metadata={
        "description": description, "pattern": OLLAMA_NAME_PATTERN, "maxLength": MAX_NAME_LENGTH}, **kw)


def worker_ids_field(description: str, **kw) -> fields.List:
    return fields.List(fields.String(validate=validate.Length(min=1, max=63)), validate=validate.Length(min=1, max=10000),
                       metadata={"description": description}, **kw)


class ByteRate(fields.Field):
    """Bytes per second as a number or with a binary unit ("20M" = 20 MiB/s), like the agents' rate settings."""

    def _deserialize(self, value, attr, data, **kwargs) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError("a rate in bytes/s: a whole number or a string such as '20M'")
        try:
            rate = parse_size(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if rate < 1 << 10 or rate > 1 << 50:
            raise ValidationError("a rate between 1K and 1P bytes/s")
        return rate


class TransferCapsSchema(Schema):
    """The job's caps on its upstream traffic (README "Peer-assisted fan-out"); shown in the job's `options`."""

    max_upstream_rate = ByteRate(metadata={
        "type": "string", "description": "cap on the cluster's upstream rate for this job, bytes/s, e.g. 20M"})
    max_upstream_workers = fields.Integer(strict=True, validate=validate.Range(min=1, max=10000), metadata={
        "description": "most workers fetching from upstream at once; the others take ranges from them"})
    make_room = fields.Boolean(metadata={
        "description": "a worker where the model does not fit first evicts least-recently-used models by the "
                       "eviction rules (never pinned, loaded or needed by a running job); default false: refused"})


def transfer_caps(body: dict) -> dict:
    return {k: body[k] for k in ("max_upstream_rate", "max_upstream_workers", "make_room") if body.get(k) is not None}


class PlacementSchema(Schema):
    """Where a pull's or distribution's copies go (README "Placement"; controller/target_placement.py)."""

    replicas = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1, max=100000), metadata={
        "description": "how many workers get a copy (holders first, then most free disk); default every one"})
    selector = fields.Dict(keys=fields.String(), values=fields.String(validate=validate.Length(max=253)), metadata={
        "description": "labels a worker must have, e.g. {\"zone\": \"a\"}; the key type matches the worker's type"})
    spread = fields.String(allow_none=True, validate=validate.Length(min=1, max=63), metadata={
        "description": "a label name: at most ceil(replicas / its values) copies per value, e.g. zone"})
    gpu = fields.Boolean(truthy={True}, falsy={False}, metadata={
        "description": "the model is served from a GPU: only workers with one GPU whose free memory holds the "
                       "model's size (as the agent reports it) are chosen"})


class PullRequestSchema(TransferCapsSchema, PlacementSchema):
    model = model_name_field(required=True)
    workers = worker_ids_field("worker ids; default every inference and cloud worker")
    deadline_seconds = fields.Integer(strict=True, validate=validate.Range(min=10, max=30 * 24 * 3600),
                                      metadata={"description": "fail workers not finished by then"})


class WorkerProgressSchema(Schema):
    worker = fields.String()
    state = fields.String(metadata={"description": "pending, pulling, installing, deleting, retrying, offline, completed, "
                                                   "failed, skipped (offline when the job started or past the grace) or cancelled"})
    final = fields.Boolean(metadata={"description": "this worker's part has ended (completed, failed, skipped or cancelled)"})
    status = fields.String(allow_none=True, metadata={"description": "what the worker is doing, Ollama's words"})
    placement = fields.String(allow_none=True, metadata={
        "description": "how the model reached each backend of the worker: hard-linked to the blob store (one copy), "
                       "copied and why (e.g. other filesystem), already in place, Ollama store, shared storage, "
                       "or skipped and why"})
    placement_reason = fields.String(allow_none=True, metadata={
        "description": "a job with replicas or a selector: why placement chose this worker (\"holds it\", its room) "
                       "or, for a part skipped at the start, why it could not take a copy (e.g. no room: needs 9.2 GiB, "
                       "has 3.1 GiB)"})
    ready = fields.Dict(keys=fields.String(), values=fields.Raw(), allow_none=True, metadata={
        "description": "per installed backend: true when its API lists the model after the install, false when it "
                       "does not (or did not answer), \"no API\" when there is none to ask"})
    completed = fields.Integer()
    total = fields.Integer()
    percent = fields.Float()
    layer = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    source = fields.String(allow_none=True)
    digest = fields.String(allow_none=True)
    transferred = fields.Integer(allow_none=True, metadata={
        "description": "bytes that crossed the network in this run of the part (0 when shared; resumed bytes excluded)"})
    resumed_bytes = fields.Integer(allow_none=True, metadata={
        "description": "bytes taken from partial downloads already on the worker's disk (an earlier try, or before "
                       "an outage or restart): counted in completed, not in transferred, upstream_bytes or peer_bytes"})
    upstream_bytes = fields.Integer(allow_none=True, metadata={"description": "bytes received from the source (registry, URL)"})
    peer_bytes = fields.Integer(allow_none=True, metadata={"description": "bytes received from other workers"})
    peers = fields.Dict(keys=fields.String(), values=fields.Integer(), allow_none=True,
                        metadata={"description": "worker id -> bytes received from it"})
    bad_peers = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True,
                            metadata={"description": "peers dropped for serving bad bytes: worker id -> what was wrong"})
    alone = fields.String(allow_none=True, metadata={
        "description": "why a blob was fetched without the peers (the swarm board, in Redis, could not be reached)"})
    rate = fields.Float(allow_none=True, metadata={"description": "bytes/s over the last progress interval"})
    shared = fields.Boolean(allow_none=True, metadata={"description": "served in place from the registry's shared storage"})
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    updated_at = fields.Float(allow_none=True)


class JobSchema(Schema):
    id = fields.String()
    kind = fields.String()
    model = fields.String()
    source = fields.String()
    state = fields.String(metadata={"description": "pending, running, completed, completed_with_skipped, failed or cancelled"})
    final = fields.Boolean(metadata={"description": "the job has ended (its state is one of the final ones): clients derive nothing"})
    created_at = fields.Float()
    deadline_at = fields.Float()
    finished_at = fields.Float(allow_none=True)
    targets = fields.List(fields.String())
    summary = fields.Dict(metadata={
        "description": "counts (per worker state), completed, total, percent, and the bytes of all workers: "
                       "upstream_bytes, peer_bytes, resumed_bytes (taken from partial downloads on their disks)"})
    options = fields.Dict()
    workers = Records(WorkerProgressSchema)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class JobQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))
    state = fields.String(validate=validate.OneOf(JOB_STATES))
    kind = fields.String(validate=validate.Length(max=32))


class RemoveWorkerQuerySchema(Schema):
    force = fields.Boolean(load_default=False, metadata={"description": "remove the worker even while it is online"})


class GpuSchema(Schema):
    index = fields.Integer()
    name = fields.String()
    memory_total = fields.Integer(metadata={"description": "bytes"})
    memory_free = fields.Integer(metadata={"description": "bytes"})


class LabelSelector(fields.Field):
    """`zone=a,gpu=h100` -> [("zone", "a"), ("gpu", "h100")], keys and values as an agent's ELDRIC_LABELS has them."""

    def _deserialize(self, value, attr, data, **kwargs) -> list[tuple[str, str]]:
        if not isinstance(value, str) or len(value) > 2000:
            raise ValidationError("labels as key=value pairs joined by commas, e.g. zone=a,gpu=h100")
        try:
            return parse_selector(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class WorkerQuerySchema(Schema):
    selector = LabelSelector(metadata={
        "type": "string", "maxLength": 2000, "pattern": SELECTOR_PATTERN, "example": "zone=a",
        "description": "only workers with all these labels, e.g. zone=a,gpu=h100"})


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
    data_dir = fields.String(allow_none=True, metadata={"description": "the agent's data directory (absolute)"})
    upstream_registry = fields.String(
        allow_none=True, metadata={"description": "where the agent pulls registry.ollama.ai names from "
                                                  "(its ELDRIC_OLLAMA_REGISTRY, credentials removed)"})
    labels = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "the worker's labels (its ELDRIC_LABELS, e.g. zone=a,gpu=h100), matched by selectors"})
    disk_free = fields.Integer(allow_none=True, metadata={
        "description": "bytes free on the filesystem of the worker's model store (null: not reported)"})
    disk_total = fields.Integer(allow_none=True, metadata={
        "description": "bytes in all on that filesystem (null: not reported, e.g. an older agent)"})
    gpus = fields.List(fields.Nested(GpuSchema), metadata={"description": "the worker's GPUs (NVML or nvidia-smi); empty: none"})
    disk_high_watermark = fields.Integer(allow_none=True, metadata={
        "description": "bytes used above which the agent evicts models (null: no eviction)"})
    disk_low_watermark = fields.Integer(allow_none=True, metadata={
        "description": "bytes used that eviction brings the disk back under (null: no eviction)"})


class WorkerListSchema(Schema):
    workers = Records(WorkerSchema)
    total = fields.Integer()
    online = fields.Integer()


class LocalModelSchema(Schema):
    name = fields.String()
    full_name = fields.String(allow_none=True)
    digest = fields.String()
    size = fields.Integer()
    modified_at = fields.Float()
    last_used = fields.Float(allow_none=True, metadata={
        "description": "when the worker last served it (its relay), or a backend had it loaded, else its pull/install "
                       "(epoch seconds; eviction removes the least recently used first)"})
    format = fields.String(allow_none=True)
    backends = fields.List(fields.String(), metadata={
        "description": "the worker's backends that serve the model (empty: stored, not served)"})
    backend = fields.String(allow_none=True, metadata={
        "description": "backends joined by commas, or 'stored, not served' (kept for older clients)"})


class WorkerModelsSchema(Schema):
    worker = fields.String()
    models = fields.List(fields.Nested(LocalModelSchema))

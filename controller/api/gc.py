"""/api/v1/gc: the garbage every worker's last GC sweep found (GET), a sweep on every online worker now (POST).

The schemas live here, as pins' do: they describe only this resource.
"""

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from controller import gc
from controller.state import producer, redis_client
from eldric.cluster.gc import KINDS
from eldric.web.blueprints import Blueprint

blp = Blueprint("gc", __name__, url_prefix="/api/v1/gc",
                description="Garbage collection: blobs nothing references, stale partials, backend debris")


class GcFindSchema(Schema):
    id = fields.String(metadata={"description": "<kind>:<digest, download name or path>; stable across sweeps"})
    kind = fields.String(validate=validate.OneOf(KINDS), metadata={
        "description": "blob: no manifest, catalog entry, backend file or running job references it; partial: a stale "
                       "partial download, lock or temp file; debris: a backend entry no model of the worker owns"})
    path = fields.String()
    digest = fields.String(metadata={"description": "blobs: sha256:<hex>"})
    bytes = fields.Integer()
    first_seen = fields.Float(metadata={"description": "epoch seconds of the first sweep that found it"})
    removable_at = fields.Float(metadata={"description": "first_seen + the worker's ELDRIC_GC_GRACE_SECONDS"})
    note = fields.String(metadata={"description": "why it is never removed (debris placed by hand)"})


class GcWorkerSchema(Schema):
    worker = fields.String()
    online = fields.Boolean()
    swept_at = fields.Float(allow_none=True, metadata={"description": "its last sweep; null: never swept"})
    grace = fields.Float(allow_none=True, metadata={"description": "the grace period that sweep applied"})
    removed = fields.Integer(metadata={"description": "finds that sweep removed"})
    removed_bytes = fields.Integer(metadata={"description": "bytes that sweep removed"})
    bytes = fields.Integer(metadata={"description": "bytes of what is still listed"})
    finds = fields.List(fields.Nested(GcFindSchema), metadata={"description": "oldest first"})


class GcReportSchema(Schema):
    workers = fields.List(fields.Nested(GcWorkerSchema))
    finds = fields.Integer()
    bytes = fields.Integer()
    removed_bytes_total = fields.Integer(metadata={"description": "bytes every sweep removed, ever (eldric_gc_bytes_total)"})


class JsonBoolean(fields.Boolean):
    """true or false only: marshmallow's Boolean also takes 0, 1, "yes", which the document's `boolean` does not."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class GcSweepRequestSchema(Schema):
    remove = JsonBoolean(load_default=True, metadata={
        "description": "remove what has been garbage for the grace period (false: only look again)"})


class GcSweepSchema(Schema):
    asked = fields.List(fields.String(), metadata={"description": "the online workers asked to sweep"})
    remove = fields.Boolean()
    requested_at = fields.Float(metadata={"description": "a worker's swept_at at or after it: its sweep ran"})


@blp.route("")
class Gc(MethodView):
    @blp.response(200, GcReportSchema)
    def get(self):
        """What every worker's last GC sweep found (path or digest, bytes, kind, first seen, removable at); changes nothing."""
        return gc.report(redis_client())

    @blp.arguments(GcSweepRequestSchema, required=False)  # no body: remove
    @blp.response(202, GcSweepSchema)
    def post(self, body: dict):
        """Ask every online worker to sweep now; with `remove` (the default) each removes what outlived its grace."""
        return gc.sweep_now(redis_client(), producer(), remove=body["remove"])
